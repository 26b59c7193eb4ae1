//! Gradient clipping, non-finite skipping and loss scaling, fused into the step, against the
//! CPU reference and torch's GradScaler.

mod common;
use common::{assert_close, gpu, named, randn, rng, RefFn};
use ndarray::Array1;
use serde_json::Value;
use wgpu_optim::reference::{self, ScalerState, State};
use wgpu_optim::{
    AdagradConfig, Adam, AdamConfig, Error, GradScaler, NormType, Optim, Optimizer,
    OptimizerConfig, Params, RmsPropConfig, ScalerConfig, Sgd, SgdConfig,
};

const SIZES: &[usize] = &[1, 5, 64, 1000, 4099];

/// GPU step with clipping vs: f64 norm on the CPU, torch's coefficient, reference step.
fn run_clipped<C: OptimizerConfig>(cfg: C, reference: RefFn<C>, p: f32, max_norm: f32) {
    let name = format!("{} norm {p}", C::NAME);
    let mut rng = rng(&name);
    let gpu = gpu();
    reference::set_fused_multiply_add(gpu.fused_multiply_add());
    let names: Vec<String> = (0..SIZES.len()).map(|i| format!("t{i}")).collect();
    let init: Vec<Vec<f32>> = SIZES.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let tensors = named(names.iter().map(|s| s.as_str()), &init);
    let mut params = Params::new(&gpu, &tensors).unwrap();
    let mut opt = Optim::new(&params, cfg.clone()).unwrap();
    opt.set_max_grad_norm(Some(max_norm)).unwrap();
    let norm = NormType::from_p(p).unwrap();
    opt.set_grad_norm_type(norm).unwrap();
    let mut cpu_p: Vec<Array1<f32>> = init.iter().map(|v| Array1::from(v.clone())).collect();
    let mut cpu_s: Vec<State> = SIZES.iter().map(|&n| State::new(&cfg, n)).collect();
    let mut clipped = 0;
    for step in 0..6 {
        let scale = [1.0, 0.01, 3.0][step % 3];
        let grads: Vec<Array1<f32>> = SIZES
            .iter()
            .map(|&n| Array1::from(randn(&mut rng, n, scale)))
            .collect();
        for (n, g) in names.iter().zip(&grads) {
            params.write_grad(n, g.as_slice().unwrap()).unwrap();
        }
        opt.step(&mut params).unwrap();
        let refs: Vec<&Array1<f32>> = grads.iter().collect();
        let total = reference::grad_norm(&refs, norm, 1.0).unwrap();
        let gpu_norm = opt.last_grad_norm().unwrap();
        assert!(
            ((gpu_norm as f64 - total) / total).abs() < 1e-5,
            "{name}: norm {gpu_norm} vs {total}"
        );
        let coef = reference::clip_coef(gpu_norm, max_norm);
        clipped += (coef < 1.0) as usize;
        for i in 0..SIZES.len() {
            reference(
                &cfg,
                &mut cpu_p[i],
                &grads[i].mapv(|g| g * coef),
                &mut cpu_s[i],
            );
        }
    }
    assert!(
        clipped > 0 && clipped < 6,
        "{name}: the run should clip some steps and not others"
    );
    assert!(!opt.last_step_skipped().unwrap());
    for (i, n) in names.iter().enumerate() {
        assert_close(
            &format!("{name} {n}"),
            &params.read(n).unwrap(),
            cpu_p[i].as_slice().unwrap(),
            1e-6,
        );
        for k in opt.state_keys() {
            let want = cpu_s[i].get(k).unwrap();
            assert_close(
                &format!("{name} {n} {k}"),
                &opt.state(k, n).unwrap(),
                want.as_slice().unwrap(),
                1e-6,
            );
        }
    }
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

/// Snapshot of params and every state tensor, as bits.
fn snapshot(params: &Params, opt: &dyn Optimizer) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for n in params.names() {
        out.push(
            params
                .read(n)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect(),
        );
        for k in opt.state_keys() {
            out.push(
                opt.state(k, n)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            );
        }
    }
    out
}

/// Adam over three tensors in 64 KiB chunks ("b" spans a chunk boundary): `bad` steps get an
/// inf/NaN planted at `(tensor, index)`; they must change nothing and not count, so the run
/// equals the reference run of the good steps alone, bit for bit on the device's rounding.
fn run_with_bad_steps(pattern: &[bool], value: f32, at: (&str, usize), clip: bool) {
    let gpu = gpu();
    reference::set_fused_multiply_add(gpu.fused_multiply_add());
    let mut rng = rng("nonfinite");
    let sizes = [("a", 5000usize), ("b", 20000), ("c", 3)];
    let init: Vec<Vec<f32>> = sizes.iter().map(|s| randn(&mut rng, s.1, 1.0)).collect();
    let tensors = named(sizes.iter().map(|s| s.0), &init);
    let mut params = Params::with_max_chunk_bytes(&gpu, &tensors, 64 * 1024).unwrap();
    assert!(params.pieces("b").unwrap().len() > 1);
    let cfg = AdamConfig {
        lr: 0.01,
        ..Default::default()
    };
    let mut opt = Adam::new(&params, cfg.clone()).unwrap();
    if clip {
        opt.set_max_grad_norm(Some(5.0)).unwrap();
    } else {
        opt.set_skip_nonfinite(true).unwrap();
    }
    let mut cpu_p: Vec<Array1<f32>> = init.iter().map(|v| Array1::from(v.clone())).collect();
    let mut cpu_s: Vec<State> = sizes.iter().map(|s| State::new(&cfg, s.1)).collect();
    let mut good = 0;
    for &is_bad in pattern {
        let mut grads: Vec<Vec<f32>> = sizes.iter().map(|s| randn(&mut rng, s.1, 1.0)).collect();
        if is_bad {
            let t = sizes.iter().position(|s| s.0 == at.0).unwrap();
            grads[t][at.1] = value;
        }
        for (s, g) in sizes.iter().zip(&grads) {
            params.write_grad(s.0, g).unwrap();
        }
        let before = if is_bad {
            Some(snapshot(&params, &opt))
        } else {
            None
        };
        opt.step(&mut params).unwrap();
        if let Some(before) = before {
            assert!(
                opt.last_step_skipped().unwrap(),
                "a step with {value} must be skipped"
            );
            assert_eq!(
                snapshot(&params, &opt),
                before,
                "a skipped step changed something"
            );
            assert!(!opt.last_grad_norm().unwrap().is_finite());
        } else {
            good += 1;
            assert!(!opt.last_step_skipped().unwrap());
            let refs: Vec<Array1<f32>> = grads.iter().map(|g| Array1::from(g.clone())).collect();
            let coef = if clip {
                reference::clip_coef(opt.last_grad_norm().unwrap(), 5.0)
            } else {
                1.0
            };
            for i in 0..sizes.len() {
                reference::adam(
                    &cfg,
                    &mut cpu_p[i],
                    &refs[i].mapv(|g| g * coef),
                    &mut cpu_s[i],
                );
            }
        }
        assert_eq!(
            opt.step_count(),
            good,
            "skipped steps must not advance the step count"
        );
    }
    for (i, s) in sizes.iter().enumerate() {
        assert_close(
            s.0,
            &params.read(s.0).unwrap(),
            cpu_p[i].as_slice().unwrap(),
            1e-6,
        );
        assert_close(
            s.0,
            &opt.state("exp_avg_sq", s.0).unwrap(),
            cpu_s[i].get("exp_avg_sq").unwrap().as_slice().unwrap(),
            1e-6,
        );
    }
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
    let mut opt = Sgd::new(
        &params,
        SgdConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
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
    assert_close(
        "a",
        &params.read_grad("a").unwrap(),
        &a.iter().map(|x| x * coef).collect::<Vec<_>>(),
        0.0,
    );
    params.clip_grad_value(0.01).unwrap();
    let clamped: Vec<f32> = b.iter().map(|x| (x * coef).clamp(-0.01, 0.01)).collect();
    assert_close("b", &params.read_grad("b").unwrap(), &clamped, 0.0);
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
    assert_close("a", &params.read_grad("a").unwrap(), &a, 0.0);
    assert_close("b", &params.read_grad("b").unwrap(), &b, 0.0);
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
