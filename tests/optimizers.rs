//! Every optimizer, every option combination, against the CPU reference on a real adapter:
//! one row per configuration, all through the shared runner (`common::Run`).

mod common;
use common::Run;
use wgpu_optim::{reference, AdagradConfig, AdamConfig, RmsPropConfig, SgdConfig};
use wgpu_optim::{AdadeltaConfig, AsgdConfig, RpropConfig};
use wgpu_optim::{AdamaxConfig, NAdamConfig, RAdamConfig};

const BOOLS: [bool; 2] = [false, true];

/// Every pair of `a` and `b`.
fn pairs<A: Copy, B: Copy>(a: &[A], b: &[B]) -> Vec<(A, B)> {
    a.iter()
        .flat_map(|&x| b.iter().map(move |&y| (x, y)))
        .collect()
}

#[test]
fn adam_all_options() {
    let mut rows = Vec::new();
    for ((amsgrad, decoupled_weight_decay), (maximize, weight_decay)) in
        pairs(&pairs(&BOOLS, &BOOLS), &pairs(&BOOLS, &[0.0, 0.1]))
    {
        rows.push(AdamConfig {
            lr: 1e-2,
            amsgrad,
            decoupled_weight_decay,
            maximize,
            weight_decay,
            ..Default::default()
        });
    }
    rows.push(AdamConfig {
        betas: (0.3, 0.9),
        eps: 1e-3,
        ..Default::default()
    });
    rows.push(AdamConfig::adamw());
    for cfg in rows {
        Run::new(format!("{cfg:?}"), reference::adam).run(cfg);
    }
}

#[test]
fn sgd_all_options() {
    let momenta = [
        (0.0, 0.0, false),
        (0.9, 0.0, false),
        (0.9, 0.2, false),
        (0.9, 0.0, true),
    ];
    for ((momentum, dampening, nesterov), (maximize, weight_decay)) in
        pairs(&momenta, &pairs(&BOOLS, &[0.0, 0.05]))
    {
        let cfg = SgdConfig {
            lr: 0.05,
            momentum,
            dampening,
            nesterov,
            maximize,
            weight_decay,
        };
        let mut run = Run::new(format!("{cfg:?}"), reference::sgd);
        if momentum != 0.0 {
            // torch creates the buffer as `buf = grad` on the first step.
            run = run.poison_state("momentum_buffer");
        }
        run.run(cfg);
    }
}

#[test]
fn rmsprop_all_options() {
    let mut rows = Vec::new();
    for ((centered, momentum), (maximize, weight_decay)) in
        pairs(&pairs(&BOOLS, &[0.0, 0.9]), &pairs(&BOOLS, &[0.0, 0.1]))
    {
        rows.push(RmsPropConfig {
            centered,
            momentum,
            maximize,
            weight_decay,
            ..Default::default()
        });
    }
    rows.push(RmsPropConfig {
        alpha: 0.3,
        centered: true,
        ..Default::default()
    });
    for cfg in rows {
        Run::new(format!("{cfg:?}"), reference::rmsprop).run(cfg);
    }
}

#[test]
fn adagrad_all_options() {
    for ((lr_decay, initial_accumulator_value), (maximize, weight_decay)) in pairs(
        &pairs(&[0.0, 0.01], &[0.0, 0.1]),
        &pairs(&BOOLS, &[0.0, 0.1]),
    ) {
        let cfg = AdagradConfig {
            lr: 0.1,
            lr_decay,
            initial_accumulator_value,
            maximize,
            weight_decay,
            ..Default::default()
        };
        Run::new(format!("{cfg:?}"), reference::adagrad).run(cfg);
    }
}

#[test]
fn lion_all_options() {
    use wgpu_optim::LionConfig;
    // 9 steps, not 8: without weight decay every step moves a param by ±lr, and after an even
    // number some are back at their start, which the runner (rightly) refuses.
    for (maximize, weight_decay) in pairs(&BOOLS, &[0.0, 0.1]) {
        let cfg = LionConfig {
            lr: 1e-2,
            maximize,
            weight_decay,
            ..Default::default()
        };
        Run::new(format!("{cfg:?}"), reference::lion)
            .steps(9)
            .run(cfg);
    }
    let cfg = LionConfig::default();
    Run::new(format!("{cfg:?}"), reference::lion)
        .steps(9)
        .run(cfg);
}

#[test]
fn adadelta_all_options() {
    let mut rows = Vec::new();
    for ((rho, lr), (maximize, weight_decay)) in pairs(
        &pairs(&[0.9, 0.3], &[1.0, 0.5]),
        &pairs(&BOOLS, &[0.0, 0.1]),
    ) {
        rows.push(AdadeltaConfig {
            lr,
            rho,
            maximize,
            weight_decay,
            ..Default::default()
        });
    }
    rows.push(AdadeltaConfig {
        eps: 1e-3,
        ..Default::default()
    });
    for cfg in rows {
        Run::new(format!("{cfg:?}"), reference::adadelta).run(cfg);
    }
}

#[test]
fn rprop_all_options() {
    let mut rows = Vec::new();
    for ((etas, step_sizes), maximize) in pairs(
        &pairs(&[(0.5, 1.2), (0.3, 1.7)], &[(1e-6, 50.0), (1e-3, 0.05)]),
        &BOOLS,
    ) {
        rows.push(RpropConfig {
            lr: 0.01,
            etas,
            step_sizes,
            maximize,
        });
    }
    rows.push(RpropConfig {
        lr: 0.2,
        ..Default::default()
    });
    for cfg in rows {
        // More steps than the default, so sign flips, growth and both clamps all happen.
        // `prev` is poisoned: NaN * grad is neither > 0 nor < 0, so a NaN `prev` gives the
        // first step what torch's zeros give it, and an element never written stays NaN.
        Run::new(format!("{cfg:?}"), reference::rprop)
            .steps(12)
            .poison_state("prev")
            .run(cfg);
    }
}

#[test]
fn asgd_all_options() {
    let mut rows = Vec::new();
    // t0 3: averaging (mu < 1) starts within the run; 1e6 (the default): ax copies param.
    for ((t0, lambd), (maximize, weight_decay)) in pairs(
        &pairs(&[1e6, 3.0], &[1e-4, 0.5]),
        &pairs(&BOOLS, &[0.0, 0.1]),
    ) {
        rows.push(AsgdConfig {
            lr: 0.05,
            lambd,
            t0,
            maximize,
            weight_decay,
            ..Default::default()
        });
    }
    rows.push(AsgdConfig {
        alpha: 0.3,
        lambd: 0.5,
        t0: 1.0,
        ..Default::default()
    });
    for cfg in rows {
        Run::new(format!("{cfg:?}"), reference::asgd)
            .steps(10)
            .run(cfg);
    }
}

#[test]
fn adamax_all_options() {
    let mut rows = Vec::new();
    for (maximize, weight_decay) in pairs(&BOOLS, &[0.0, 0.1]) {
        rows.push(AdamaxConfig {
            lr: 1e-2,
            maximize,
            weight_decay,
            ..Default::default()
        });
    }
    rows.push(AdamaxConfig {
        betas: (0.3, 0.5),
        eps: 1e-3,
        ..Default::default()
    });
    for cfg in rows {
        Run::new(format!("{cfg:?}"), reference::adamax).run(cfg);
    }
}

#[test]
fn radam_all_options() {
    let mut rows = Vec::new();
    for ((decoupled_weight_decay, maximize), weight_decay) in
        pairs(&pairs(&BOOLS, &BOOLS), &[0.0, 0.1])
    {
        rows.push(RAdamConfig {
            lr: 1e-2,
            decoupled_weight_decay,
            maximize,
            weight_decay,
            ..Default::default()
        });
    }
    // betas[1] 0.9: rho_t > 5 from step 2 on; 0.999 (above) from step 6.
    rows.push(RAdamConfig {
        betas: (0.3, 0.9),
        eps: 1e-3,
        ..Default::default()
    });
    for cfg in rows {
        Run::new(format!("{cfg:?}"), reference::radam).run(cfg);
    }
}

#[test]
fn nadam_all_options() {
    let mut rows = Vec::new();
    for ((decoupled_weight_decay, maximize), weight_decay) in
        pairs(&pairs(&BOOLS, &BOOLS), &[0.0, 0.1])
    {
        rows.push(NAdamConfig {
            lr: 1e-2,
            decoupled_weight_decay,
            maximize,
            weight_decay,
            ..Default::default()
        });
    }
    rows.push(NAdamConfig {
        betas: (0.3, 0.9),
        eps: 1e-3,
        momentum_decay: 0.5,
        ..Default::default()
    });
    for cfg in rows {
        Run::new(format!("{cfg:?}"), reference::nadam).run(cfg);
    }
}
