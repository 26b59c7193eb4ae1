//! `wgpu_optim::init` on a real adapter: every initialiser's distribution (mean, variance,
//! bounds) on large tensors of every dtype, fans and gains against torch's formulas,
//! determinism, and that a piece split over chunks draws what one piece draws.

mod common;
use common::gpu;
use wgpu_optim::init::{self, FanMode, Kaiming, Nonlinearity};
use wgpu_optim::{DType, Error, Params};

fn stats(v: &[f32]) -> (f64, f64, f32, f32) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (mean, var, lo, hi)
}

/// A `[1024, 1024]` (2^20 elements) tensor of `dtype` (fan in = fan out = 1024), split over chunks.
fn square(dtype: DType) -> Params {
    Params::builder(&gpu())
        .tensor("w", &[1024, 1024], dtype)
        .tensor("b", &[7], DType::F32)
        .max_chunk_bytes(1 << 20)
        .build()
        .unwrap()
}

/// Mean within 5 standard errors, variance within 1%.
fn assert_moments(what: &str, v: &[f32], mean: f64, var: f64) {
    let (m, s2, _, _) = stats(v);
    let se = (var / v.len() as f64).sqrt();
    assert!(
        (m - mean).abs() < 5.0 * se + 1e-9,
        "{what}: mean {m} vs {mean}"
    );
    assert!(
        (s2 / var - 1.0).abs() < 0.01,
        "{what}: variance {s2} vs {var}"
    );
}

#[test]
fn distributions_in_every_dtype() {
    for dtype in DType::ALL {
        let mut p = square(dtype);
        let what = |s: &str| format!("{s} {dtype}");
        init::uniform(&mut p, "w", -2.0, 3.0, 1).unwrap();
        let v = p.read("w").unwrap();
        let (_, _, lo, hi) = stats(&v);
        assert!(lo >= -2.0 && hi <= 3.0, "{}: [{lo}, {hi}]", what("uniform"));
        assert_moments(&what("uniform"), &v, 0.5, 25.0 / 12.0);

        init::normal(&mut p, "w", 1.5, 0.5, 2).unwrap();
        assert_moments(&what("normal"), &p.read("w").unwrap(), 1.5, 0.25);

        // trunc_normal_ to [-1, 2] around 0 with std 1: torch's truncated moments.
        init::trunc_normal(&mut p, "w", 0.0, 1.0, -1.0, 2.0, 3).unwrap();
        let v = p.read("w").unwrap();
        let (_, _, lo, hi) = stats(&v);
        assert!(
            lo >= -1.0 && hi <= 2.0,
            "{}: [{lo}, {hi}]",
            what("trunc_normal")
        );
        let (alpha, beta) = (-1.0f64, 2.0f64);
        let phi = |x: f64| (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let z = 0.818_594_614_2; // Φ(2) - Φ(-1)
        let mean = (phi(alpha) - phi(beta)) / z;
        let var = 1.0 + (alpha * phi(alpha) - beta * phi(beta)) / z - mean * mean;
        assert_moments(&what("trunc_normal"), &v, mean, var);

        init::kaiming_uniform(&mut p, "w", 4).unwrap();
        let v = p.read("w").unwrap();
        let bound = (6.0f64 / 1024.0).sqrt();
        let (_, _, lo, hi) = stats(&v);
        assert!(lo as f64 >= -bound * 1.004 && hi as f64 <= bound * 1.004);
        assert_moments(&what("kaiming_uniform"), &v, 0.0, bound * bound / 3.0);

        init::kaiming_normal(&mut p, "w", 5).unwrap();
        assert_moments(
            &what("kaiming_normal"),
            &p.read("w").unwrap(),
            0.0,
            2.0 / 1024.0,
        );

        init::xavier_uniform(&mut p, "w", 1.0, 6).unwrap();
        assert_moments(
            &what("xavier_uniform"),
            &p.read("w").unwrap(),
            0.0,
            2.0 / 2048.0,
        );

        init::xavier_normal(&mut p, "w", 5.0 / 3.0, 7).unwrap();
        let tanh = 25.0 / 9.0 * 2.0 / 2048.0;
        assert_moments(&what("xavier_normal"), &p.read("w").unwrap(), 0.0, tanh);

        init::ones(&mut p, "w").unwrap();
        assert!(p.read("w").unwrap().iter().all(|&x| x == 1.0));
        init::constant(&mut p, "w", 0.3).unwrap();
        assert!(p.read("w").unwrap().iter().all(|&x| x == dtype.round(0.3)));
        init::zeros(&mut p, "w").unwrap();
        assert!(p.read("w").unwrap().iter().all(|&x| x == 0.0));
        // The other tensor was never touched.
        assert_eq!(p.read("b").unwrap(), vec![0.0; 7]);
    }
}

#[test]
fn values_are_stored_in_the_dtype_and_deterministic() {
    let mut a = square(DType::Bf16);
    init::normal(&mut a, "w", 0.0, 1.0, 42).unwrap();
    let va = a.read("w").unwrap();
    assert!(va.iter().all(|&x| DType::Bf16.round(x) == x));
    // Same seed: the same bits, also in an arena packed differently (one chunk).
    let mut b = Params::builder(&gpu())
        .tensor("x", &[5], DType::Bf16)
        .tensor("w", &[1024, 1024], DType::Bf16)
        .build()
        .unwrap();
    init::normal(&mut b, "w", 0.0, 1.0, 42).unwrap();
    assert_eq!(b.read("w").unwrap(), va);
    init::normal(&mut b, "w", 0.0, 1.0, 43).unwrap();
    assert_ne!(b.read("w").unwrap(), va);
    // An f32 draw rounds to the bf16 one.
    let mut c = square(DType::F32);
    init::normal(&mut c, "w", 0.0, 1.0, 42).unwrap();
    let rounded: Vec<f32> = c
        .read("w")
        .unwrap()
        .iter()
        .map(|&x| DType::Bf16.round(x))
        .collect();
    assert_eq!(rounded, va);
}

#[test]
fn fans_and_gains_follow_torch() {
    // torch.nn.init._calculate_fan_in_and_fan_out and calculate_gain.
    assert_eq!(
        init::fan_in_and_fan_out("w", &[256, 784]).unwrap(),
        (784, 256)
    );
    assert_eq!(
        init::fan_in_and_fan_out("c", &[16, 3, 5, 5]).unwrap(),
        (75, 400)
    );
    assert_eq!(
        init::fan_in_and_fan_out("c3", &[8, 4, 2, 3, 5]).unwrap(),
        (120, 240)
    );
    assert!(matches!(
        init::fan_in_and_fan_out("b", &[3]),
        Err(Error::InvalidShape { .. })
    ));
    // Fans that overflow usize: in the receptive field, or in `in` / `out` times it.
    for shape in [
        &[2, usize::MAX, 2][..],
        &[usize::MAX, 1, 2],
        &[1, 1, usize::MAX, 3],
    ] {
        match init::fan_in_and_fan_out("w", shape) {
            Err(Error::InvalidShape { name, shape: s, .. }) => {
                assert_eq!((name.as_str(), &s[..]), ("w", shape))
            }
            other => panic!("{shape:?}: {other:?}"),
        }
    }
    assert_eq!(
        init::fan_in_and_fan_out("w", &[1, usize::MAX]).unwrap(),
        (usize::MAX, 1)
    );
    assert_eq!(init::calculate_gain(Nonlinearity::Linear, None), 1.0);
    assert_eq!(init::calculate_gain(Nonlinearity::Sigmoid, None), 1.0);
    assert_eq!(init::calculate_gain(Nonlinearity::Tanh, None), 5.0 / 3.0);
    assert_eq!(init::calculate_gain(Nonlinearity::Relu, None), 2f64.sqrt());
    assert_eq!(init::calculate_gain(Nonlinearity::Selu, None), 0.75);
    assert_eq!(
        init::calculate_gain(Nonlinearity::LeakyRelu, None),
        (2.0f64 / (1.0 + 0.01 * 0.01)).sqrt()
    );
    // nn.Linear's reset_parameters: kaiming_uniform_(w, a=sqrt(5)) -> bound 1/sqrt(fan_in).
    let mut p = Params::builder(&gpu())
        .tensor("w", &[64, 400], DType::F32)
        .tensor("b", &[64], DType::F32)
        .build()
        .unwrap();
    let linear = Kaiming {
        a: 5f64.sqrt(),
        ..Kaiming::default()
    };
    init::kaiming_uniform_with(&mut p, "w", linear, 9).unwrap();
    let v = p.read("w").unwrap();
    let bound = 1.0 / 20.0;
    assert!(v.iter().all(|&x| x.abs() <= bound));
    assert!(v.iter().any(|&x| x.abs() > 0.99 * bound));
    // Fan out: std sqrt(2 / 64).
    let fan_out = Kaiming {
        mode: FanMode::FanOut,
        nonlinearity: Nonlinearity::Relu,
        ..Kaiming::default()
    };
    init::kaiming_normal_with(&mut p, "w", fan_out, 10).unwrap();
    let (_, var, _, _) = stats(&p.read("w").unwrap());
    assert!((var / (2.0 / 64.0) - 1.0).abs() < 0.03, "{var}");
    // A 1-D tensor has no fans; bad arguments are typed errors and change nothing.
    assert!(matches!(
        init::kaiming_uniform(&mut p, "b", 1),
        Err(Error::InvalidShape { .. })
    ));
    assert!(matches!(
        init::normal(&mut p, "b", 0.0, -1.0, 1),
        Err(Error::InvalidHyperparameter { .. })
    ));
    assert!(matches!(
        init::uniform(&mut p, "nope", 0.0, 1.0, 1),
        Err(Error::UnknownTensor(_))
    ));
    assert_eq!(p.read("b").unwrap(), vec![0.0; 64]);
}

#[test]
fn trunc_normal_rejects_a_non_finite_mean_as_normal_does() {
    let mut p = Params::zeros(&gpu(), &[("b", 64)]).unwrap();
    init::constant(&mut p, "b", 0.25).unwrap();
    for mean in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for r in [
            init::trunc_normal(&mut p, "b", mean, 1.0, -2.0, 2.0, 3),
            init::normal(&mut p, "b", mean, 1.0, 3),
        ] {
            match r {
                Err(Error::InvalidHyperparameter { name, value, .. }) => {
                    assert_eq!(name, "mean");
                    assert!(
                        value == mean as f64 || value.is_nan() && mean.is_nan(),
                        "{value}"
                    );
                }
                other => panic!("mean {mean}: {other:?}"),
            }
        }
    }
    assert_eq!(p.read("b").unwrap(), vec![0.25; 64], "nothing written");
    // A finite mean still draws inside [a, b].
    init::trunc_normal(&mut p, "b", 0.0, 1.0, -2.0, 2.0, 3).unwrap();
    assert!(p.read("b").unwrap().iter().all(|x| x.abs() <= 2.0));
}
