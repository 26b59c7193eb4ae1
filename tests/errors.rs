//! Bad input: a typed error, before any GPU work, and nothing changed.

mod common;
use common::{gpu, plain_sgd, randn, rng};
use wgpu_optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, Error, Gpu, Optimizer, Params, RmsProp,
    RmsPropConfig, Sgd, SgdConfig,
};

fn params() -> Params {
    let mut rng = rng("errors");
    let w = randn(&mut rng, 10, 1.0);
    let p = Params::new(&gpu(), &[("w", &w[..]), ("b", &[0.5, -0.5][..])]).unwrap();
    p.write_grad("w", &randn(&mut rng, 10, 1.0)).unwrap();
    p.write_grad("b", &[0.1, 0.2]).unwrap();
    p
}

fn hyper(r: Result<impl Sized, Error>, name: &str) {
    match r {
        Err(Error::InvalidHyperparameter { name: n, .. }) => assert_eq!(n, name),
        Err(e) => panic!("{name}: wrong error {e}"),
        Ok(_) => panic!("{name}: accepted"),
    }
}

#[test]
fn invalid_hyperparameters_are_rejected() {
    let p = params();
    let adam = |c: AdamConfig| Adam::new(&p, c);
    hyper(
        adam(AdamConfig {
            lr: -1e-3,
            ..Default::default()
        }),
        "lr",
    );
    hyper(
        adam(AdamConfig {
            lr: f32::NAN,
            ..Default::default()
        }),
        "lr",
    );
    hyper(
        adam(AdamConfig {
            lr: f32::INFINITY,
            ..Default::default()
        }),
        "lr",
    );
    hyper(
        adam(AdamConfig {
            betas: (1.0, 0.999),
            ..Default::default()
        }),
        "betas[0]",
    );
    hyper(
        adam(AdamConfig {
            betas: (-0.1, 0.999),
            ..Default::default()
        }),
        "betas[0]",
    );
    hyper(
        adam(AdamConfig {
            betas: (0.9, 1.5),
            ..Default::default()
        }),
        "betas[1]",
    );
    hyper(
        adam(AdamConfig {
            betas: (0.9, f32::NAN),
            ..Default::default()
        }),
        "betas[1]",
    );
    hyper(
        adam(AdamConfig {
            eps: -1e-8,
            ..Default::default()
        }),
        "eps",
    );
    hyper(
        adam(AdamConfig {
            weight_decay: -0.1,
            ..Default::default()
        }),
        "weight_decay",
    );

    let sgd = |c: SgdConfig| Sgd::new(&p, c);
    hyper(
        sgd(SgdConfig {
            lr: -0.1,
            ..Default::default()
        }),
        "lr",
    );
    hyper(
        sgd(SgdConfig {
            momentum: -0.9,
            ..Default::default()
        }),
        "momentum",
    );
    hyper(
        sgd(SgdConfig {
            weight_decay: f32::NAN,
            ..Default::default()
        }),
        "weight_decay",
    );
    for c in [
        SgdConfig {
            nesterov: true,
            ..Default::default()
        },
        SgdConfig {
            nesterov: true,
            momentum: 0.9,
            dampening: 0.1,
            ..Default::default()
        },
    ] {
        assert!(matches!(sgd(c), Err(Error::InvalidOptions(_))));
    }

    let rms = |c: RmsPropConfig| RmsProp::new(&p, c);
    hyper(
        rms(RmsPropConfig {
            alpha: -0.5,
            ..Default::default()
        }),
        "alpha",
    );
    hyper(
        rms(RmsPropConfig {
            eps: -1.0,
            ..Default::default()
        }),
        "eps",
    );
    hyper(
        rms(RmsPropConfig {
            momentum: -1.0,
            ..Default::default()
        }),
        "momentum",
    );
    hyper(
        rms(RmsPropConfig {
            lr: f32::NAN,
            ..Default::default()
        }),
        "lr",
    );

    let ada = |c: AdagradConfig| Adagrad::new(&p, c);
    hyper(
        ada(AdagradConfig {
            lr_decay: -0.1,
            ..Default::default()
        }),
        "lr_decay",
    );
    hyper(
        ada(AdagradConfig {
            initial_accumulator_value: -1.0,
            ..Default::default()
        }),
        "initial_accumulator_value",
    );
    hyper(
        ada(AdagradConfig {
            eps: -1.0,
            ..Default::default()
        }),
        "eps",
    );
}

/// An invalid lr set between steps is caught by `step`, which then changes nothing.
#[test]
fn failed_step_changes_nothing() {
    let mut p = params();
    let mut opt = Adam::new(&p, AdamConfig::default()).unwrap();
    opt.step(&mut p).unwrap();
    let (w, m, v) = (
        p.read("w").unwrap(),
        opt.state("exp_avg", "w").unwrap(),
        opt.state("exp_avg_sq", "w").unwrap(),
    );
    for bad in [-1.0, f32::NAN, f32::INFINITY] {
        // Rejected at once; the old lr stays and steps go on.
        hyper(opt.set_lr(bad), "lr");
        assert_eq!(opt.lr(), 1e-3);
    }
    assert_eq!(opt.step_count(), 1);
    assert_eq!(p.read("w").unwrap(), w);
    assert_eq!(opt.state("exp_avg", "w").unwrap(), m);
    assert_eq!(opt.state("exp_avg_sq", "w").unwrap(), v);
    opt.set_lr(1e-3).unwrap();
    opt.step(&mut p).unwrap();
    assert_ne!(p.read("w").unwrap(), w);
}

/// A step count above 2^53 is refused and the count stays; at 2^53 the next step runs as
/// step 2^53 + 1 (the bias corrections are 1 there), on the same values as a step at 10^6.
#[test]
fn step_counts_above_2_53_are_refused() {
    let mut rng = rng("step_counts");
    let (w, g) = (randn(&mut rng, 10, 1.0), randn(&mut rng, 10, 1.0));
    let run = |count: u64| {
        let mut p = Params::new(&gpu(), &[("w", &w[..])]).unwrap();
        p.write_grad("w", &g).unwrap();
        let mut opt = Adam::new(&p, AdamConfig::default()).unwrap();
        opt.set_step_count(count).unwrap();
        for bad in [(1 << 53) + 1, u64::MAX] {
            match opt.set_step_count(bad) {
                Err(Error::InvalidOptions(m)) => assert!(m.contains("2^53"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
            assert_eq!(opt.step_count(), count);
        }
        opt.step(&mut p).unwrap();
        assert_eq!(opt.step_count(), count + 1);
        p.read("w").unwrap()
    };
    let at_max = run(wgpu_optim::optim::MAX_STEP_COUNT);
    assert!(at_max.iter().all(|x| x.is_finite()));
    assert_eq!(at_max, run(1_000_000));
}

#[test]
fn bad_names_and_lengths() {
    let p = params();
    let before = p.read("w").unwrap();
    assert!(matches!(
        p.write("w", &[1.0; 9]),
        Err(Error::LengthMismatch {
            expected: 10,
            got: 9,
            ..
        })
    ));
    assert!(matches!(
        p.write_grad("w", &[1.0; 11]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        p.write_grad("nope", &[1.0]),
        Err(Error::UnknownTensor(_))
    ));
    assert!(matches!(p.read("nope"), Err(Error::UnknownTensor(_))));
    assert!(matches!(p.len("nope"), Err(Error::UnknownTensor(_))));
    assert!(matches!(p.binding("nope"), Err(Error::UnknownTensor(_))));
    assert_eq!(p.read("w").unwrap(), before);

    let opt = Adam::new(&p, AdamConfig::default()).unwrap();
    assert!(matches!(
        opt.state("momentum_buffer", "w"),
        Err(Error::UnknownState { .. })
    ));
    assert!(
        matches!(
            opt.state("max_exp_avg_sq", "w"),
            Err(Error::UnknownState { .. })
        ),
        "amsgrad is off"
    );
    assert!(matches!(
        opt.state("exp_avg", "nope"),
        Err(Error::UnknownTensor(_))
    ));
    let sgd = Sgd::new(&p, SgdConfig::default()).unwrap();
    assert!(
        matches!(
            sgd.state("momentum_buffer", "w"),
            Err(Error::UnknownState { .. })
        ),
        "no momentum"
    );

    let gpu = gpu();
    assert!(matches!(Params::new(&gpu, &[]), Err(Error::Empty(_))));
    assert!(matches!(
        Params::new(&gpu, &[("", &[1.0][..])]),
        Err(Error::Empty(_))
    ));
    assert!(matches!(
        Params::new(&gpu, &[("x", &[][..])]),
        Err(Error::Empty(_))
    ));
    assert!(matches!(
        Params::new(&gpu, &[("x", &[1.0][..]), ("x", &[2.0][..])]),
        Err(Error::DuplicateName(_))
    ));
}

#[test]
fn params_from_another_set_or_device() {
    let p = params();
    let mut opt = plain_sgd(&p, 0.1);
    // Same names, same device, but another arena.
    let mut twin = Params::new(&gpu(), &[("w", &[0.0; 10][..]), ("b", &[0.0; 2][..])]).unwrap();
    assert!(matches!(opt.step(&mut twin), Err(Error::ParamsMismatch(_))));
    // Another device altogether.
    let other = Gpu::new().expect("a second device on the same adapter");
    assert!(!other.same_device(&gpu()));
    let mut foreign = Params::new(&other, &[("w", &[0.0; 10][..]), ("b", &[0.0; 2][..])]).unwrap();
    match opt.step(&mut foreign) {
        Err(Error::ParamsMismatch(why)) => assert!(why.contains("another device"), "{why}"),
        r => panic!("expected ParamsMismatch, got {r:?}"),
    }
    assert_eq!(opt.step_count(), 0);
    assert_eq!(twin.read("w").unwrap(), vec![0.0; 10]);
    assert_eq!(foreign.read("w").unwrap(), vec![0.0; 10]);
}

#[test]
fn errors_render_a_useful_message() {
    let e = Error::NoAdapter("none".into());
    assert!(e.to_string().contains("mesa-vulkan-drivers"));
    let e = Error::InvalidHyperparameter {
        name: "lr",
        value: -1.0,
        rule: "must be >= 0",
    };
    assert_eq!(e.to_string(), "invalid lr = -1: must be >= 0");
}

#[test]
fn boxed_trait_objects_work() {
    let mut p = params();
    let mut opts: Vec<Box<dyn Optimizer>> = vec![
        Box::new(Sgd::new(&p, SgdConfig::default()).unwrap()),
        Box::new(Adam::new(&p, AdamConfig::adamw()).unwrap()),
        Box::new(RmsProp::new(&p, RmsPropConfig::default()).unwrap()),
        Box::new(Adagrad::new(&p, AdagradConfig::default()).unwrap()),
    ];
    for o in &mut opts {
        o.step(&mut p).unwrap();
        o.set_lr(0.5).unwrap();
        assert_eq!((o.lr(), o.step_count()), (0.5, 1));
        assert!(!o.name().is_empty());
    }
}

/// Adadelta and Rprop follow PyTorch's rules: `0 <= rho <= 1`, `0 < etas[0] < 1 < etas[1]`.
#[test]
fn invalid_adadelta_and_rprop_hyperparameters_are_rejected() {
    use wgpu_optim::{Adadelta, AdadeltaConfig, Rprop, RpropConfig};
    let p = params();
    let ada = |c: AdadeltaConfig| Adadelta::new(&p, c);
    for (cfg, name) in [
        (
            AdadeltaConfig {
                lr: -1.0,
                ..Default::default()
            },
            "lr",
        ),
        (
            AdadeltaConfig {
                rho: -0.1,
                ..Default::default()
            },
            "rho",
        ),
        (
            AdadeltaConfig {
                rho: 1.1,
                ..Default::default()
            },
            "rho",
        ),
        (
            AdadeltaConfig {
                eps: -1.0,
                ..Default::default()
            },
            "eps",
        ),
        (
            AdadeltaConfig {
                weight_decay: -1.0,
                ..Default::default()
            },
            "weight_decay",
        ),
    ] {
        hyper(ada(cfg), name);
    }
    // Both ends of rho's range are allowed, as in torch.
    for rho in [0.0, 1.0] {
        ada(AdadeltaConfig {
            rho,
            ..Default::default()
        })
        .unwrap();
    }
    let rprop = |c: RpropConfig| Rprop::new(&p, c);
    for (cfg, name) in [
        (
            RpropConfig {
                lr: -1.0,
                ..Default::default()
            },
            "lr",
        ),
        (
            RpropConfig {
                etas: (0.0, 1.2),
                ..Default::default()
            },
            "etas[0]",
        ),
        (
            RpropConfig {
                etas: (1.0, 1.2),
                ..Default::default()
            },
            "etas[0]",
        ),
        (
            RpropConfig {
                etas: (0.5, 1.0),
                ..Default::default()
            },
            "etas[1]",
        ),
        (
            RpropConfig {
                etas: (0.5, f32::NAN),
                ..Default::default()
            },
            "etas[1]",
        ),
        (
            RpropConfig {
                step_sizes: (f32::NAN, 50.0),
                ..Default::default()
            },
            "step_sizes[0]",
        ),
        (
            RpropConfig {
                step_sizes: (1e-6, f32::INFINITY),
                ..Default::default()
            },
            "step_sizes[1]",
        ),
    ] {
        hyper(rprop(cfg), name);
    }
    // set_lr is checked too.
    let mut opt = rprop(RpropConfig::default()).unwrap();
    hyper(opt.set_lr(-1.0), "lr");
}

/// ASGD follows PyTorch's rules: lr, lambd, alpha and weight_decay >= 0 (t0 only finite).
#[test]
fn invalid_asgd_hyperparameters_are_rejected() {
    use wgpu_optim::{Asgd, AsgdConfig};
    let p = params();
    let asgd = |c: AsgdConfig| Asgd::new(&p, c);
    for (cfg, name) in [
        (
            AsgdConfig {
                lr: -1.0,
                ..Default::default()
            },
            "lr",
        ),
        (
            AsgdConfig {
                lambd: -1e-4,
                ..Default::default()
            },
            "lambd",
        ),
        (
            AsgdConfig {
                alpha: -0.75,
                ..Default::default()
            },
            "alpha",
        ),
        (
            AsgdConfig {
                t0: f32::NAN,
                ..Default::default()
            },
            "t0",
        ),
        (
            AsgdConfig {
                weight_decay: -1.0,
                ..Default::default()
            },
            "weight_decay",
        ),
    ] {
        hyper(asgd(cfg), name);
    }
    asgd(AsgdConfig {
        t0: -5.0,
        ..Default::default()
    })
    .unwrap();
}

/// Adamax, RAdam and NAdam reject what torch's constructors reject (`ValueError`), by name.
#[test]
fn invalid_adam_family_hyperparameters_are_rejected() {
    use wgpu_optim::{
        Adamax, AdamaxConfig, NAdam, NAdamConfig, OptimizerConfig, RAdam, RAdamConfig,
    };
    let p = params();
    // (name, value): one bad option at a time.
    let bad: [(&str, f32); 7] = [
        ("lr", -1e-3),
        ("lr", f32::NAN),
        ("eps", -1.0),
        ("betas[0]", 1.0),
        ("betas[0]", -0.1),
        ("betas[1]", 1.0),
        ("weight_decay", -0.1),
    ];
    for (name, value) in bad {
        let value = value as f64;
        let mut a = AdamaxConfig::default();
        a.set_hyperparameter(name, value).unwrap();
        hyper(Adamax::new(&p, a), name);
        let mut r = RAdamConfig::default();
        r.set_hyperparameter(name, value).unwrap();
        hyper(RAdam::new(&p, r), name);
        let mut n = NAdamConfig::default();
        n.set_hyperparameter(name, value).unwrap();
        hyper(NAdam::new(&p, n), name);
    }
    hyper(
        NAdam::new(
            &p,
            NAdamConfig {
                momentum_decay: -1e-3,
                ..Default::default()
            },
        ),
        "momentum_decay",
    );
    // The boundaries torch accepts.
    Adamax::new(
        &p,
        AdamaxConfig {
            lr: 0.0,
            betas: (0.0, 0.0),
            eps: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    NAdam::new(
        &p,
        NAdamConfig {
            momentum_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    RAdam::new(
        &p,
        RAdamConfig {
            betas: (0.0, 0.0),
            ..Default::default()
        },
    )
    .unwrap();
}
