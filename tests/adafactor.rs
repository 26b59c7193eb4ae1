//! Adafactor: the factored second moment and the two-pass update on the GPU against the CPU
//! reference (`reference::adafactor`, which adds up in the GPU's order) bit for bit on
//! lavapipe, with every option, rank 1 to 4 tensors, tensors split over chunks, groups,
//! clipping, skipping, L1, the loss scaler and 16-bit parameters; PyTorch's trajectories
//! (`python3 tools/torch_adafactor_trajectory.py`); and bad input.

mod common;
use common::{compare, gpu, json_floats, Bound, Run};
use serde_json::Value;
use wgpu_optim::{
    reference, Adafactor, AdafactorConfig, DType, Error, Optimizer, OptimizerConfig, ParamGroup,
    Params, Precision, ScalerConfig, StateFormat,
};

const SHAPES: &[(&str, &[usize])] = &[
    ("w", &[6, 7]),
    ("b", &[3]),
    ("k", &[2, 3, 5]),
    ("r", &[1, 9]),
    ("c", &[9, 1]),
    ("e", &[70]),
    ("m", &[33, 130]),
    ("q", &[2, 2, 3, 4]),
];

/// Tensors larger than the 64 KiB chunks below: their rows and columns span pieces.
const SPLIT: &[(&str, &[usize])] = &[
    ("w", &[6, 7]),
    ("big", &[300, 257]),
    ("tall", &[40_000, 1]),
    ("v", &[20_000]),
    ("batch", &[3, 70, 90]),
];

fn options() -> Vec<(&'static str, AdafactorConfig)> {
    let d = AdafactorConfig::default();
    vec![
        ("default", d.clone()),
        (
            "decay",
            AdafactorConfig {
                lr: 0.05,
                weight_decay: 0.1,
                ..d.clone()
            },
        ),
        (
            "maximize",
            AdafactorConfig {
                maximize: true,
                ..d.clone()
            },
        ),
        (
            "eps d",
            AdafactorConfig {
                lr: 0.03,
                eps: (Some(1e-4), 1e-3),
                d: 2.0,
                ..d.clone()
            },
        ),
        (
            "beta2_decay",
            AdafactorConfig {
                lr: 0.2,
                beta2_decay: -0.5,
                ..d.clone()
            },
        ),
        (
            "no decay of beta2",
            AdafactorConfig {
                beta2_decay: 0.0,
                eps: (Some(0.0), 0.0),
                ..d
            },
        ),
    ]
}

#[test]
fn matches_the_reference() {
    for (name, cfg) in options() {
        Run::new(format!("adafactor {name}"), reference::adafactor)
            .shaped(SHAPES)
            .steps(6)
            .run(cfg);
    }
}

#[test]
fn matches_the_reference_over_chunks_groups_and_options() {
    let decay = AdafactorConfig {
        lr: 0.05,
        weight_decay: 0.1,
        ..Default::default()
    };
    Run::new("adafactor split over chunks", reference::adafactor)
        .shaped(SPLIT)
        .max_chunk_bytes(64 << 10)
        .run(decay.clone());
    Run::new("adafactor clip skip l1", reference::adafactor)
        .shaped(SHAPES)
        .clip(0.5, 2.0)
        .bad_steps(&[2], f32::NAN, ("m", 5))
        .l1(&[0.01])
        .run(decay.clone());
    Run::new("adafactor skip nonfinite", reference::adafactor)
        .shaped(SHAPES)
        .skip_nonfinite()
        .bad_steps(&[1, 3], f32::INFINITY, ("w", 3))
        .run(decay.clone());
    Run::new("adafactor scaler", reference::adafactor)
        .shaped(SPLIT)
        .max_chunk_bytes(64 << 10)
        .scaler(ScalerConfig {
            init_scale: 1024.0,
            growth_interval: 2,
            ..Default::default()
        })
        .bad_steps(&[3], f32::INFINITY, ("big", 7))
        .run(decay.clone());
    Run::new("adafactor bf16 params", reference::adafactor)
        .shaped(SHAPES)
        .dtypes(&[DType::Bf16, DType::F32, DType::F16])
        .precision(Precision {
            state: DType::F32,
            master_weights: true,
            stochastic_rounding: true,
        })
        .run(decay.clone());
    Run::new(
        "adafactor bf16 without master weights",
        reference::adafactor,
    )
    .shaped(SHAPES)
    .dtypes(&[DType::Bf16])
    .precision(Precision {
        state: DType::Bf16,
        master_weights: false,
        stochastic_rounding: true,
    })
    .run(decay.clone());
    let other = AdafactorConfig {
        lr: 0.2,
        beta2_decay: -0.5,
        d: 2.0,
        ..Default::default()
    };
    Run::new("adafactor groups", reference::adafactor)
        .shaped(SPLIT)
        .max_chunk_bytes(64 << 10)
        .run_groups(
            vec![
                ParamGroup::new(["big", "v"], decay),
                ParamGroup::rest(other),
            ],
            |n| !["big", "v"].contains(&n) as usize,
        );
}

/// The state has torch's keys and shapes: a matrix keeps `row_var` and `col_var` (the means
/// of `g * g` over its rows and columns after the first step, whose weight is 1), a vector
/// `variance` (`g * g`); asking for the other kind is a typed error.
#[test]
fn state_is_factored_with_torchs_keys() {
    let gpu = gpu();
    let mut params = Params::builder(&gpu)
        .tensor("m", &[2, 3], DType::F32)
        .tensor("v", &[4], DType::F32)
        .build()
        .unwrap();
    params.write("m", &[1.0; 6]).unwrap();
    params.write("v", &[1.0; 4]).unwrap();
    params
        .write_grad("m", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .unwrap();
    params.write_grad("v", &[1.0, -2.0, 0.5, 0.0]).unwrap();
    let mut opt = Adafactor::new(&params, AdafactorConfig::default()).unwrap();
    opt.step(&mut params).unwrap();
    assert_eq!(opt.state("row_var", "m").unwrap(), [14.0 / 3.0, 77.0 / 3.0]);
    assert_eq!(opt.state("col_var", "m").unwrap(), [8.5, 14.5, 22.5]);
    assert_eq!(opt.state("variance", "v").unwrap(), [1.0, 4.0, 0.25, 0.0]);
    for (k, t) in [("variance", "m"), ("row_var", "v"), ("exp_avg", "m")] {
        let e = opt.state(k, t).unwrap_err();
        assert!(matches!(e, Error::UnknownState { .. }), "{k} {t}: {e}");
    }
    // Factored state is f32 and small: rows + cols per matrix, one per vector element.
    assert_eq!(opt.state_memory_bytes(), 4 * (2 + 3 + 4));
}

/// torch.optim.Adafactor: 8 steps on tensors of rank 1 to 3, replayed here.
#[test]
fn matches_torch_trajectories() {
    let gpu = gpu();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/adafactor_trajectory.json"
    );
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in data["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut cfg = AdafactorConfig::default();
        for (k, v) in case["options"].as_object().unwrap() {
            match v.as_array() {
                Some(list) => {
                    for (i, x) in list.iter().enumerate() {
                        cfg.set_hyperparameter(&format!("{k}[{i}]"), x.as_f64().unwrap())
                            .unwrap();
                    }
                }
                None => cfg.set_hyperparameter(k, v.as_f64().unwrap()).unwrap(),
            }
        }
        let mut builder = Params::builder(&gpu);
        let shapes = case["shapes"].as_object().unwrap();
        for (n, s) in shapes {
            let s: Vec<usize> = s
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            builder = builder.tensor(n, &s, DType::F32);
        }
        let mut params = builder.build().unwrap();
        for (n, v) in case["init"].as_object().unwrap() {
            params.write(n, &json_floats(v)).unwrap();
        }
        let mut opt = Adafactor::new(&params, cfg).unwrap();
        for step in case["grads"].as_array().unwrap() {
            for (n, g) in step.as_object().unwrap() {
                params.write_grad(n, &json_floats(g)).unwrap();
            }
            opt.step(&mut params).unwrap();
        }
        let mut worst = 0.0f32;
        for n in shapes.keys() {
            let w = compare(
                &format!("{name} {n}"),
                &params.read(n).unwrap(),
                &json_floats(&case["params"][n]),
                Bound::TORCH,
            );
            worst = worst.max(w);
            for (k, want) in case["state"][n].as_object().unwrap() {
                let w = compare(
                    &format!("{name} {n} {k}"),
                    &opt.state(k, n).unwrap(),
                    &json_floats(want),
                    Bound::TORCH,
                );
                worst = worst.max(w);
            }
        }
        eprintln!("{name}: worst error {worst:.3} of the tolerance");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let gpu = gpu();
    let params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])]).unwrap();
    let d = AdafactorConfig::default();
    for cfg in [
        AdafactorConfig {
            lr: -1.0,
            ..d.clone()
        },
        AdafactorConfig {
            beta2_decay: 0.5,
            ..d.clone()
        },
        AdafactorConfig {
            eps: (Some(-1e-3), 1e-3),
            ..d.clone()
        },
        AdafactorConfig {
            eps: (None, -1.0),
            ..d.clone()
        },
        AdafactorConfig {
            d: 0.5,
            ..d.clone()
        },
        AdafactorConfig {
            weight_decay: -0.1,
            ..d.clone()
        },
        AdafactorConfig {
            lr: f32::NAN,
            ..d.clone()
        },
    ] {
        let e = Adafactor::new(&params, cfg.clone()).unwrap_err();
        assert!(
            matches!(e, Error::InvalidHyperparameter { .. }),
            "{cfg:?}: {e}"
        );
        // The same through a setter: refused, the old configuration kept.
        let mut opt = Adafactor::new(&params, d.clone()).unwrap();
        let e = opt.set_group_config(0, cfg.clone()).unwrap_err();
        assert!(
            matches!(e, Error::InvalidHyperparameter { .. }),
            "{cfg:?}: {e}"
        );
        assert_eq!(opt.group_config(0).unwrap(), &d);
    }
    let mut opt = Adafactor::new(&params, d.clone()).unwrap();
    assert!(opt.set_lr(-0.1).is_err());
    assert_eq!(opt.lr(), d.lr);
    // A factored second moment has no 8-bit form.
    let e = opt
        .set_state_format(StateFormat::Blockwise8 { min_size: 4096 })
        .unwrap_err();
    assert!(matches!(e, Error::InvalidOptions(_)), "{e}");
    assert_eq!(opt.state_format(), StateFormat::Dense);
}

/// `eps[0]` is PyTorch's `None` until set: read as f32's machine epsilon (what the update
/// uses), set to a value of its own; the other options by name as every optimizer's.
#[test]
fn hyperparameters_by_name_with_eps0_unset() {
    let mut cfg = AdafactorConfig::default();
    assert_eq!(cfg.eps.0, None);
    let read = |cfg: &AdafactorConfig, name: &str| {
        cfg.hyperparameters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    };
    // Widened as every option is (1.1920929e-7), rounding back to the f32 exactly.
    assert_eq!(read(&cfg, "eps[0]").map(|v| v as f32), Some(f32::EPSILON));
    assert_eq!(read(&cfg, "eps[1]"), Some(1e-3));
    cfg.set_hyperparameter("eps[0]", 1e-30).unwrap();
    assert_eq!(cfg.eps.0, Some(1e-30));
    assert_eq!(read(&cfg, "eps[0]"), Some(1e-30));
    cfg.set_hyperparameter("maximize", 1.0).unwrap();
    assert!(cfg.maximize);
    let before = cfg.clone();
    assert!(cfg.set_hyperparameter("maximize", 0.5).is_err());
    assert!(matches!(
        cfg.set_hyperparameter("betas[0]", 0.9),
        Err(Error::UnknownHyperparameter { .. })
    ));
    assert_eq!(cfg, before);
}
