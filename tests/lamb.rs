//! LAMB: the two-pass kernel with its per-tensor norms reduced on the GPU, against the CPU
//! reference (`reference::lamb`, whose sums follow the GPU's order: `reference::tensor_sum`)
//! bit for bit on lavapipe, with every option, tensors split over chunks, groups, clipping,
//! skipping, L1 and 16-bit parameters; the reduction alone; optax's trajectories
//! (`python3 tools/optax_lamb_trajectory.py`); and bad input.

mod common;
use common::{compare, gpu, json_floats, replay_trajectory, Bound, Run};
use serde_json::Value;
use wgpu_optim::{
    reference, DType, Error, Lamb, LambConfig, Optimizer, ParamGroup, Params, Precision,
};

#[test]
fn matches_the_reference() {
    let decay = LambConfig {
        lr: 1e-2,
        weight_decay: 0.01,
        ..Default::default()
    };
    Run::new("lamb default", reference::lamb).run(LambConfig::default());
    Run::new("lamb decay split over chunks", reference::lamb)
        .sizes(&[1, 63, 64, 65, 1000, 5000, 70_000])
        .max_chunk_bytes(64 << 10)
        .run(decay.clone());
    Run::new("lamb clip skip l1", reference::lamb)
        .sizes(&[3, 65, 1000, 4099])
        .clip(0.5, 2.0)
        .bad_steps(&[2], f32::NAN, ("t2_1000", 5))
        .l1(&[0.01])
        .run(decay.clone());
    Run::new("lamb bf16 state", reference::lamb)
        .sizes(&[3, 65, 1000, 4099])
        .dtypes(&[DType::Bf16, DType::F32])
        .precision(Precision {
            state: DType::Bf16,
            master_weights: false,
            stochastic_rounding: true,
        })
        .run(decay.clone());
    Run::new("lamb bf16 master", reference::lamb)
        .sizes(&[3, 65, 1000, 4099])
        .dtypes(&[DType::Bf16, DType::F32, DType::F16])
        .precision(Precision {
            state: DType::F32,
            master_weights: true,
            stochastic_rounding: true,
        })
        .run(decay.clone());
    let tensors: Vec<(String, usize)> = [5usize, 300, 1000, 64, 4099]
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("t{i}"), n))
        .collect();
    let other = LambConfig {
        lr: 3e-3,
        betas: (0.8, 0.99),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    Run::new("lamb groups", reference::lamb)
        .tensors(&tensors)
        .max_chunk_bytes(8192)
        .run_groups(
            vec![
                ParamGroup::new(["t1", "t3"], decay),
                ParamGroup::rest(other),
            ],
            |n| !["t1", "t3"].contains(&n) as usize,
        );
}

/// The trust ratio really is per tensor: two tensors with the same gradients and parameters
/// of different scales move by the same relative amount, and a tensor of zeros (norm 0) takes
/// the plain Adam step (ratio 1).
#[test]
fn the_trust_ratio_is_per_tensor() {
    let gpu = gpu();
    let n = 500;
    let small: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let large: Vec<f32> = small.iter().map(|x| x * 64.0).collect();
    let mut params = Params::new(
        &gpu,
        &[
            ("small", &small[..]),
            ("large", &large[..]),
            ("zero", &vec![0.0; n][..]),
        ],
    )
    .unwrap();
    let g: Vec<f32> = (0..n).map(|i| ((i % 5) as f32 - 2.0) * 0.1).collect();
    for t in ["small", "large", "zero"] {
        params.write_grad(t, &g).unwrap();
    }
    let mut opt = Lamb::new(
        &params,
        LambConfig {
            lr: 0.1,
            ..Default::default()
        },
    )
    .unwrap();
    opt.step(&mut params).unwrap();
    let (s, l, z) = (
        params.read("small").unwrap(),
        params.read("large").unwrap(),
        params.read("zero").unwrap(),
    );
    for i in 0..n {
        // Same direction, steps in proportion to the parameter norm (64x).
        let (ds, dl) = (s[i] - small[i], l[i] - large[i]);
        assert!(
            (dl - 64.0 * ds).abs() <= 1e-4 * dl.abs().max(1e-6),
            "{i}: {ds} {dl}"
        );
        // Adam's first step is -lr * sign(g) (m_hat / sqrt(v_hat) = +-1), ratio 1 at zero.
        let want = if g[i] == 0.0 {
            0.0
        } else {
            -0.1 * g[i].signum()
        };
        assert!((z[i] - want).abs() <= 1e-5, "{i}: {} vs {want}", z[i]);
    }
}

/// The GPU's order of the per-tensor sums, mirrored by `reference::tensor_sum`: exact for
/// integers, and within f32 rounding of an f64 sum for random values.
#[test]
fn tensor_sums_follow_the_reference_order() {
    let v: Vec<f32> = (0..100_003)
        .map(|i| ((i * 7919) % 1000) as f32 / 997.0)
        .collect();
    let want: f64 = v.iter().map(|&x| x as f64).sum();
    let got = reference::tensor_sum(&v) as f64;
    assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
    let ints: Vec<f32> = (0..5000).map(|i| (i % 13) as f32).collect();
    let exact: f32 = ints.iter().sum();
    assert_eq!(reference::tensor_sum(&ints), exact);
}

/// optax.lamb: 20 steps on two tensors, replayed here.
#[test]
fn matches_optax_trajectories() {
    let gpu = gpu();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/optax_lamb_trajectory.json"
    );
    let data: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in data["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (names, params, _) = replay_trajectory(&gpu, case, LambConfig::default());
        let mut worst = 0.0f32;
        for n in &names {
            let w = compare(
                &format!("{name} {n}"),
                &params.read(n).unwrap(),
                &json_floats(&case["params"][n]),
                Bound::TORCH,
            );
            worst = worst.max(w);
        }
        eprintln!("{name}: worst error {worst:.3} of the tolerance");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let gpu = gpu();
    let params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])]).unwrap();
    for cfg in [
        LambConfig {
            lr: -1.0,
            ..Default::default()
        },
        LambConfig {
            betas: (1.0, 0.999),
            ..Default::default()
        },
        LambConfig {
            eps: -1e-6,
            ..Default::default()
        },
    ] {
        let e = Lamb::new(&params, cfg).unwrap_err();
        assert!(matches!(e, Error::InvalidHyperparameter { .. }), "{e}");
    }
}
