//! 8-bit blockwise state (`StateFormat::Blockwise8`) against the CPU reference on a real
//! adapter: every optimizer that has it and every option, tensors below, at and above
//! `min_size`, not multiples of 256, split across chunks, with 16-bit parameters, clipping,
//! skipped steps, a grad scaler and param groups. Codes and absmax are compared with
//! `reference::requantize` after each step of the f32 reference.

mod common;
use common::{Harness, Run};
use wgpu_optim::{reference, AdagradConfig, AdamConfig, LionConfig, RmsPropConfig, SgdConfig};
use wgpu_optim::{DType, OptimizerConfig, ParamGroup, Precision, ScalerConfig, StateFormat};

/// Below, at and above bitsandbytes' min_8bit_size, not multiples of 256, and one large.
const SIZES: &[usize] = &[1000, 4095, 4096, 5000, 70_003];

fn q8() -> StateFormat {
    StateFormat::blockwise8()
}

/// Run `cfg` on [`SIZES`] with 8-bit state and check codes, absmax, params and state; return
/// how many codes differed by one at a midpoint.
fn check<C: OptimizerConfig>(name: &str, step: reference::Step<C>, cfg: C) -> usize {
    let h: Harness<C> = Run::new(format!("{name} {cfg:?}"), step)
        .sizes(SIZES)
        .state_format(q8())
        .harness(vec![ParamGroup::rest(cfg)], |_| 0);
    finish(h)
}

/// Seven steps (odd: Lion moves each parameter by ±lr per step, and an even number of steps
/// brings some back to exactly where they started), then the check.
fn finish<C: OptimizerConfig>(mut h: Harness<C>) -> usize {
    for _ in 0..7 {
        h.step();
    }
    h.check();
    h.midpoint_codes.get()
}

const BOOLS: [bool; 2] = [false, true];

#[test]
fn adam_every_option_matches_the_reference_code_for_code() {
    let mut midpoint = 0;
    for amsgrad in BOOLS {
        for decoupled_weight_decay in BOOLS {
            for maximize in BOOLS {
                let cfg = AdamConfig {
                    lr: 1e-2,
                    amsgrad,
                    decoupled_weight_decay,
                    maximize,
                    weight_decay: 0.1,
                    ..Default::default()
                };
                midpoint += check("adam", reference::adam, cfg);
            }
        }
    }
    midpoint += check("adamw", reference::adam, AdamConfig::adamw());
    // Every code of 8 configurations × 8 steps: a midpoint case must stay rare.
    assert!(midpoint <= 10, "{midpoint} codes at a midpoint");
}

#[test]
fn sgd_rmsprop_adagrad_lion_match_the_reference_code_for_code() {
    let mut midpoint = 0;
    for (momentum, nesterov, weight_decay) in
        [(0.9, false, 0.0), (0.9, true, 0.01), (0.0, false, 0.0)]
    {
        let cfg = SgdConfig {
            lr: 0.05,
            momentum,
            nesterov,
            weight_decay,
            ..Default::default()
        };
        midpoint += check("sgd", reference::sgd, cfg);
    }
    for (centered, momentum) in [(false, 0.0), (true, 0.0), (true, 0.9), (false, 0.9)] {
        let cfg = RmsPropConfig {
            lr: 1e-2,
            centered,
            momentum,
            weight_decay: 0.1,
            ..Default::default()
        };
        midpoint += check("rmsprop", reference::rmsprop, cfg);
    }
    for initial_accumulator_value in [0.0, 0.1] {
        let cfg = AdagradConfig {
            lr: 0.05,
            initial_accumulator_value,
            lr_decay: 0.01,
            ..Default::default()
        };
        midpoint += check("adagrad", reference::adagrad, cfg);
    }
    for weight_decay in [0.0, 0.1] {
        let cfg = LionConfig {
            lr: 1e-3,
            weight_decay,
            maximize: weight_decay > 0.0,
            ..Default::default()
        };
        midpoint += check("lion", reference::lion, cfg);
    }
    assert!(midpoint <= 10, "{midpoint} codes at a midpoint");
}

#[test]
fn blocks_stay_whole_across_chunks_and_min_size_is_honoured() {
    // Chunks of 4096 elements: 5000 and 70003 are split, each piece on a 256 boundary.
    let h = Run::new("adam chunks", reference::adam)
        .sizes(&[3, 300, 5000, 70_003, 64])
        .max_chunk_bytes(16 * 1024)
        .state_format(StateFormat::Blockwise8 { min_size: 1 })
        .harness(vec![ParamGroup::rest(AdamConfig::adamw())], |_| 0);
    finish(h);
}

#[test]
fn sixteen_bit_params_with_and_without_master_weights() {
    for (dtype, master_weights) in [
        (DType::Bf16, false),
        (DType::Bf16, true),
        (DType::F16, true),
    ] {
        let h = Run::new(
            format!("adamw {dtype:?} master {master_weights}"),
            reference::adam,
        )
        .sizes(SIZES)
        .dtypes(&[dtype, DType::F32])
        .precision(Precision {
            state: DType::F32,
            master_weights,
            stochastic_rounding: false,
        })
        .state_format(q8())
        .harness(vec![ParamGroup::rest(AdamConfig::adamw())], |_| 0);
        finish(h);
    }
}

#[test]
fn clipping_skipping_the_scaler_and_groups_work_as_before() {
    // Clipping, and a non-finite gradient in steps 2 and 5 (skipped: codes and absmax stay).
    Run::new("adam q8 clip", reference::adam)
        .sizes(SIZES)
        .state_format(q8())
        .clip(0.5, 2.0)
        .bad_steps(&[2, 5], f32::NAN, ("t3_5000", 4999))
        .run(AdamConfig::adamw());
    Run::new("adam q8 scaler", reference::adam)
        .sizes(SIZES)
        .state_format(q8())
        .scaler(ScalerConfig {
            init_scale: 1024.0,
            growth_interval: 2,
            ..Default::default()
        })
        .bad_steps(&[3], f32::INFINITY, ("t4_70003", 7))
        .run(AdamConfig::adamw());
    let groups = vec![
        ParamGroup::new(
            ["t3_5000", "t0_1000"],
            AdamConfig {
                lr: 3e-3,
                ..AdamConfig::adamw()
            },
        ),
        ParamGroup::rest(AdamConfig {
            betas: (0.8, 0.99),
            ..AdamConfig::adamw()
        }),
    ];
    Run::new("adam q8 groups", reference::adam)
        .sizes(SIZES)
        .state_format(q8())
        .run_groups(groups, |n| usize::from(!(n == "t3_5000" || n == "t0_1000")));
}

#[test]
fn converting_a_running_state_to_8_bit_and_back() {
    let gpu = common::gpu();
    let mut rng = common::rng("blockwise conversion");
    let w = common::randn(&mut rng, 5000, 1.0);
    let b = common::randn(&mut rng, 300, 1.0);
    let mut params = wgpu_optim::Params::new(&gpu, &[("w", &w[..]), ("b", &b[..])]).unwrap();
    let mut opt = wgpu_optim::Adam::new(&params, AdamConfig::adamw()).unwrap();
    use wgpu_optim::Optimizer;
    for _ in 0..3 {
        params
            .write_grad("w", &common::randn(&mut rng, 5000, 1.0))
            .unwrap();
        params
            .write_grad("b", &common::randn(&mut rng, 300, 1.0))
            .unwrap();
        opt.step(&mut params).unwrap();
    }
    let dense_w = opt.state("exp_avg_sq", "w").unwrap();
    let dense_b = opt.state("exp_avg_sq", "b").unwrap();
    // Dense: 4 bytes per element of the arena chunk (5056 + 320 elements, rounded to 6144).
    assert_eq!(opt.state_memory_bytes(), 2 * 4 * 6144);
    opt.set_state_format(q8()).unwrap();
    assert_eq!(opt.state_format(), q8());
    // The large tensor is quantized on the host exactly as the kernel would; the small one keeps
    // its f32 values.
    let map = wgpu_optim::QuantMap::Unsigned.values();
    let (codes, absmax) = wgpu_optim::blockwise::quantize(&map, &dense_w);
    let q = opt.quantized_state("exp_avg_sq", "w").unwrap().unwrap();
    assert_eq!((q.codes, q.absmax), (codes.clone(), absmax.clone()));
    assert_eq!(opt.state("exp_avg_sq", "b").unwrap(), dense_b);
    assert!(opt.quantized_state("exp_avg_sq", "b").unwrap().is_none());
    // Codes (20 blocks of 256 B) + absmax (20 × 4 B) for w, 2 blocks of f32 for b, per state.
    assert_eq!(opt.state_memory_bytes(), 2 * (20 * 256 + 80 + 2 * 1024));
    let back = wgpu_optim::blockwise::dequantize(&map, &codes, &absmax).unwrap();
    opt.step(&mut params).unwrap();
    opt.set_state_format(StateFormat::Dense).unwrap();
    assert_eq!(opt.state_format(), StateFormat::Dense);
    assert_eq!(opt.state("exp_avg_sq", "w").unwrap().len(), 5000);
    assert_ne!(
        opt.state("exp_avg_sq", "w").unwrap(),
        back,
        "the step moved the state"
    );
}

/// Two optimizers on identical parameters of many tensors, after the same steps: one is
/// converted with the blocking calls, the other with their async forms.
struct Twins {
    params: [wgpu_optim::Params; 2],
    opts: [wgpu_optim::Adam; 2],
    names: Vec<String>,
}

impl Twins {
    fn new(gpu: &wgpu_optim::Gpu, dtype: DType) -> Twins {
        use wgpu_optim::Optimizer;
        let mut rng = common::rng("conversion twins");
        // 1,200 small tensors and 3 large ones (8-bit state from 4096 elements).
        let lens: Vec<usize> = (0..1203)
            .map(|i| if i % 400 == 0 { 5000 + i } else { 1 + i % 300 })
            .collect();
        let names: Vec<String> = (0..lens.len()).map(|i| format!("t{i}")).collect();
        let values: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| common::randn(&mut rng, n, 1.0))
            .collect();
        let grads: Vec<Vec<Vec<f32>>> = (0..2)
            .map(|_| {
                lens.iter()
                    .map(|&n| common::randn(&mut rng, n, 1.0))
                    .collect()
            })
            .collect();
        let make = || {
            let mut b = wgpu_optim::Params::builder(gpu);
            for (name, &n) in names.iter().zip(&lens) {
                b = b.tensor(name, &[n], dtype);
            }
            let mut p = b.build().unwrap();
            for (name, v) in names.iter().zip(&values) {
                p.write(name, v).unwrap();
            }
            let mut opt = wgpu_optim::Adam::new(&p, AdamConfig::adamw()).unwrap();
            for g in &grads {
                for (name, g) in names.iter().zip(g) {
                    p.write_grad(name, g).unwrap();
                }
                opt.step(&mut p).unwrap();
            }
            (p, opt)
        };
        let (p0, o0) = make();
        let (p1, o1) = make();
        Twins {
            params: [p0, p1],
            opts: [o0, o1],
            names,
        }
    }

    /// Both optimizers hold the same state, bit for bit (and the same codes where 8-bit).
    fn same_state(&self, keys: &[&str]) {
        use wgpu_optim::Optimizer;
        for key in keys {
            for name in &self.names {
                let [a, b] = [0, 1].map(|i| self.opts[i].state(key, name).unwrap());
                common::compare(&format!("{key} {name}"), &a, &b, common::Bound::Bits);
                if self.opts[0].state_format() != StateFormat::Dense && *key != "master" {
                    let [qa, qb] = [0, 1].map(|i| self.opts[i].quantized_state(key, name).unwrap());
                    assert_eq!(qa.map(|q| q.codes), qb.map(|q| q.codes), "{key} {name}");
                }
            }
        }
    }
}

#[test]
fn conversions_after_steps_read_back_in_a_few_waits_and_their_async_forms_agree() {
    use wgpu_optim::QuantMap;
    // A handle of its own (same device), so that other tests' read-backs do not count.
    let gpu = common::gpu().with_dispatch_dim_cap(u32::MAX);
    let mut t = Twins::new(&gpu, DType::F32);
    let keys = ["exp_avg", "exp_avg_sq"];
    // The dense state each tensor holds before (read one tensor at a time).
    let dense: Vec<Vec<f32>> = {
        use wgpu_optim::Optimizer;
        t.names
            .iter()
            .map(|n| t.opts[0].state("exp_avg_sq", n).unwrap())
            .collect()
    };
    // 1,203 tensors: a read-back per state (two), not one per tensor and state.
    let before = gpu.blocking_waits();
    t.opts[0].set_state_format(q8()).unwrap();
    let waits = gpu.blocking_waits() - before;
    assert!(waits <= 2, "converting to 8-bit waited {waits} times");
    pollster::block_on(t.opts[1].set_state_format_async(q8())).unwrap();
    t.same_state(&keys);
    // Each tensor got its own values: the large ones quantized as the host does, the small
    // ones kept in f32.
    let map = QuantMap::Unsigned.values();
    for (name, values) in t.names.iter().zip(&dense) {
        use wgpu_optim::Optimizer;
        match t.opts[0].quantized_state("exp_avg_sq", name).unwrap() {
            Some(q) => {
                let (codes, absmax) = wgpu_optim::blockwise::quantize(&map, values);
                assert_eq!((q.codes, q.absmax), (codes, absmax), "{name}");
            }
            None => assert_eq!(
                &t.opts[0].state("exp_avg_sq", name).unwrap(),
                values,
                "{name}"
            ),
        }
    }

    let before = gpu.blocking_waits();
    t.opts[0]
        .set_quant_map("exp_avg_sq", QuantMap::Signed)
        .unwrap();
    let waits = gpu.blocking_waits() - before;
    assert!(waits <= 1, "requantizing one state waited {waits} times");
    pollster::block_on(t.opts[1].set_quant_map_async("exp_avg_sq", QuantMap::Signed)).unwrap();
    assert_eq!(
        t.opts[1].quant_map("exp_avg_sq").unwrap(),
        Some(QuantMap::Signed)
    );
    t.same_state(&keys);

    t.opts[0].set_state_format(StateFormat::Dense).unwrap();
    pollster::block_on(t.opts[1].set_state_format_async(StateFormat::Dense)).unwrap();
    assert_eq!(t.opts[1].state_format(), StateFormat::Dense);
    t.same_state(&keys);

    let bf16 = Precision {
        state: DType::Bf16,
        ..Precision::default()
    };
    let before = gpu.blocking_waits();
    t.opts[0].set_precision(bf16).unwrap();
    let waits = gpu.blocking_waits() - before;
    assert!(waits <= 2, "converting to bf16 state waited {waits} times");
    pollster::block_on(t.opts[1].set_precision_async(bf16)).unwrap();
    assert_eq!(t.opts[1].precision(), bf16);
    t.same_state(&keys);

    // Master weights of bf16 parameters: copied in one read-back, the same both ways.
    let mut t = Twins::new(&gpu, DType::Bf16);
    let master = Precision {
        master_weights: true,
        ..Precision::default()
    };
    let before = gpu.blocking_waits();
    t.opts[0].set_precision(master).unwrap();
    let waits = gpu.blocking_waits() - before;
    assert!(waits <= 1, "copying 1,203 parameters waited {waits} times");
    pollster::block_on(t.opts[1].set_precision_async(master)).unwrap();
    t.same_state(&["master"]);
    let w = t.params[0].read("t1").unwrap();
    use wgpu_optim::Optimizer;
    assert_eq!(t.opts[0].state("master", "t1").unwrap(), w);
    for i in 0..2 {
        t.params[i].write("t1", &vec![0.25; w.len()]).unwrap();
    }
    t.opts[0].sync_master_weights(&t.params[0]).unwrap();
    pollster::block_on(t.opts[1].sync_master_weights_async(&t.params[1])).unwrap();
    t.same_state(&["master"]);
    assert_eq!(
        t.opts[1].state("master", "t1").unwrap(),
        vec![0.25; w.len()]
    );
}

#[test]
fn bad_formats_and_bad_quantized_state_are_typed_errors_that_change_nothing() {
    use wgpu_optim::{Error, Optimizer, QuantizedState};
    let gpu = common::gpu();
    let mut params = wgpu_optim::Params::zeros(&gpu, &[("w", 5000), ("b", 10)]).unwrap();
    let mut opt = wgpu_optim::Adam::new(&params, AdamConfig::adamw()).unwrap();
    let e = opt
        .set_state_format(StateFormat::Blockwise8 { min_size: 0 })
        .unwrap_err();
    assert!(matches!(e, Error::InvalidOptions(_)), "{e}");
    assert_eq!(opt.state_format(), StateFormat::Dense);
    // 16-bit state dtype and 8-bit state exclude each other, in either order.
    let bf16 = Precision {
        state: DType::Bf16,
        ..Precision::default()
    };
    opt.set_precision(bf16).unwrap();
    assert!(matches!(
        opt.set_state_format(q8()),
        Err(Error::InvalidOptions(_))
    ));
    opt.set_precision(Precision::default()).unwrap();
    opt.set_state_format(q8()).unwrap();
    assert!(matches!(
        opt.set_precision(bf16),
        Err(Error::InvalidOptions(_))
    ));
    // Optimizers without an 8-bit form say so.
    let mut lamb = wgpu_optim::Lamb::new(&params, Default::default()).unwrap();
    let e = lamb.set_state_format(q8()).unwrap_err();
    assert!(e.to_string().contains("8-bit"), "{e}");
    assert_eq!(lamb.state_format(), StateFormat::Dense);

    params.write_grad("w", &vec![0.5; 5000]).unwrap();
    opt.step(&mut params).unwrap();
    let good = opt.quantized_state("exp_avg", "w").unwrap().unwrap();
    let bad = [
        QuantizedState {
            codes: vec![0; 4999],
            ..good.clone()
        },
        QuantizedState {
            absmax: vec![1.0; 19],
            ..good.clone()
        },
        QuantizedState {
            map: wgpu_optim::QuantMap::Unsigned.values(),
            ..good.clone()
        },
        QuantizedState {
            absmax: vec![f32::NAN; 20],
            ..good.clone()
        },
    ];
    for q in &bad {
        let e = opt.set_quantized_state("exp_avg", "w", q).unwrap_err();
        assert!(
            matches!(e, Error::LengthMismatch { .. } | Error::InvalidOptions(_)),
            "{e}"
        );
        assert_eq!(opt.quantized_state("exp_avg", "w").unwrap().unwrap(), good);
    }
    // A small tensor has no 8-bit state to set; unknown names are the usual errors.
    assert!(opt.set_quantized_state("exp_avg", "b", &good).is_err());
    assert!(matches!(
        opt.set_quantized_state("exp_avg", "nope", &good),
        Err(Error::UnknownTensor(_))
    ));
    assert!(matches!(
        opt.quantized_state("nope", "w"),
        Err(Error::UnknownState { .. })
    ));
    // Written codes are what is read back, and what the next step starts from.
    let mut q = good.clone();
    q.absmax[3] = 0.25;
    opt.set_quantized_state("exp_avg", "w", &q).unwrap();
    assert_eq!(opt.quantized_state("exp_avg", "w").unwrap().unwrap(), q);
}

#[test]
fn dequantize_refuses_absmax_that_do_not_fit_the_codes() {
    use wgpu_optim::{blockwise, Error, QuantMap, QuantizedState};
    let map = QuantMap::Signed.values();
    let values: Vec<f32> = (0..600).map(|i| (i as f32 * 0.37).sin()).collect();
    let (codes, absmax) = blockwise::quantize(&map, &values);
    assert_eq!(absmax.len(), 3);
    // Too few scales (the last block's element would index past them), too many, or none.
    let more = [&absmax[..], &[1.0]].concat();
    for (codes, absmax) in [
        (&codes[..], &absmax[..2]),
        (&codes[..], &more[..]),
        (&codes[..1], &[][..]),
    ] {
        match blockwise::dequantize(&map, codes, absmax) {
            Err(Error::LengthMismatch { expected, got, .. }) => {
                assert_eq!((expected, got), (codes.len().div_ceil(256), absmax.len()))
            }
            other => panic!("{} codes, {} absmax: {other:?}", codes.len(), absmax.len()),
        }
    }
    let q = QuantizedState {
        codes: codes.clone(),
        absmax: absmax[..1].to_vec(),
        map,
    };
    assert!(matches!(q.values(), Err(Error::LengthMismatch { .. })));
    let whole = QuantizedState { absmax, ..q };
    assert_eq!(
        whole.values().unwrap(),
        blockwise::dequantize(&map, &codes, &whole.absmax).unwrap()
    );
    assert!(blockwise::dequantize(&map, &[], &[]).unwrap().is_empty());
}

/// An optimizer without an 8-bit form: refused, and its reference state left as it was.
#[test]
fn requantize_refuses_an_optimizer_without_8_bit_state() {
    use wgpu_optim::{AdadeltaConfig, Error};
    let cfg = AdadeltaConfig::default();
    let mut state = reference::State::new(&cfg, 300);
    let mut p = ndarray::Array1::from_elem(300, 1.0f32);
    reference::adadelta(
        &cfg,
        &mut p,
        &ndarray::Array1::from_elem(300, 0.5),
        &mut state,
    );
    let before = state.clone();
    match reference::requantize(&cfg, &mut state) {
        Err(Error::InvalidOptions(msg)) => {
            assert!(msg.contains("Adadelta") && msg.contains("8-bit"), "{msg}")
        }
        other => panic!("Adadelta: {other:?}"),
    }
    assert_eq!(state, before);
}

/// A run of 8-bit AdamW over three tensors (one below min_size), `steps` steps from a seed.
fn adamw_q8_run(
    gpu: &wgpu_optim::Gpu,
    seed: u64,
) -> (wgpu_optim::Params, wgpu_optim::Adam, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let init: Vec<Vec<f32>> = [5000, 300, 4096]
        .iter()
        .map(|&n| common::randn(&mut rng, n, 1.0))
        .collect();
    let params = wgpu_optim::Params::new(gpu, &common::named(["w", "b", "v"], &init)).unwrap();
    let mut opt = wgpu_optim::Adam::new(&params, AdamConfig::adamw()).unwrap();
    opt.set_state_format(q8()).unwrap();
    (params, opt, rng)
}

fn step_random(
    params: &mut wgpu_optim::Params,
    opt: &mut wgpu_optim::Adam,
    rng: &mut rand::rngs::StdRng,
) {
    use wgpu_optim::Optimizer;
    for (n, len) in [("w", 5000), ("b", 300), ("v", 4096)] {
        params.write_grad(n, &common::randn(rng, len, 1.0)).unwrap();
    }
    opt.step(params).unwrap();
}

#[test]
fn checkpoints_hold_codes_absmax_and_maps_and_resume_bit_for_bit() {
    use wgpu_optim::{checkpoint, Error, Optimizer, QuantMap};
    let gpu = common::gpu();
    let dir = std::env::temp_dir().join(format!("wgpu-optim-q8ck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("q8.safetensors");
    let (mut params, mut opt, mut rng) = adamw_q8_run(&gpu, 7);
    for _ in 0..3 {
        step_random(&mut params, &mut opt, &mut rng);
    }
    checkpoint::save(&path, &params, &opt, Default::default()).unwrap();
    let ck = checkpoint::open(&path).unwrap();
    let names: Vec<&str> = ck.tensors().iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, ["w", "b", "v"]);
    // The codes as U8 values, absmax per block and the map, as bitsandbytes names them apart.
    let q = opt.quantized_state("exp_avg", "w").unwrap().unwrap();
    let codes: Vec<f32> = q.codes.iter().map(|&c| c as f32).collect();
    assert_eq!(ck.read("state.w.exp_avg.codes").unwrap(), codes);
    assert_eq!(ck.read("state.w.exp_avg.absmax").unwrap(), q.absmax);
    assert_eq!(
        ck.read("state.w.exp_avg_sq.qmap").unwrap(),
        QuantMap::Unsigned.values()
    );
    assert_eq!(
        ck.read("state.b.exp_avg").unwrap(),
        opt.state("exp_avg", "b").unwrap()
    );

    // A dense optimizer, or one with another min_size, is refused before anything changes.
    let (mut p2, mut dense) = {
        let (p, _, _) = adamw_q8_run(&gpu, 8);
        let o = wgpu_optim::Adam::new(&p, AdamConfig::adamw()).unwrap();
        (p, o)
    };
    let e = checkpoint::load(&path, &mut p2, &mut dense).unwrap_err();
    assert!(matches!(e, Error::CheckpointMismatch { .. }), "{e}");
    dense
        .set_state_format(StateFormat::Blockwise8 { min_size: 100 })
        .unwrap();
    assert!(checkpoint::load(&path, &mut p2, &mut dense).is_err());

    // Resume in a fresh optimizer and continue next to the uninterrupted run.
    let (mut p3, mut resumed, _) = adamw_q8_run(&gpu, 9);
    checkpoint::load(&path, &mut p3, &mut resumed).unwrap();
    assert_eq!(resumed.step_count(), 3);
    let mut rng2 = rng.clone();
    for _ in 0..3 {
        step_random(&mut params, &mut opt, &mut rng);
        step_random(&mut p3, &mut resumed, &mut rng2);
    }
    for n in ["w", "b", "v"] {
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        assert_eq!(
            bits(p3.read(n).unwrap()),
            bits(params.read(n).unwrap()),
            "{n}"
        );
        for k in ["exp_avg", "exp_avg_sq"] {
            assert_eq!(
                resumed.quantized_state(k, n).unwrap(),
                opt.quantized_state(k, n).unwrap(),
                "{n} {k}"
            );
            assert_eq!(
                bits(resumed.state(k, n).unwrap()),
                bits(opt.state(k, n).unwrap())
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The bitsandbytes-converted checkpoint (format version 1, no checksums) with one tensor
/// replaced, written to a temporary file.
fn tampered(
    replace: &str,
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
    data: Vec<u8>,
) -> std::path::PathBuf {
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/bnb_resume/adamw8bit_step5.safetensors"
    );
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    for name in meta.offset_keys() {
        let t = st.tensor(&name).unwrap();
        let view = if name == replace {
            safetensors::tensor::TensorView::new(dtype, shape.clone(), &data).unwrap()
        } else {
            t
        };
        tensors.push((name, view));
    }
    let out = safetensors::serialize(tensors, meta.metadata().clone()).unwrap();
    let path = std::env::temp_dir().join(format!(
        "wgpu-optim-tampered-{}-{}.safetensors",
        std::process::id(),
        replace.replace('.', "_")
    ));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn checkpoints_whose_8_bit_tensors_do_not_fit_are_refused_and_change_nothing() {
    use wgpu_optim::{checkpoint, Error, Optimizer};
    let gpu = common::gpu();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // "w" has 4096 elements: 16 blocks.
    let cases = [
        (
            "state.w.exp_avg.absmax",
            vec![15],
            safetensors::Dtype::F32,
            f32s(&[1.0; 15]),
        ),
        (
            "state.w.exp_avg.codes",
            vec![4095],
            safetensors::Dtype::U8,
            vec![0; 4095],
        ),
        (
            "state.w.exp_avg.codes",
            vec![4096],
            safetensors::Dtype::F32,
            f32s(&[0.0; 4096]),
        ),
        (
            "state.w.exp_avg.qmap",
            vec![255],
            safetensors::Dtype::F32,
            f32s(&[0.5; 255]),
        ),
        // The right size, but not one of bitsandbytes' maps: refused when loading.
        (
            "state.w.exp_avg.qmap",
            vec![256],
            safetensors::Dtype::F32,
            f32s(&[0.5; 256]),
        ),
        (
            "state.w.exp_avg.absmax",
            vec![16],
            safetensors::Dtype::F32,
            f32s(&[f32::NAN; 16]),
        ),
    ];
    for (name, shape, dtype, data) in cases {
        let path = tampered(name, shape.clone(), dtype, data);
        let result: wgpu_optim::Result<()> = checkpoint::open(&path).and_then(|ck| {
            let mut params = ck.params(&gpu)?;
            let mut opt = wgpu_optim::Adam::new(&params, AdamConfig::adamw())?;
            opt.set_state_format(q8())?;
            let before = opt.quantized_state("exp_avg", "w")?;
            let e = ck.restore(&mut params, &mut opt).unwrap_err();
            assert_eq!(
                opt.quantized_state("exp_avg", "w")?,
                before,
                "{name}: changed"
            );
            assert_eq!(opt.step_count(), 0);
            Err(e)
        });
        let e = result.unwrap_err();
        assert!(
            matches!(
                e,
                Error::CheckpointFormat(_)
                    | Error::CheckpointMismatch { .. }
                    | Error::CheckpointNonFinite { .. }
            ),
            "{name} {shape:?}: {e}"
        );
        eprintln!("{name} {shape:?} {dtype:?}: {e}");
        std::fs::remove_file(&path).unwrap();
    }
}

/// The kernel's quantizer on the values where a quantizer goes wrong: every code's value, every
/// midpoint between neighbours and the floats either side of it, the decades' ends, tiny
/// values, zeros, both signs. SGD's first step with momentum stores `buf = grad`, so the
/// gradient is what is quantized; each block holds a 1.0, so it is quantized unscaled. Codes
/// must equal `blockwise::quantize`'s, midpoints included.
#[test]
fn the_kernels_quantizer_is_the_references_on_midpoints_and_decade_ends() {
    use wgpu_optim::blockwise::{dynamic_map, quantize, BLOCK};
    use wgpu_optim::Optimizer;
    let gpu = common::gpu();
    for (signed, map) in [(true, dynamic_map(true)), (false, dynamic_map(false))] {
        let mut xs: Vec<f32> = Vec::new();
        for c in 0..256 {
            xs.push(map[c]);
            if c < 255 {
                let m = (map[c] + map[c + 1]) * 0.5;
                xs.extend([m, m.next_up(), m.next_down()]);
            }
        }
        for e in -8..=0 {
            let t = 10f32.powi(e);
            xs.extend([t, t.next_up(), t.next_down(), 0.55 * t, 0.1 * t]);
        }
        xs.extend([0.0, -0.0, 1e-30, 3e-8, 1.0f32.next_down()]);
        if signed {
            let neg: Vec<f32> = xs.iter().map(|x| -x).collect();
            xs.extend(neg);
        }
        xs.retain(|x| x.abs() <= 1.0);
        // Blocks of 255 values and a 1.0.
        let mut grad = Vec::new();
        for chunk in xs.chunks(BLOCK - 1) {
            grad.push(1.0);
            grad.extend_from_slice(chunk);
            grad.resize(grad.len().next_multiple_of(BLOCK), 1.0);
        }
        let n = grad.len();
        let mut params = wgpu_optim::Params::zeros(&gpu, &[("w", n)]).unwrap();
        params.write_grad("w", &grad).unwrap();
        let cfg = SgdConfig {
            lr: 0.0,
            momentum: 0.9,
            ..Default::default()
        };
        let mut opt = wgpu_optim::Sgd::new(&params, cfg).unwrap();
        opt.set_state_format(StateFormat::Blockwise8 { min_size: 1 })
            .unwrap();
        let which = if signed {
            wgpu_optim::QuantMap::Signed
        } else {
            wgpu_optim::QuantMap::Unsigned
        };
        opt.set_quant_map("momentum_buffer", which).unwrap();
        opt.step(&mut params).unwrap();
        let got = opt
            .quantized_state("momentum_buffer", "w")
            .unwrap()
            .unwrap();
        let (codes, absmax) = quantize(&map, &grad);
        assert!(absmax.iter().all(|&a| a == 1.0));
        let wrong: Vec<(f32, u8, u8)> = grad
            .iter()
            .zip(got.codes.iter().zip(&codes))
            .filter(|(_, (a, b))| a != b)
            .map(|(x, (a, b))| (*x, *a, *b))
            .collect();
        assert!(
            wrong.is_empty(),
            "signed {signed}: (value, kernel, reference) {wrong:?}"
        );
    }
}
