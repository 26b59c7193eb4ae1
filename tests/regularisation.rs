//! L1 regularisation (`FusedOptimizer::set_l1`, `set_group_l1`): `l1 * sign(p)` added to the
//! gradient before every optimizer's update, after clipping, unscaling and `maximize`, against
//! the CPU reference (`reference::l1_grad`) for every optimizer, with groups of different
//! coefficients, clipping, the non-finite skip, the loss scaler, 16-bit storage with master
//! weights, checkpoints, and bad values.

mod common;
use common::{gpu, Run};
use wgpu_optim::checkpoint::{self, Checkpoint, SaveOptions};
use wgpu_optim::{reference, AdagradConfig, AdamConfig, LionConfig, RmsPropConfig, SgdConfig};
use wgpu_optim::{AdadeltaConfig, AdamaxConfig, AsgdConfig, NAdamConfig, RAdamConfig, RpropConfig};
use wgpu_optim::{
    Adam, DType, Error, FusedOptimizer, Optimizer, OptimizerConfig, ParamGroup, Params, Precision,
    ScalerConfig, Sgd,
};

/// Sizes around 4, 64 and a chunk's workgroup.
const SIZES: &[usize] = &[1, 3, 5, 64, 65, 1000, 4099];

/// `cfg` with L1 on: alone, with maximize where the optimizer has it (through `flip`), with
/// two groups (one of them without L1) and clipping, and on bf16 parameters with f32 master
/// weights and stochastic rounding.
fn with_l1<C: OptimizerConfig>(cfg: C, reference: reference::Step<C>, flip: Option<fn(&mut C)>) {
    with_l1_poisoned(cfg, reference, flip, &[]);
}

/// [`with_l1`], with state `poison` NaN before the first step (state the first step writes
/// without reading, which may end where it started, as Rprop's `prev` at a sign change).
fn with_l1_poisoned<C: OptimizerConfig>(
    cfg: C,
    reference: reference::Step<C>,
    flip: Option<fn(&mut C)>,
    poison: &[&'static str],
) {
    let name = C::NAME;
    let poisoned = |mut run: Run<C>| {
        for &k in poison {
            run = run.poison_state(k);
        }
        run
    };
    poisoned(Run::new(format!("{name} l1"), reference))
        .sizes(SIZES)
        .l1(&[0.02])
        .run(cfg.clone());
    if let Some(flip) = flip {
        let mut max = cfg.clone();
        flip(&mut max);
        assert!(max.maximize());
        poisoned(Run::new(format!("{name} l1 maximize"), reference))
            .sizes(SIZES)
            .l1(&[0.02])
            .run(max);
    }
    let tensors: Vec<(String, usize)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("t{i}"), n))
        .collect();
    let groups = vec![
        ParamGroup::new(["t0", "t2", "t4"], cfg.clone()),
        ParamGroup::rest(cfg.clone()),
    ];
    let first = |n: &str| !["t0", "t2", "t4"].contains(&n) as usize;
    poisoned(Run::new(format!("{name} l1 groups clip"), reference))
        .tensors(&tensors)
        .max_chunk_bytes(8192)
        .clip(0.5, 2.0)
        .l1(&[0.0, 0.05])
        .run_groups(groups, first);
    poisoned(Run::new(format!("{name} l1 bf16 master"), reference))
        .sizes(SIZES)
        .dtypes(&[DType::Bf16, DType::F32])
        .precision(Precision {
            state: DType::F32,
            master_weights: true,
            stochastic_rounding: true,
        })
        .l1(&[0.01])
        .run(cfg);
}

#[test]
fn every_optimizer_with_l1() {
    with_l1(
        AdamConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..AdamConfig::adamw()
        },
        reference::adam,
        Some(|c| c.maximize = true),
    );
    with_l1(
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.05,
            ..Default::default()
        },
        reference::sgd,
        Some(|c| c.maximize = true),
    );
    with_l1(
        RmsPropConfig {
            lr: 1e-2,
            centered: true,
            momentum: 0.9,
            ..Default::default()
        },
        reference::rmsprop,
        Some(|c| c.maximize = true),
    );
    with_l1(
        AdagradConfig {
            lr: 0.1,
            ..Default::default()
        },
        reference::adagrad,
        Some(|c| c.maximize = true),
    );
    with_l1(
        LionConfig {
            lr: 1e-2,
            weight_decay: 0.1,
            ..Default::default()
        },
        reference::lion,
        Some(|c| c.maximize = true),
    );
    with_l1(
        AdadeltaConfig::default(),
        reference::adadelta,
        Some(|c| c.maximize = true),
    );
    with_l1_poisoned(
        RpropConfig::default(),
        reference::rprop,
        Some(|c| c.maximize = true),
        &["prev"],
    );
    with_l1(
        AsgdConfig {
            t0: 2.0,
            ..Default::default()
        },
        reference::asgd,
        Some(|c| c.maximize = true),
    );
    with_l1(
        AdamaxConfig::default(),
        reference::adamax,
        Some(|c| c.maximize = true),
    );
    with_l1(
        RAdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
        reference::radam,
        Some(|c| c.maximize = true),
    );
    with_l1(
        NAdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
        reference::nadam,
        Some(|c| c.maximize = true),
    );
}

/// With the non-finite skip and the loss scaler: skipped steps stay no-ops, the L1 term is
/// added to the unscaled gradient.
#[test]
fn l1_with_skipping_and_the_loss_scaler() {
    Run::new("adam l1 skip", reference::adam)
        .sizes(SIZES)
        .skip_nonfinite()
        .bad_steps(&[2, 5], f32::NAN, ("t5_1000", 17))
        .l1(&[0.03])
        .run(AdamConfig::adamw());
    Run::new("sgd l1 scaler", reference::sgd)
        .sizes(SIZES)
        .scaler(ScalerConfig {
            init_scale: 1024.0,
            growth_interval: 3,
            ..Default::default()
        })
        .bad_steps(&[3], f32::INFINITY, ("t0_1", 0))
        .l1(&[0.01])
        .run(SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..Default::default()
        });
}

/// What L1 does, by hand: with zero gradients plain SGD moves each weight `lr * l1` towards 0
/// (and 0 stays 0); turning it off again gives plain SGD.
#[test]
fn l1_pulls_weights_to_zero() {
    let gpu = gpu();
    let mut params = Params::new(&gpu, &[("w", &[0.5f32, -0.25, 0.0, 2.0][..])]).unwrap();
    let mut opt = Sgd::new(
        &params,
        SgdConfig {
            lr: 0.5,
            ..Default::default()
        },
    )
    .unwrap();
    opt.set_l1(0.125).unwrap();
    assert_eq!(opt.group_l1(0).unwrap(), 0.125);
    opt.step(&mut params).unwrap();
    assert_eq!(
        params.read("w").unwrap(),
        vec![0.4375, -0.1875, 0.0, 1.9375]
    );
    opt.set_l1(0.0).unwrap();
    opt.step(&mut params).unwrap();
    assert_eq!(
        params.read("w").unwrap(),
        vec![0.4375, -0.1875, 0.0, 1.9375]
    );
}

/// Bad coefficients are typed errors that change nothing; checkpoints keep every group's.
#[test]
fn l1_validation_and_checkpoints() {
    let gpu = gpu();
    let params = Params::new(&gpu, &[("a", &[1.0f32; 8][..]), ("b", &[-1.0; 4])]).unwrap();
    let groups = vec![
        ParamGroup::new(["a"], AdamConfig::adamw()),
        ParamGroup::rest(AdamConfig::adamw()),
    ];
    let mut opt: FusedOptimizer<AdamConfig> = FusedOptimizer::with_groups(&params, groups).unwrap();
    opt.set_group_l1(1, 0.25).unwrap();
    for bad in [-1.0, f32::NAN, f32::INFINITY] {
        let e = opt.set_l1(bad).unwrap_err();
        assert!(
            matches!(e, Error::InvalidHyperparameter { name: "l1", .. }),
            "{e}"
        );
        assert!(opt.set_group_l1(0, bad).is_err());
    }
    assert!(matches!(
        opt.set_group_l1(2, 0.1),
        Err(Error::InvalidGroups(_)) | Err(Error::InvalidOptions(_))
    ));
    assert_eq!(
        (opt.group_l1(0).unwrap(), opt.group_l1(1).unwrap()),
        (0.0, 0.25)
    );

    let dir = std::env::temp_dir().join(format!("wgpu-optim-l1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("l1.safetensors");
    checkpoint::save(&path, &params, &opt, SaveOptions::default()).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.l1(), &[0.0, 0.25]);
    let mut params2 = ck.params(&gpu).unwrap();
    let mut opt2 = ck.build_optimizer(&params2).unwrap();
    ck.restore(&mut params2, &mut *opt2).unwrap();
    let again = dir.join("again.safetensors");
    checkpoint::save(&again, &params2, &*opt2, SaveOptions::default()).unwrap();
    assert_eq!(Checkpoint::open(&again).unwrap().l1(), &[0.0, 0.25]);
    // Without L1 the file has no `l1` entry, and loading it turns L1 off.
    let plain = Adam::new(&params, AdamConfig::adamw()).unwrap();
    checkpoint::save(&again, &params, &plain, SaveOptions::default()).unwrap();
    assert_eq!(Checkpoint::open(&again).unwrap().l1(), &[0.0]);
    let mut p3 = Params::new(&gpu, &[("a", &[0.0f32; 8][..]), ("b", &[0.0; 4])]).unwrap();
    let mut fresh = Adam::new(&p3, AdamConfig::adamw()).unwrap();
    fresh.set_l1(0.5).unwrap();
    checkpoint::load(&again, &mut p3, &mut fresh).unwrap();
    assert_eq!(fresh.group_l1(0).unwrap(), 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
