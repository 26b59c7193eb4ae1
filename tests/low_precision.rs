//! Every optimizer on every storage combination against the CPU reference
//! (`reference::stored_step`): parameter dtype (f32, bf16, f16, a mixed arena) × state dtype ×
//! master weights × stochastic rounding, one table (every optimizer, LAMB and Schedule-Free
//! AdamW included), all through the shared runner. Then the
//! gradient machinery (clipping, non-finite skip, the loss scaler, groups, chunk boundaries) on
//! 16-bit storage, sizes that are odd in elements, shapes of rank 0–4, stochastic rounding's
//! unbiasedness, and bad input.

mod common;
use common::{gpu, Run};
use wgpu_optim::{reference, AdagradConfig, AdamConfig, LionConfig, RmsPropConfig, SgdConfig};
use wgpu_optim::{AdadeltaConfig, AsgdConfig, RpropConfig};
use wgpu_optim::{AdamaxConfig, NAdamConfig, RAdamConfig};
use wgpu_optim::{
    DType, Error, FusedOptimizer, Optimizer, OptimizerConfig, ParamGroup, Params, Precision,
    ScalerConfig,
};

/// Small sizes around 4, 64 and 128 (16-bit tensors align to 128 elements), and one past a
/// chunk's workgroup.
const SMALL: &[usize] = &[1, 3, 5, 63, 64, 65, 127, 129, 1000, 4099];

/// Every storage row: (parameter dtypes, precision). Master weights only where a parameter is
/// 16-bit (with all-f32 parameters they are an error, tested below).
fn storage_rows() -> Vec<(Vec<DType>, Precision)> {
    let params: [&[DType]; 4] = [
        &[DType::F32],
        &[DType::Bf16],
        &[DType::F16],
        &[DType::Bf16, DType::F32, DType::F16],
    ];
    let mut rows = Vec::new();
    for p in params {
        for state in [DType::F32, DType::Bf16] {
            for master_weights in [false, true] {
                if master_weights && p == [DType::F32] {
                    continue;
                }
                for stochastic_rounding in [false, true] {
                    rows.push((
                        p.to_vec(),
                        Precision {
                            state,
                            master_weights,
                            stochastic_rounding,
                        },
                    ));
                }
            }
        }
    }
    rows
}

/// Run `cfg` on every storage row.
fn every_storage<C: OptimizerConfig>(
    cfg: C,
    reference: reference::Step<C>,
    poison: &[&'static str],
) {
    for (dtypes, precision) in storage_rows() {
        let mut run = Run::new(format!("{} {dtypes:?} {precision:?}", C::NAME), reference)
            .sizes(SMALL)
            .dtypes(&dtypes)
            .precision(precision);
        for &k in poison {
            run = run.poison_state(k);
        }
        run.run(cfg.clone());
    }
}

#[test]
fn adam_and_adamw() {
    every_storage(
        AdamConfig {
            lr: 1e-2,
            amsgrad: true,
            weight_decay: 0.1,
            ..Default::default()
        },
        reference::adam,
        &[],
    );
    every_storage(
        AdamConfig {
            lr: 1e-2,
            maximize: true,
            ..AdamConfig::adamw()
        },
        reference::adam,
        &[],
    );
}

#[test]
fn sgd() {
    every_storage(
        SgdConfig {
            lr: 0.05,
            ..Default::default()
        },
        reference::sgd,
        &[],
    );
    every_storage(
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.05,
            ..Default::default()
        },
        reference::sgd,
        &["momentum_buffer"],
    );
}

#[test]
fn rmsprop_and_adagrad() {
    every_storage(
        RmsPropConfig {
            lr: 1e-2,
            centered: true,
            momentum: 0.9,
            weight_decay: 0.1,
            ..Default::default()
        },
        reference::rmsprop,
        &[],
    );
    every_storage(
        AdagradConfig {
            lr: 0.1,
            lr_decay: 0.01,
            initial_accumulator_value: 0.1,
            ..Default::default()
        },
        reference::adagrad,
        &[],
    );
}

#[test]
fn lion_adadelta_rprop_asgd() {
    every_storage(
        LionConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        },
        reference::lion,
        &[],
    );
    every_storage(
        AdadeltaConfig {
            weight_decay: 0.1,
            ..Default::default()
        },
        reference::adadelta,
        &[],
    );
    // `prev` is poisoned as in tests/optimizers.rs: NaN * grad is neither > 0 nor < 0.
    every_storage(RpropConfig::default(), reference::rprop, &["prev"]);
    every_storage(
        AsgdConfig {
            t0: 2.0,
            ..Default::default()
        },
        reference::asgd,
        &[],
    );
}

#[test]
fn adamax_radam_nadam() {
    every_storage(
        AdamaxConfig {
            weight_decay: 0.1,
            ..Default::default()
        },
        reference::adamax,
        &[],
    );
    every_storage(
        RAdamConfig {
            lr: 1e-2,
            decoupled_weight_decay: true,
            weight_decay: 0.1,
            ..Default::default()
        },
        reference::radam,
        &[],
    );
    every_storage(
        NAdamConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        },
        reference::nadam,
        &[],
    );
}

/// A big bf16 tensor of odd length (2^20 + 3 elements) next to f32 and f16 ones, split over
/// chunks, with clipping and planted non-finite gradients (those steps are skipped).
#[test]
fn big_odd_tensors_chunks_clipping_and_skips() {
    let precision = Precision {
        state: DType::Bf16,
        master_weights: true,
        stochastic_rounding: true,
    };
    Run::new("adam bf16 big", reference::adam)
        .sizes(&[(1 << 20) + 3, 5, 70_001, 1])
        .dtypes(&[DType::Bf16, DType::F32, DType::F16])
        .max_chunk_bytes(1 << 20)
        .precision(precision)
        .clip(1.0, 2.0)
        .bad_steps(&[2, 5], f32::NAN, ("t0_1048579", 77))
        .run(AdamConfig {
            lr: 1e-2,
            ..Default::default()
        });
    Run::new("sgd f16 inf skipped", reference::sgd)
        .sizes(&[(1 << 20) + 3, 3])
        .dtypes(&[DType::F16])
        .skip_nonfinite()
        .bad_steps(&[1], f32::INFINITY, ("t1_3", 2))
        .run(SgdConfig {
            lr: 0.1,
            ..Default::default()
        });
}

/// The loss scaler on bf16 gradients: they are unscaled in f32 inside the kernel.
#[test]
fn grad_scaler_on_bf16() {
    Run::new("adam bf16 scaler", reference::adam)
        .sizes(SMALL)
        .dtypes(&[DType::Bf16])
        .scaler(ScalerConfig {
            init_scale: 1024.0,
            growth_interval: 2,
            ..Default::default()
        })
        .bad_steps(&[3], f32::INFINITY, ("t0_1", 0))
        .run(AdamConfig::default());
}

/// Two groups over a mixed arena, each with its own lr.
#[test]
fn groups_over_a_mixed_arena() {
    let cfg = |lr| SgdConfig {
        lr,
        momentum: 0.5,
        ..Default::default()
    };
    Run::new("sgd groups mixed", reference::sgd)
        .sizes(SMALL)
        .dtypes(&[DType::Bf16, DType::F32, DType::F16])
        .precision(Precision {
            state: DType::Bf16,
            master_weights: false,
            stochastic_rounding: true,
        })
        .poison_state("momentum_buffer")
        .run_groups(
            vec![
                ParamGroup::new(["t0_1", "t1_3", "t4_64"], cfg(0.3)),
                ParamGroup::rest(cfg(0.01)),
            ],
            |n| usize::from(!["t0_1", "t1_3", "t4_64"].contains(&n)),
        );
}

#[test]
fn shapes_of_every_rank_and_mixed_dtypes() {
    let gpu = gpu();
    let shapes: [&[usize]; 5] = [&[], &[7], &[3, 5], &[2, 3, 4], &[2, 1, 3, 5]];
    let mut b = Params::builder(&gpu);
    let mut want = Vec::new();
    for (k, shape) in shapes.iter().enumerate() {
        let dtype = DType::ALL[k % 3];
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 1.0).collect();
        b = b.tensor_with_data(&format!("t{k}"), shape, dtype, &data);
        want.push((format!("t{k}"), shape.to_vec(), dtype, data));
    }
    let params = b.tensor("z", &[3, 3], DType::Bf16).build().unwrap();
    for (name, shape, dtype, data) in &want {
        assert_eq!(params.shape(name).unwrap(), &shape[..]);
        assert_eq!(params.dtype(name).unwrap(), *dtype);
        assert_eq!(params.len(name).unwrap(), data.len());
        // Quarter steps from -1 are exact in every dtype.
        assert_eq!(&params.read(name).unwrap(), data, "{name}");
        let p = params.pieces(name).unwrap();
        assert_eq!(
            p[0].offset * dtype.size() % 256,
            0,
            "{name} is 256-byte aligned"
        );
    }
    assert_eq!(params.read("z").unwrap(), vec![0.0; 9]);
    assert_eq!(params.names(), vec!["t0", "t1", "t2", "t3", "t4", "z"]);
    // Writes round to nearest even; reads widen.
    params.write("t1", &[1.0 + 1.0 / 256.0; 7]).unwrap();
    assert_eq!(params.read("t1").unwrap(), vec![1.0; 7]);
    let binding = params.binding("t1").unwrap();
    assert_eq!(
        binding.size.unwrap().get(),
        16,
        "7 bf16 = 14 bytes, whole words"
    );
}

/// Stochastic rounding is unbiased: one value a third of the way between two bf16 neighbours,
/// stored by many steps of an update that does not change it (SGD with lr 0, through the master
/// copy), rounds up about a third of the time, and the mean of the stored values converges to
/// the f32 value, while rounding to nearest always rounds down.
#[test]
fn stochastic_rounding_is_unbiased() {
    let gpu = gpu();
    let n = 1 << 16;
    let x = 1.0f32 + (1.0 / 128.0) / 3.0;
    let params = Params::builder(&gpu)
        .tensor("w", &[n], DType::Bf16)
        .build()
        .unwrap();
    let mut params = params;
    let mut opt = wgpu_optim::Sgd::new(
        &params,
        SgdConfig {
            lr: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    for (stochastic_rounding, lo, hi) in [(true, 0.3, 0.36), (false, 0.0, 0.0)] {
        opt.set_precision(Precision {
            state: DType::F32,
            master_weights: true,
            stochastic_rounding,
        })
        .unwrap();
        opt.set_state("master", "w", &vec![x; n]).unwrap();
        let mut sum = 0.0f64;
        let steps = 8;
        for _ in 0..steps {
            opt.step(&mut params).unwrap();
            let w = params.read("w").unwrap();
            let up = w.iter().filter(|&&v| v > x).count() as f64 / n as f64;
            assert!(
                (lo..=hi).contains(&up),
                "rounded up {up} (sr {stochastic_rounding})"
            );
            sum += w.iter().map(|&v| v as f64).sum::<f64>();
        }
        let mean = sum / (steps * n) as f64;
        let err = (mean - x as f64).abs();
        if stochastic_rounding {
            assert!(err < 2e-5, "mean {mean} vs {x}");
        } else {
            assert_eq!(mean, 1.0);
        }
        opt.set_precision(Precision::default()).unwrap();
    }
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let gpu = gpu();
    let huge = Params::builder(&gpu)
        .tensor("w", &[1 << 40, 1 << 40], DType::Bf16)
        .build();
    assert!(matches!(huge, Err(Error::InvalidShape { .. })), "{huge:?}");
    let zero = Params::builder(&gpu)
        .tensor("w", &[3, 0, 2], DType::F16)
        .build();
    assert!(matches!(zero, Err(Error::Empty(_))), "{zero:?}");
    let short = Params::builder(&gpu)
        .tensor_with_data("w", &[2, 2], DType::Bf16, &[1.0; 3])
        .build();
    assert!(
        matches!(short, Err(Error::LengthMismatch { .. })),
        "{short:?}"
    );
    let params = Params::builder(&gpu)
        .tensor_with_data("w", &[2, 3], DType::Bf16, &[0.5; 6])
        .tensor("b", &[3], DType::F32)
        .build()
        .unwrap();
    assert!(matches!(
        params.write("w", &[1.0; 5]),
        Err(Error::LengthMismatch { .. })
    ));
    assert_eq!(params.read("w").unwrap(), vec![0.5; 6]);
    // Master weights with only f32 parameters are an error, and the precision is unchanged.
    let f32_only = Params::zeros(&gpu, &[("w", 8)]).unwrap();
    let mut opt = wgpu_optim::Adam::new(&f32_only, AdamConfig::default()).unwrap();
    let master = Precision {
        master_weights: true,
        ..Precision::default()
    };
    assert!(matches!(
        opt.set_precision(master),
        Err(Error::InvalidOptions(_))
    ));
    assert_eq!(opt.precision(), Precision::default());
    // f32 tensors have no master copy.
    let mut opt = wgpu_optim::Adam::new(&params, AdamConfig::default()).unwrap();
    opt.set_precision(master).unwrap();
    assert!(matches!(
        opt.state("master", "b"),
        Err(Error::DTypeMismatch { .. })
    ));
    assert_eq!(opt.state("master", "w").unwrap(), vec![0.5; 6]);
}

/// Converting the state's dtype mid-run keeps its values (rounded), and the memory report
/// follows.
#[test]
fn state_converts_between_dtypes() {
    let gpu = gpu();
    let mut params = Params::builder(&gpu)
        .tensor_with_data("w", &[300], DType::Bf16, &[0.25; 300])
        .build()
        .unwrap();
    params.write_grad("w", &[0.1; 300]).unwrap();
    let mut opt: FusedOptimizer<AdamConfig> =
        FusedOptimizer::new(&params, AdamConfig::default()).unwrap();
    let f32_bytes = opt.state_memory_bytes();
    opt.step(&mut params).unwrap();
    let m = opt.state("exp_avg", "w").unwrap();
    opt.set_precision(Precision {
        state: DType::Bf16,
        ..Precision::default()
    })
    .unwrap();
    assert_eq!(opt.state_memory_bytes() * 2, f32_bytes);
    let m16 = opt.state("exp_avg", "w").unwrap();
    let want: Vec<f32> = m.iter().map(|&v| DType::Bf16.round(v)).collect();
    assert_eq!(m16, want);
    opt.step(&mut params).unwrap();
    assert_eq!(opt.step_count(), 2);
}

/// Adafactor's factored state is f32 whatever the state dtype: on vectors its `variance`.
#[test]
fn adafactor() {
    every_storage(
        wgpu_optim::AdafactorConfig {
            lr: 5e-2,
            weight_decay: 0.01,
            ..Default::default()
        },
        reference::adafactor,
        &[],
    );
}

#[test]
fn lamb_and_schedule_free() {
    every_storage(
        wgpu_optim::LambConfig {
            lr: 1e-2,
            weight_decay: 0.01,
            ..Default::default()
        },
        reference::lamb,
        &[],
    );
    every_storage(
        wgpu_optim::ScheduleFreeAdamWConfig {
            lr: 1e-2,
            warmup_steps: 2,
            weight_decay: 0.01,
            ..Default::default()
        },
        reference::schedule_free_adamw,
        &["z"],
    );
}
