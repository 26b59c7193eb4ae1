//! Lion (`LionConfig`): GPU against `reference::lion` through the shared runner (every option,
//! clipping, skipping, groups, chunking), typed errors for bad options, a save/resume round
//! trip, and a replay of trajectories recorded from lucidrains' lion-pytorch
//! (tools/lion_trajectory.py, tests/data/lion_trajectory.json).

mod common;
use common::{compare, gpu, Bound, Run};
use serde_json::Value;
use wgpu_optim::{
    checkpoint, reference, Error, FusedOptimizer, Lion, LionConfig, Optimizer, OptimizerConfig,
    ParamGroup, Params,
};

/// Odd step counts: every step moves a param by ±lr (times the decay), so after an even
/// number of steps without weight decay some elements are back where they started, and the
/// runner refuses a run in which an unwritten element could pass unseen.
const STEPS: usize = 9;

/// Small tensors for the clipping and resume runs (the thresholds are sized for them).
const SIZES: &[usize] = &[1, 5, 64, 1000, 4099];

fn cfg(lr: f32, weight_decay: f32, maximize: bool) -> LionConfig {
    LionConfig {
        lr,
        weight_decay,
        maximize,
        ..Default::default()
    }
}

#[test]
fn odd_options_match_the_reference() {
    // maximize x weight_decay and the defaults are rows of tests/optimizers.rs.
    let rows = [
        LionConfig {
            betas: (0.3, 0.5),
            ..cfg(3e-3, 1.0, false)
        },
        // The edges lion-pytorch accepts: beta1 = 0 is sign-SGD, beta1 = 1 the sign of the
        // momentum alone (beta2 = 1 freezes exp_avg at 0, which the runner cannot tell from an
        // unwritten buffer; the typed-error test accepts it).
        LionConfig {
            betas: (0.0, 0.5),
            ..cfg(1e-2, 0.0, false)
        },
    ];
    for c in rows {
        Run::new(format!("{c:?}"), reference::lion)
            .steps(STEPS)
            .run(c);
    }
    // With beta1 = 1 the first update is sign(0) = 0: one step more keeps the moves odd.
    let c = LionConfig {
        betas: (1.0, 0.0),
        ..cfg(1e-2, 0.0, false)
    };
    Run::new(format!("{c:?}"), reference::lion)
        .steps(STEPS + 1)
        .run(c);
    Run::new("lion chunked", reference::lion)
        .sizes(&[5000, 20000, 3, 16384])
        .max_chunk_bytes(64 * 1024)
        .steps(STEPS)
        .run(cfg(1e-2, 0.1, false));
}

#[test]
fn clips_and_skips_nonfinite() {
    // The sign ignores a positive scale; clipping shows through exp_avg (and through the sign
    // of the interpolation, since exp_avg carries unclipped history).
    for p in [2.0, 1.0, f32::INFINITY] {
        let max = match p {
            2.0 => 20.0,
            1.0 => 1000.0,
            _ => 2.0,
        };
        let out = Run::new(format!("lion clip {p}"), reference::lion)
            .sizes(SIZES)
            .steps(STEPS)
            .grad_scales(&[1.0, 0.01, 3.0])
            .clip(max, p)
            .run(cfg(1e-2, 0.1, false));
        assert!(out.clipped > 0 && out.clipped < STEPS, "norm {p}: {out:?}");
    }
    let out = Run::new("lion skip", reference::lion)
        .sizes(SIZES)
        .steps(STEPS + 2)
        .skip_nonfinite()
        .bad_steps(&[1], f32::NAN, ("t4_4099", 4098))
        .bad_steps(&[3], f32::NEG_INFINITY, ("t0_1", 0))
        .run(cfg(1e-2, 0.0, true));
    assert_eq!(out.applied, STEPS);
}

#[test]
fn parameter_groups() {
    let tensors = [("w1", 300), ("b1", 7), ("w2", 2000), ("b2", 1)];
    let slow = LionConfig {
        betas: (0.5, 0.9),
        ..cfg(1e-3, 0.0, false)
    };
    Run::new("lion groups", reference::lion)
        .tensors(&tensors)
        .steps(STEPS)
        .run_groups(
            vec![
                ParamGroup::matching(|n| n.starts_with('b'), slow),
                ParamGroup::rest(cfg(1e-2, 0.1, false)),
            ],
            |n| n.starts_with('w') as usize,
        );
}

fn hyper(r: wgpu_optim::Result<Lion>, name: &str) {
    match r {
        Err(Error::InvalidHyperparameter { name: n, .. }) => assert_eq!(n, name),
        Err(e) => panic!("{name}: wrong error {e}"),
        Ok(_) => panic!("{name}: accepted"),
    }
}

#[test]
fn bad_hyperparameters_are_typed_errors() {
    let params = Params::zeros(&gpu(), &[("w", 10)]).unwrap();
    let new = |c: LionConfig| Lion::new(&params, c);
    let d = LionConfig::default;
    hyper(new(LionConfig { lr: -1e-4, ..d() }), "lr");
    hyper(
        new(LionConfig {
            lr: f32::NAN,
            ..d()
        }),
        "lr",
    );
    hyper(
        new(LionConfig {
            lr: f32::INFINITY,
            ..d()
        }),
        "lr",
    );
    hyper(
        new(LionConfig {
            betas: (-0.1, 0.99),
            ..d()
        }),
        "betas[0]",
    );
    hyper(
        new(LionConfig {
            betas: (1.01, 0.99),
            ..d()
        }),
        "betas[0]",
    );
    hyper(
        new(LionConfig {
            betas: (0.9, 1.5),
            ..d()
        }),
        "betas[1]",
    );
    hyper(
        new(LionConfig {
            betas: (0.9, f32::NAN),
            ..d()
        }),
        "betas[1]",
    );
    hyper(
        new(LionConfig {
            weight_decay: -0.1,
            ..d()
        }),
        "weight_decay",
    );
    // lion-pytorch's range is [0, 1] for both betas, ends included.
    assert!(new(LionConfig {
        betas: (1.0, 1.0),
        ..d()
    })
    .is_ok());
    assert!(new(LionConfig {
        betas: (0.0, 0.0),
        lr: 0.0,
        ..d()
    })
    .is_ok());
    let mut params = params;
    let mut opt = Lion::new(&params, d()).unwrap();
    assert!(matches!(
        opt.set_lr(-1.0),
        Err(Error::InvalidHyperparameter { name: "lr", .. })
    ));
    assert!(matches!(
        opt.set_group_momentum(0, 2.0),
        Err(Error::InvalidHyperparameter {
            name: "betas[0]",
            ..
        })
    ));
    assert_eq!(opt.lr(), 1e-4);
    assert_eq!(opt.group_momentum(0).unwrap(), Some(0.9));
    let mut c = d();
    assert!(matches!(
        c.set_hyperparameter("eps", 1e-8),
        Err(Error::UnknownHyperparameter { .. })
    ));
    assert!(c.set_hyperparameter("maximize", 0.5).is_err());
    c.set_hyperparameter("betas[1]", 0.98).unwrap();
    c.set_hyperparameter("maximize", 1.0).unwrap();
    assert_eq!((c.betas.1, c.maximize), (0.98, true));
    assert_eq!(opt.name(), "Lion");
    assert_eq!(opt.state_keys(), vec!["exp_avg"]);
    params.write_grad("w", &[1.0; 10]).unwrap();
    opt.step(&mut params).unwrap();
    assert_eq!(params.read("w").unwrap(), vec![-1e-4; 10]);
}

/// Save after 4 steps, resume into a fresh parameter set and optimizer with other options,
/// take 5 more: the result equals the uninterrupted reference run (bit for bit on lavapipe).
#[test]
fn saves_and_resumes() {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-lion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lion.safetensors");
    let a = LionConfig {
        betas: (0.8, 0.95),
        ..cfg(1e-2, 0.1, true)
    };
    let b = cfg(3e-3, 0.0, true);
    let mut h = Run::new("lion resume", reference::lion)
        .sizes(SIZES)
        .steps(STEPS)
        .clip(5.0, 2.0)
        .harness(
            vec![
                ParamGroup::matching(|n| n.starts_with("t0") || n.starts_with("t3"), a.clone()),
                ParamGroup::rest(b.clone()),
            ],
            |n| !(n.starts_with("t0") || n.starts_with("t3")) as usize,
        );
    for _ in 0..4 {
        h.step();
    }
    checkpoint::save(&path, &h.params, &h.opt, Default::default()).unwrap();
    let specs: Vec<(&str, usize)> = SIZES
        .iter()
        .zip(h.params.names())
        .map(|(&n, name)| (name, n))
        .collect();
    let mut params = Params::zeros(&gpu(), &specs).unwrap();
    common::poison_padding(&params);
    let other = cfg(0.5, 0.3, true);
    let mut opt = FusedOptimizer::with_groups(
        &params,
        vec![
            ParamGroup::matching(
                |n| n.starts_with("t0") || n.starts_with("t3"),
                other.clone(),
            ),
            ParamGroup::rest(other),
        ],
    )
    .unwrap();
    checkpoint::load(&path, &mut params, &mut opt).unwrap();
    assert_eq!(opt.step_count(), 4);
    assert_eq!(opt.group_config(0).unwrap(), &a);
    assert_eq!(opt.group_config(1).unwrap(), &b);
    (h.params, h.opt) = (params, opt);
    h.finish();
    std::fs::remove_dir_all(dir).unwrap();
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// lion-pytorch's own trajectories, replayed: 6 cases, tensors of 7, 3 and 70 elements, 12
/// steps. The update is ±lr (after the decay), so a difference would be a flipped sign (an
/// error of 2 lr, far outside the bound) or one rounding of `exp_avg`: within
/// `Bound::TORCH`, as for torch.optim's trajectories (`tests/torch_parity.rs`).
#[test]
fn replays_lion_pytorch_trajectories() {
    let data: Value = serde_json::from_str(include_str!("data/lion_trajectory.json")).unwrap();
    eprintln!(
        "fixtures from torch {} lion-pytorch {}",
        data["torch_version"], data["lion_pytorch_version"]
    );
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    let gpu = gpu();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        assert_eq!(case["optimizer"], "Lion");
        let mut cfg = LionConfig::default();
        for (key, v) in case["config"].as_object().unwrap() {
            match v.as_array() {
                Some(items) => {
                    for (i, x) in items.iter().enumerate() {
                        cfg.set_hyperparameter(&format!("{key}[{i}]"), x.as_f64().unwrap())
                            .unwrap();
                    }
                }
                None => cfg
                    .set_hyperparameter(
                        key,
                        v.as_f64()
                            .or_else(|| v.as_bool().map(|b| b as u8 as f64))
                            .unwrap(),
                    )
                    .unwrap(),
            }
        }
        cfg.validate().unwrap();
        let tensors: Vec<(String, Vec<f32>)> = case["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap().to_string(), floats(&t["init"])))
            .collect();
        let refs: Vec<(&str, &[f32])> = tensors.iter().map(|(n, v)| (n.as_str(), &v[..])).collect();
        let mut params = Params::new(&gpu, &refs).unwrap();
        let mut opt = Lion::new(&params, cfg).unwrap();
        let mut worst = 0.0f32;
        for (k, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            for (n, _) in &tensors {
                params.write_grad(n, &floats(&step["grads"][n])).unwrap();
            }
            opt.step(&mut params).unwrap();
            for (n, _) in &tensors {
                let w = compare(
                    &format!("{name} step {} {n}", k + 1),
                    &params.read(n).unwrap(),
                    &floats(&step["params"][n]),
                    Bound::TORCH,
                );
                worst = worst.max(w);
            }
        }
        for (n, _) in &tensors {
            let state = case["final_state"][n].as_object().unwrap();
            assert_eq!(state.keys().collect::<Vec<_>>(), ["exp_avg"], "{name} {n}");
            let w = compare(
                &format!("{name} {n} exp_avg"),
                &opt.state("exp_avg", n).unwrap(),
                &floats(&state["exp_avg"]),
                Bound::TORCH,
            );
            worst = worst.max(w);
        }
        eprintln!("{name}: worst error {worst:.3} of the tolerance");
    }
}

/// The CPU reference with fused multiply-adds (as ATen's AVX2 kernels that recorded the
/// fixture) reproduces lion-pytorch bit for bit: it follows the same torch ops.
#[test]
fn reference_is_lion_pytorch_bit_for_bit() {
    use ndarray::Array1;
    let data: Value = serde_json::from_str(include_str!("data/lion_trajectory.json")).unwrap();
    eprintln!("recorded with ATen's {} kernels", data["cpu_capability"]);
    reference::set_fused_multiply_add(true);
    for case in data["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let c = &case["config"];
        let betas = floats(&c["betas"]);
        let cfg = LionConfig {
            lr: c["lr"].as_f64().unwrap() as f32,
            betas: (betas[0], betas[1]),
            weight_decay: c["weight_decay"].as_f64().unwrap() as f32,
            maximize: c["maximize"].as_bool().unwrap(),
        };
        for t in case["tensors"].as_array().unwrap() {
            let n = t["name"].as_str().unwrap();
            let mut p = Array1::from(floats(&t["init"]));
            let mut state = reference::State::new(&cfg, p.len());
            for (k, step) in case["steps"].as_array().unwrap().iter().enumerate() {
                reference::lion(
                    &cfg,
                    &mut p,
                    &Array1::from(floats(&step["grads"][n])),
                    &mut state,
                );
                let what = format!("{name} step {} {n}", k + 1);
                compare(
                    &what,
                    p.as_slice().unwrap(),
                    &floats(&step["params"][n]),
                    Bound::Bits,
                );
            }
            compare(
                &format!("{name} {n} exp_avg"),
                state.get("exp_avg").unwrap().as_slice().unwrap(),
                &floats(&case["final_state"][n]["exp_avg"]),
                Bound::Bits,
            );
        }
    }
}
