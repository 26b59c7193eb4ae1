//! Every optimizer, every option combination, against the CPU reference on a real adapter.

mod common;
use common::{run_vs_reference, SIZES};
use wgpu_optim::{reference, AdagradConfig, AdamConfig, RmsPropConfig, SgdConfig};

const STEPS: usize = 8;

fn bools() -> [bool; 2] {
    [false, true]
}

#[test]
fn adam_all_options() {
    for amsgrad in bools() {
        for decoupled_weight_decay in bools() {
            for maximize in bools() {
                for weight_decay in [0.0, 0.1] {
                    let cfg = AdamConfig {
                        lr: 1e-2,
                        amsgrad,
                        decoupled_weight_decay,
                        maximize,
                        weight_decay,
                        ..Default::default()
                    };
                    run_vs_reference(
                        &format!("{cfg:?}"),
                        cfg,
                        reference::adam,
                        SIZES,
                        STEPS,
                        u64::MAX,
                    );
                }
            }
        }
    }
    let odd = AdamConfig {
        betas: (0.3, 0.9),
        eps: 1e-3,
        ..Default::default()
    };
    run_vs_reference(
        "adam betas (0.3, 0.9)",
        odd,
        reference::adam,
        SIZES,
        STEPS,
        u64::MAX,
    );
    run_vs_reference(
        "adamw defaults",
        AdamConfig::adamw(),
        reference::adam,
        SIZES,
        STEPS,
        u64::MAX,
    );
}

#[test]
fn sgd_all_options() {
    for (momentum, dampening, nesterov) in [
        (0.0, 0.0, false),
        (0.9, 0.0, false),
        (0.9, 0.2, false),
        (0.9, 0.0, true),
    ] {
        for maximize in bools() {
            for weight_decay in [0.0, 0.05] {
                let cfg = SgdConfig {
                    lr: 0.05,
                    momentum,
                    dampening,
                    nesterov,
                    maximize,
                    weight_decay,
                };
                run_vs_reference(
                    &format!("{cfg:?}"),
                    cfg,
                    reference::sgd,
                    SIZES,
                    STEPS,
                    u64::MAX,
                );
            }
        }
    }
}

#[test]
fn rmsprop_all_options() {
    for centered in bools() {
        for momentum in [0.0, 0.9] {
            for maximize in bools() {
                for weight_decay in [0.0, 0.1] {
                    let cfg = RmsPropConfig {
                        centered,
                        momentum,
                        maximize,
                        weight_decay,
                        ..Default::default()
                    };
                    run_vs_reference(
                        &format!("{cfg:?}"),
                        cfg,
                        reference::rmsprop,
                        SIZES,
                        STEPS,
                        u64::MAX,
                    );
                }
            }
        }
    }
    let odd = RmsPropConfig {
        alpha: 0.3,
        centered: true,
        ..Default::default()
    };
    run_vs_reference(
        "rmsprop alpha 0.3",
        odd,
        reference::rmsprop,
        SIZES,
        STEPS,
        u64::MAX,
    );
}

#[test]
fn adagrad_all_options() {
    for lr_decay in [0.0, 0.01] {
        for initial_accumulator_value in [0.0, 0.1] {
            for maximize in bools() {
                for weight_decay in [0.0, 0.1] {
                    let cfg = AdagradConfig {
                        lr: 0.1,
                        lr_decay,
                        initial_accumulator_value,
                        maximize,
                        weight_decay,
                        ..Default::default()
                    };
                    run_vs_reference(
                        &format!("{cfg:?}"),
                        cfg,
                        reference::adagrad,
                        SIZES,
                        STEPS,
                        u64::MAX,
                    );
                }
            }
        }
    }
}
