//! Gradient clipping, non-finite skipping and loss scaling, fused into the step, against the
//! CPU reference and torch's GradScaler.

mod common;
use common::{assert_matches_reference, compare, gpu, plain_sgd, randn, rng, Bound, RefFn, Run};
use ndarray::Array1;
use serde_json::Value;
use wgpu_optim::reference::{self, ScalerState};
use wgpu_optim::{
    AdagradConfig, Adam, AdamConfig, Error, GradScaler, NormType, Optimizer, OptimizerConfig,
    ParamGroup, Params, RmsPropConfig, ScalerConfig, SgdConfig,
};

const SIZES: &[usize] = &[1, 5, 64, 1000, 4099];

/// GPU step with clipping vs: f64 norm on the CPU, torch's coefficient, reference step.
fn run_clipped<C: OptimizerConfig>(cfg: C, reference: RefFn<C>, p: f32, max_norm: f32) {
    let name = format!("{} norm {p}", C::NAME);
    let out = Run::new(&name, reference)
        .sizes(SIZES)
        .steps(6)
        .grad_scales(&[1.0, 0.01, 3.0])
        .clip(max_norm, p)
        .run(cfg);
    assert!(
        out.clipped > 0 && out.clipped < 6,
        "{name}: the run should clip some steps and not others"
    );
}

#[test]
fn clipping_every_optimizer_every_norm() {
    for p in [2.0, 1.0, f32::INFINITY] {
        // max_norm near the typical norm of a unit-scale step, so some steps clip.
        let max = match p {
            2.0 => 20.0,
            1.0 => 1000.0,
            _ => 2.0,
        };
        run_clipped(
            AdamConfig {
                amsgrad: true,
                ..AdamConfig::adamw()
            },
            reference::adam,
            p,
            max,
        );
        run_clipped(
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            },
            reference::sgd,
            p,
            max,
        );
        run_clipped(
            RmsPropConfig {
                centered: true,
                momentum: 0.5,
                ..Default::default()
            },
            reference::rmsprop,
            p,
            max,
        );
        run_clipped(
            AdagradConfig {
                lr_decay: 0.01,
                ..Default::default()
            },
            reference::adagrad,
            p,
            max,
        );
    }
}

/// Adam over three tensors in 64 KiB chunks ("b" spans a chunk boundary): the steps where
/// `pattern` is true get `value` planted at `at`; they must change nothing and not count, so
/// the run equals the reference run of the good steps alone (bit for bit on lavapipe).
fn run_with_bad_steps(pattern: &[bool], value: f32, at: (&'static str, usize), clip: bool) {
    let bad: Vec<usize> = (0..pattern.len()).filter(|&s| pattern[s]).collect();
    let run = Run::new("nonfinite", reference::adam)
        .tensors(&[("a", 5000), ("b", 20000), ("c", 3)])
        .max_chunk_bytes(64 * 1024)
        .steps(pattern.len())
        .grad_scales(&[1.0])
        .bad_steps(&bad, value, at);
    let run = if clip {
        run.clip(5.0, 2.0)
    } else {
        run.skip_nonfinite()
    };
    let h = run.harness(
        vec![ParamGroup::rest(AdamConfig {
            lr: 0.01,
            ..Default::default()
        })],
        |_| 0,
    );
    assert!(h.params.pieces("b").unwrap().len() > 1);
    let out = h.finish();
    assert_eq!(out.applied, pattern.len() - bad.len());
}

#[test]
fn nonfinite_gradients_skip_the_step_everywhere() {
    let p = [false, false, true, false, true, false];
    let boundary = {
        let gpu = gpu();
        let params = Params::zeros_with_max_chunk_bytes(
            &gpu,
            &[("a", 5000), ("b", 20000), ("c", 3)],
            64 * 1024,
        )
        .unwrap();
        params.pieces("b").unwrap()[0].len // first element of b in the second chunk
    };
    for value in [f32::INFINITY, f32::NAN, f32::NEG_INFINITY] {
        for at in [("a", 0), ("c", 2), ("b", boundary), ("b", boundary - 1)] {
            run_with_bad_steps(&p, value, at, false);
        }
    }
}

#[test]
fn clipping_never_writes_nan() {
    run_with_bad_steps(
        &[false, true, false, true, true, false],
        f32::NAN,
        ("b", 7),
        true,
    );
    run_with_bad_steps(&[true, false, false], f32::INFINITY, ("a", 4999), true);
}

/// More consecutive skips than the host's window of prepared step counts: the host must learn
/// the GPU's skip count and still use the right step.
#[test]
fn long_runs_of_skipped_steps() {
    let mut p = vec![false, false];
    p.extend([true; 21]);
    p.extend([false; 3]);
    p.extend([true; 9]);
    p.push(false);
    run_with_bad_steps(&p, f32::NAN, ("a", 1), false);
}

#[test]
fn grad_scaler_reproduces_torch() {
    let data: Value = serde_json::from_str(include_str!("data/grad_scaler.json")).unwrap();
    let c = &data["config"];
    let config = ScalerConfig {
        init_scale: c["init_scale"].as_f64().unwrap() as f32,
        growth_factor: c["growth_factor"].as_f64().unwrap() as f32,
        backoff_factor: c["backoff_factor"].as_f64().unwrap() as f32,
        growth_interval: c["growth_interval"].as_u64().unwrap() as u32,
    };
    let gpu = gpu();
    let mut params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])]).unwrap();
    let mut opt = plain_sgd(&params, 0.1);
    let scaler = GradScaler::new(&gpu, config.clone()).unwrap();
    opt.set_grad_scaler(Some(&scaler)).unwrap();
    let mut cpu = ScalerState::new(&config);
    let mut w = 1.0f32;
    for (i, s) in data["steps"].as_array().unwrap().iter().enumerate() {
        let v: f32 = match &s["grad"] {
            Value::String(x) => x.parse().unwrap(),
            x => x.as_f64().unwrap() as f32,
        };
        let scale = scaler.scale().unwrap();
        assert_eq!(scale, cpu.scale);
        let g = if v.is_finite() { v * scale } else { v };
        params.write_grad("w", &[g; 4]).unwrap();
        opt.step(&mut params).unwrap();
        let applied = s["applied"].as_bool().unwrap();
        assert_eq!(!opt.last_step_skipped().unwrap(), applied, "step {i}");
        assert_eq!(scaler.found_inf().unwrap(), !applied, "step {i}");
        cpu.update(!applied, &config);
        if applied {
            w += -0.1f32 * (g * (1.0 / scale));
        }
        assert_eq!(
            scaler.scale().unwrap() as f64,
            s["scale"].as_f64().unwrap(),
            "scale after step {i}"
        );
        assert_eq!(
            scaler.growth_tracker().unwrap() as u64,
            s["growth_tracker"].as_u64().unwrap(),
            "step {i}"
        );
        assert_eq!(
            (cpu.scale, cpu.growth_tracker),
            (scaler.scale().unwrap(), scaler.growth_tracker().unwrap())
        );
        assert_eq!(params.read("w").unwrap(), vec![w; 4], "step {i}");
    }
}

/// Growth trackers at or past `growth_interval` (set by hand or from a checkpoint) grow nothing,
/// as in torch, and one at u32::MAX stays there instead of wrapping (GPU and reference alike);
/// an overflow still resets it.
#[test]
fn grad_scaler_trackers_past_the_interval_saturate() {
    let gpu = gpu();
    let mut params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])]).unwrap();
    let mut opt = plain_sgd(&params, 0.1);
    for (interval, tracker, after) in [
        (3, 5, [(8.0, 6), (8.0, 7)]),
        (3, u32::MAX - 1, [(8.0, u32::MAX), (8.0, u32::MAX)]),
        (3, u32::MAX, [(8.0, u32::MAX), (8.0, u32::MAX)]),
        (u32::MAX, u32::MAX - 1, [(16.0, 0), (16.0, 1)]),
        (u32::MAX, u32::MAX, [(8.0, u32::MAX), (8.0, u32::MAX)]),
    ] {
        let config = ScalerConfig {
            growth_interval: interval,
            ..Default::default()
        };
        let scaler = GradScaler::new(&gpu, config.clone()).unwrap();
        scaler.set_state(8.0, tracker).unwrap();
        assert_eq!(scaler.growth_tracker().unwrap(), tracker, "stored as given");
        opt.set_grad_scaler(Some(&scaler)).unwrap();
        let mut cpu = ScalerState {
            scale: 8.0,
            growth_tracker: tracker,
        };
        for (i, want) in after.into_iter().enumerate() {
            params.write_grad("w", &[1.0; 4]).unwrap();
            opt.step(&mut params).unwrap();
            cpu.update(false, &config);
            let got = (scaler.scale().unwrap(), scaler.growth_tracker().unwrap());
            assert_eq!(
                got, want,
                "interval {interval}, tracker {tracker}, step {i}"
            );
            assert_eq!((cpu.scale, cpu.growth_tracker), want, "reference");
        }
        params.write_grad("w", &[f32::INFINITY; 4]).unwrap();
        opt.step(&mut params).unwrap();
        cpu.update(true, &config);
        let backed_off = after[1].0 * 0.5;
        assert_eq!(scaler.growth_tracker().unwrap(), 0);
        assert_eq!(scaler.scale().unwrap(), backed_off);
        assert_eq!((cpu.scale, cpu.growth_tracker), (backed_off, 0));
    }
    // A scale that is not finite and > 0 is refused and writes nothing.
    let scaler = GradScaler::new(&gpu, ScalerConfig::default()).unwrap();
    scaler.set_state(4.0, 7).unwrap();
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            scaler.set_state(bad, 1),
            Err(Error::InvalidHyperparameter { name: "scale", .. })
        ));
    }
    assert_eq!(
        (scaler.scale().unwrap(), scaler.growth_tracker().unwrap()),
        (4.0, 7)
    );
}

#[test]
fn norm_is_deterministic() {
    let gpu = gpu();
    let mut rng = rng("deterministic");
    let n = 3_000_017; // ~2900 first-level partials: two reduction levels
    let g = randn(&mut rng, n, 1.0);
    let w = randn(&mut rng, n, 1.0);
    let run = || {
        let mut params = Params::with_max_chunk_bytes(&gpu, &[("w", &w[..])], 4 << 20).unwrap();
        let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
        opt.set_max_grad_norm(Some(100.0)).unwrap();
        params.write_grad("w", &g).unwrap();
        opt.step(&mut params).unwrap();
        (
            opt.last_grad_norm().unwrap().to_bits(),
            params.read("w").unwrap(),
        )
    };
    let (a, b) = (run(), run());
    assert_eq!(a.0, b.0, "norm bits differ between identical runs");
    assert!(a
        .1
        .iter()
        .zip(&b.1)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
}

/// 10^8 elements: the tree-reduced f32 norm agrees with an f64 sum within 1e-6 relative.
#[test]
fn norm_accuracy_over_1e8_elements() {
    let gpu = gpu();
    let mut rng = rng("accuracy");
    let n = 100_000_000;
    let g: Vec<f32> = (0..n)
        .map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0))
        .collect();
    let mut params = Params::zeros(&gpu, &[("g", n)]).unwrap();
    params.write_grad("g", &g).unwrap();
    let arr = Array1::from(g);
    for p in [2.0, 1.0, f32::INFINITY] {
        let want = reference::grad_norm(&[&arr], NormType::from_p(p).unwrap(), 1.0).unwrap();
        let got = params.clip_grad_norm(f32::MAX, p).unwrap().value().unwrap() as f64;
        let rel = ((got - want) / want).abs();
        eprintln!("norm {p}: gpu {got} cpu(f64) {want} rel {rel:e}");
        assert!(rel < 1e-6, "norm {p}: relative error {rel:e}");
    }
}

#[test]
fn standalone_clip_functions() {
    let gpu = gpu();
    let mut rng = rng("standalone");
    let (a, b) = (randn(&mut rng, 70, 2.0), randn(&mut rng, 3000, 2.0));
    let mut params = Params::zeros(&gpu, &[("a", 70), ("b", 3000)]).unwrap();
    params.write_grad("a", &a).unwrap();
    params.write_grad("b", &b).unwrap();
    let (aa, bb) = (Array1::from(a.clone()), Array1::from(b.clone()));
    let want = reference::grad_norm(&[&aa, &bb], NormType::L2, 1.0).unwrap();
    let norm = params.clip_grad_norm(1.0, 2.0).unwrap();
    let got = norm.value().unwrap();
    assert!(((got as f64 - want) / want).abs() < 1e-6);
    let coef = reference::clip_coef(got, 1.0);
    assert_matches_reference(
        "a",
        &params.read_grad("a").unwrap(),
        &a.iter().map(|x| x * coef).collect::<Vec<_>>(),
    );
    params.clip_grad_value(0.01).unwrap();
    let clamped: Vec<f32> = b.iter().map(|x| (x * coef).clamp(-0.01, 0.01)).collect();
    assert_matches_reference("b", &params.read_grad("b").unwrap(), &clamped);
}

/// `Params::grad_norm` (torch's `get_total_norm`): the norm of every type, gradients untouched,
/// NaN or inf when a gradient is.
#[test]
fn grad_norm_alone() {
    let gpu = gpu();
    let mut rng = rng("grad_norm");
    let (a, b) = (randn(&mut rng, 5001, 3.0), randn(&mut rng, 20000, 0.5));
    let params =
        Params::zeros_with_max_chunk_bytes(&gpu, &[("a", 5001), ("b", 20000)], 64 * 1024).unwrap();
    params.write_grad("a", &a).unwrap();
    params.write_grad("b", &b).unwrap();
    let (aa, bb) = (Array1::from(a.clone()), Array1::from(b.clone()));
    for p in [2.0, 1.0, f32::INFINITY] {
        let want = reference::grad_norm(&[&aa, &bb], NormType::from_p(p).unwrap(), 1.0).unwrap();
        let got = params.grad_norm(p).unwrap().value().unwrap() as f64;
        assert!(
            ((got - want) / want).abs() < 1e-6,
            "norm {p}: {got} vs {want}"
        );
    }
    compare("a", &params.read_grad("a").unwrap(), &a, Bound::Bits);
    compare("b", &params.read_grad("b").unwrap(), &b, Bound::Bits);
    for (bad, nan) in [(f32::NAN, true), (f32::NEG_INFINITY, false)] {
        let mut g = b.clone();
        g[19999] = bad;
        params.write_grad("b", &g).unwrap();
        for p in [2.0, 1.0, f32::INFINITY] {
            let v = params.grad_norm(p).unwrap().value().unwrap();
            assert_eq!((v.is_nan(), v == f32::INFINITY), (nan, !nan), "norm {p}");
        }
    }
    assert!(matches!(
        params.grad_norm(3.0),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn bad_clipping_and_scaler_options() {
    let gpu = gpu();
    let mut params = Params::new(&gpu, &[("w", &[1.0f32; 8][..])]).unwrap();
    params.write_grad("w", &[0.5; 8]).unwrap();
    let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            opt.set_max_grad_norm(Some(bad)),
            Err(Error::InvalidHyperparameter {
                name: "max_norm",
                ..
            })
        ));
        assert!(matches!(
            params.clip_grad_norm(bad, 2.0),
            Err(Error::InvalidHyperparameter { .. })
        ));
    }
    for bad in [0.0, 3.0, -1.0, f32::NAN] {
        assert!(matches!(
            NormType::from_p(bad),
            Err(Error::InvalidOptions(_))
        ));
        assert!(matches!(
            params.clip_grad_norm(1.0, bad),
            Err(Error::InvalidOptions(_))
        ));
    }
    assert!(
        matches!(opt.last_grad_norm(), Err(Error::InvalidOptions(_))),
        "no norm computed yet"
    );
    assert_eq!(
        params.read_grad("w").unwrap(),
        vec![0.5; 8],
        "failed calls left the grads alone"
    );
    let bad_scalers = [
        ScalerConfig {
            growth_factor: 1.0,
            ..Default::default()
        },
        ScalerConfig {
            growth_factor: f32::NAN,
            ..Default::default()
        },
        ScalerConfig {
            backoff_factor: 0.0,
            ..Default::default()
        },
        ScalerConfig {
            backoff_factor: 1.0,
            ..Default::default()
        },
        ScalerConfig {
            growth_interval: 0,
            ..Default::default()
        },
        ScalerConfig {
            init_scale: -1.0,
            ..Default::default()
        },
    ];
    for cfg in bad_scalers {
        assert!(matches!(
            GradScaler::new(&gpu, cfg),
            Err(Error::InvalidHyperparameter { .. })
        ));
    }
    opt.step(&mut params).unwrap();
    assert_eq!(opt.step_count(), 1);
}
