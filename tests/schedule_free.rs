//! Schedule-Free AdamW: the kernel against the CPU reference (`reference::schedule_free_adamw`)
//! with every option, groups, clipping, skipping and 16-bit storage; the train/eval switch
//! against `reference::schedule_free_switch`; trajectories of facebookresearch/schedule_free's
//! `AdamWScheduleFree` (`python3 tools/schedulefree_trajectory.py`); and bad input.

mod common;
use common::{compare, gpu, json_floats, replay_trajectory, Bound, Run};
use ndarray::Array1;
use serde_json::Value;
use wgpu_optim::checkpoint;
use wgpu_optim::{
    reference, DType, Error, Optimizer, OptimizerConfig, ParamGroup, Params, Precision,
    ScheduleFreeAdamW, ScheduleFreeAdamWConfig,
};

const SIZES: &[usize] = &[1, 3, 5, 64, 65, 1000, 4099];

#[test]
fn matches_the_reference_with_every_option() {
    let cases = [
        ("default", ScheduleFreeAdamWConfig::default()),
        (
            "warmup_decay",
            ScheduleFreeAdamWConfig {
                lr: 0.02,
                betas: (0.8, 0.99),
                eps: 1e-6,
                weight_decay: 0.05,
                warmup_steps: 4,
                ..Default::default()
            },
        ),
        (
            "polynomial",
            ScheduleFreeAdamWConfig {
                lr: 0.01,
                warmup_steps: 2,
                r: 1.0,
                weight_lr_power: 1.0,
                ..Default::default()
            },
        ),
    ];
    for (name, cfg) in cases {
        // `z` is poisoned: the first step must take it from the parameter.
        Run::new(
            format!("schedule-free {name}"),
            reference::schedule_free_adamw,
        )
        .sizes(SIZES)
        .poison_state("z")
        .run(cfg.clone());
        Run::new(
            format!("schedule-free {name} clip skip"),
            reference::schedule_free_adamw,
        )
        .sizes(SIZES)
        .max_chunk_bytes(8192)
        .clip(1.0, 2.0)
        .bad_steps(&[0, 4], f32::INFINITY, ("t5_1000", 3))
        .run(cfg.clone());
        Run::new(
            format!("schedule-free {name} bf16 master"),
            reference::schedule_free_adamw,
        )
        .sizes(SIZES)
        .dtypes(&[DType::Bf16, DType::F32])
        .precision(Precision {
            state: DType::Bf16,
            master_weights: true,
            stochastic_rounding: true,
        })
        .run(cfg);
    }
    let tensors: Vec<(String, usize)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("t{i}"), n))
        .collect();
    let a = ScheduleFreeAdamWConfig {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    };
    let b = ScheduleFreeAdamWConfig {
        lr: 0.003,
        betas: (0.95, 0.99),
        warmup_steps: 3,
        ..Default::default()
    };
    Run::new("schedule-free groups", reference::schedule_free_adamw)
        .tensors(&tensors)
        .l1(&[0.01, 0.0])
        .run_groups(
            vec![ParamGroup::new(["t1", "t3"], a), ParamGroup::rest(b)],
            |n| !["t1", "t3"].contains(&n) as usize,
        );
}

/// `eval()` puts the average in the parameters and `train()` takes it back, each exactly as
/// `lerp(p, z, w)` with the package's weights; a step in eval mode is refused; before the first
/// step both are no-ops; the mode is a hyperparameter, per group.
#[test]
fn train_and_eval_switch_the_sequences() {
    let gpu = gpu();
    // Bit for bit on lavapipe (the reference rounds its multiply-adds as the adapter does).
    let bound = common::reference_bound();
    let n = 1000;
    let init: Vec<f32> = (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let mut params = Params::new(&gpu, &[("w", &init[..])]).unwrap();
    let cfg = ScheduleFreeAdamWConfig {
        lr: 0.05,
        betas: (0.8, 0.999),
        ..Default::default()
    };
    let mut opt = ScheduleFreeAdamW::new(&params, cfg.clone()).unwrap();
    assert!(opt.is_train_mode());
    // Before any step: nothing moves.
    opt.eval(&params).unwrap();
    assert!(!opt.is_train_mode());
    assert_eq!(params.read("w").unwrap(), init);
    let e = opt.step(&mut params).unwrap_err();
    assert!(matches!(e, Error::InvalidOptions(_)), "{e}");
    assert_eq!(opt.step_count(), 0);
    opt.train(&params).unwrap();
    assert_eq!(params.read("w").unwrap(), init);

    // Steps, then the switches, against the reference.
    let mut p = Array1::from(init.clone());
    let mut state = reference::State::new(&cfg, n);
    for s in 0..5 {
        let g: Vec<f32> = (0..n)
            .map(|i| ((i + 7 * s) % 13) as f32 / 6.0 - 1.0)
            .collect();
        params.write_grad("w", &g).unwrap();
        opt.step(&mut params).unwrap();
        reference::schedule_free_adamw(&cfg, &mut p, &Array1::from(g), &mut state);
    }
    let check = |what: &str, got: Vec<f32>, want: &Array1<f32>| {
        compare(what, &got, want.as_slice().unwrap(), bound);
    };
    check("y after 5 steps", params.read("w").unwrap(), &p);
    let z = Array1::from(opt.state("z", "w").unwrap());
    check("z after 5 steps", z.to_vec(), state.get("z").unwrap());
    // The switches, from the GPU's own y and z.
    let mut p = Array1::from(params.read("w").unwrap());
    opt.eval(&params).unwrap();
    opt.eval(&params).unwrap(); // a second eval changes nothing
    reference::schedule_free_switch(&mut p, &z, (1.0 - 1.0 / 0.8f64) as f32);
    check("x after eval", params.read("w").unwrap(), &p);
    assert!(!opt.group_config(0).unwrap().train_mode);
    assert_eq!(
        opt.group_config(0).unwrap().hyperparameter("train_mode"),
        Some(0.0)
    );
    let before = params.read("w").unwrap();
    assert!(opt.step(&mut params).is_err());
    assert_eq!(params.read("w").unwrap(), before);
    // Saved in eval mode, the mode comes back with the checkpoint.
    let dir = std::env::temp_dir().join(format!("wgpu-optim-sf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sf.safetensors");
    checkpoint::save(&path, &params, &opt, Default::default()).unwrap();
    let mut params2 = Params::new(&gpu, &[("w", &init[..])]).unwrap();
    let mut opt2 = ScheduleFreeAdamW::new(&params2, cfg.clone()).unwrap();
    checkpoint::load(&path, &mut params2, &mut opt2).unwrap();
    assert!(!opt2.is_train_mode());
    opt2.train(&params2).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    opt.train(&params).unwrap();
    assert_eq!(params2.read("w").unwrap(), params.read("w").unwrap());
    opt.eval(&params).unwrap();
    opt.train(&params).unwrap();
    // train, eval, train
    reference::schedule_free_switch(&mut p, &z, (1.0 - 0.8f64) as f32);
    reference::schedule_free_switch(&mut p, &z, (1.0 - 1.0 / 0.8f64) as f32);
    reference::schedule_free_switch(&mut p, &z, (1.0 - 0.8f64) as f32);
    check("y after train", params.read("w").unwrap(), &p);
    opt.step(&mut params).unwrap();
    assert_eq!(opt.step_count(), 6);
}

/// facebookresearch/schedule_free's `AdamWScheduleFree`: 20 steps and `eval()`, replayed here.
#[test]
fn matches_schedulefree_trajectories() {
    let gpu = gpu();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/schedulefree_trajectory.json"
    );
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in data["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (names, params, mut opt) =
            replay_trajectory(&gpu, case, ScheduleFreeAdamWConfig::default());
        let mut worst = 0.0f32;
        for n in &names {
            let w = compare(
                &format!("{name} {n} y"),
                &params.read(n).unwrap(),
                &json_floats(&case["y"][n]),
                Bound::TORCH,
            );
            worst = worst.max(w);
            for key in ["z", "exp_avg_sq"] {
                let w = compare(
                    &format!("{name} {n} {key}"),
                    &opt.state(key, n).unwrap(),
                    &json_floats(&case["state"][n][key]),
                    Bound::TORCH,
                );
                worst = worst.max(w);
            }
        }
        opt.eval(&params).unwrap();
        for n in &names {
            let w = compare(
                &format!("{name} {n} x"),
                &params.read(n).unwrap(),
                &json_floats(&case["x"][n]),
                Bound::TORCH,
            );
            worst = worst.max(w);
        }
        eprintln!("{name}: worst error {worst:.3} of the tolerance");
    }
}

/// Bad options are typed errors that change nothing.
#[test]
fn bad_options_are_typed_errors() {
    let gpu = gpu();
    let params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])]).unwrap();
    let bad = [
        ScheduleFreeAdamWConfig {
            lr: -1.0,
            ..Default::default()
        },
        ScheduleFreeAdamWConfig {
            betas: (0.0, 0.999),
            ..Default::default()
        },
        ScheduleFreeAdamWConfig {
            betas: (0.9, 1.0),
            ..Default::default()
        },
        ScheduleFreeAdamWConfig {
            r: -0.5,
            ..Default::default()
        },
        ScheduleFreeAdamWConfig {
            r: 16.5,
            ..Default::default()
        },
        ScheduleFreeAdamWConfig {
            weight_lr_power: f32::NAN,
            ..Default::default()
        },
    ];
    for cfg in bad {
        let e = ScheduleFreeAdamW::new(&params, cfg.clone()).unwrap_err();
        assert!(
            matches!(e, Error::InvalidHyperparameter { .. }),
            "{cfg:?}: {e}"
        );
    }
    let mut cfg = ScheduleFreeAdamWConfig::default();
    for v in [-1.0, 2.5, f64::NAN] {
        assert!(cfg.set_hyperparameter("warmup_steps", v).is_err());
    }
    assert!(cfg.set_hyperparameter("train_mode", 0.5).is_err());
    assert!(cfg.set_hyperparameter("momentum", 0.9).is_err());
    assert_eq!(cfg, ScheduleFreeAdamWConfig::default());
    cfg.set_hyperparameter("warmup_steps", 100.0).unwrap();
    assert_eq!(cfg.warmup_steps, 100);
}
