//! Learning-rate schedulers against PyTorch: every trajectory recorded by
//! `tools/torch_lr_schedules.py` (tests/data/lr_schedules.json) replayed with the crate's
//! schedulers driving a real optimizer that steps on the GPU between scheduler steps; every
//! validation error (typed, and the optimizer untouched); saving and loading scheduler state
//! (every fixture interrupted, resumed from JSON, and compared with the uninterrupted run).

mod common;
use common::{gpu, named};
use proptest::prelude::*;
use serde_json::Value;
use std::f64::consts::PI;
use wgpu_optim::checkpoint::{self, Checkpoint, SaveOptions, SchedulerRecord};
use wgpu_optim::{
    AdagradConfig, AdamConfig, AnnealStrategy, ChainedScheduler, ConstantLR, CosineAnnealingLR,
    CosineAnnealingWarmRestarts, CyclicLR, CyclicMode, Error, ExponentialLR, FusedOptimizer,
    LambdaLR, LinearLR, LrLambda, LrLambdas, LrScheduler, MultiStepLR, MultiplicativeLR,
    OneCycleLR, Optimizer, OptimizerConfig, ParamGroup, Params, PerGroup, PlateauMode,
    PlateauScheduler, PlateauState, PolynomialLR, ReduceLROnPlateau, RmsPropConfig, Schedule,
    Scheduler, SchedulerState, SequentialLR, Sgd, SgdConfig, StepLR, ThresholdMode,
};

/// The optimizer stores f32: each lr must be PyTorch's f64 value rounded to f32, up to a
/// relative 1e-6 (a couple of f32 ULPs).
const RTOL_F32: f64 = 1e-6;
/// The schedulers compute in f64 with PyTorch's formulas in PyTorch's order, so their f64
/// values agree with Python's floats to the last bit where both use the same libm (glibc: every
/// fixture matches exactly); the tolerance leaves room for another platform's cos/pow.
const RTOL_F64: f64 = 1e-12;

fn fixtures() -> Vec<Value> {
    let doc: Value = serde_json::from_str(include_str!("data/lr_schedules.json"))
        .expect("tests/data/lr_schedules.json: run tools/torch_lr_schedules.py");
    doc["cases"].as_array().unwrap().clone()
}

fn case(name: &str) -> Value {
    fixtures()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn per_group(v: &Value) -> PerGroup {
    match v {
        Value::Array(a) => PerGroup::Each(a.iter().map(f).collect()),
        v => PerGroup::All(f(v)),
    }
}

/// Builds the optimizer of a fixture's spec if `kind` is its name (`OptimizerConfig::NAME`,
/// case aside): one group per tensor with the lr of `lrs`, every other entry set by PyTorch's
/// name (a list such as `betas` entry by entry, `betas[0]`, `betas[1]`), the rest at defaults.
type Build = fn(&Params, &[String], &Value) -> Option<Box<dyn Optimizer>>;

/// One row per optimizer.
const OPTIMIZERS: [Build; 7] = [
    build::<SgdConfig>,
    build::<AdamConfig>,
    build::<AdagradConfig>,
    build::<RmsPropConfig>,
    build::<wgpu_optim::AdamaxConfig>,
    build::<wgpu_optim::RAdamConfig>,
    build::<wgpu_optim::NAdamConfig>,
];

fn build<C: OptimizerConfig + Default>(
    params: &Params,
    names: &[String],
    spec: &Value,
) -> Option<Box<dyn Optimizer>> {
    if !spec["kind"].as_str().unwrap().eq_ignore_ascii_case(C::NAME) {
        return None;
    }
    let mut config = C::default();
    for (k, v) in spec.as_object().unwrap() {
        match (k.as_str(), v) {
            ("kind" | "lrs", _) => {}
            (_, Value::Array(a)) => {
                for (i, x) in a.iter().enumerate() {
                    config
                        .set_hyperparameter(&format!("{k}[{i}]"), f(x))
                        .unwrap();
                }
            }
            (_, v) => config.set_hyperparameter(k, f(v)).unwrap(),
        }
    }
    let groups = names
        .iter()
        .zip(spec["lrs"].as_array().unwrap())
        .map(|(n, lr)| {
            let mut c = config.clone();
            c.set_hyperparameter("lr", f(lr)).unwrap();
            ParamGroup::new([n.clone()], c)
        })
        .collect();
    Some(Box::new(
        FusedOptimizer::with_groups(params, groups).unwrap(),
    ))
}

/// Two-element tensors, one per group, with gradients, so the optimizer really steps.
fn optimizer(spec: &Value) -> (Params, Box<dyn Optimizer>) {
    let groups = spec["lrs"].as_array().unwrap().len();
    let names: Vec<String> = (0..groups).map(|i| format!("p{i}")).collect();
    let init: Vec<Vec<f32>> = (0..groups).map(|i| vec![0.5 + i as f32; 3]).collect();
    let tensors = named(names.iter().map(|n| n.as_str()), &init);
    let params = Params::new(&gpu(), &tensors).unwrap();
    for n in &names {
        params.write_grad(n, &[0.1, -0.2, 0.3]).unwrap();
    }
    let opt = OPTIMIZERS
        .iter()
        .find_map(|build| build(&params, &names, spec))
        .unwrap_or_else(|| panic!("no optimizer named {}", spec["kind"]));
    (params, opt)
}

/// The Rust twin of a named function of `tools/torch_lr_schedules.py`'s LAMBDAS, with the same
/// arithmetic in the same order.
fn lambda(v: &Value) -> LrLambda {
    let p = |k: &str| f(&v[k]);
    match v["lambda"].as_str().unwrap() {
        "const" => {
            let c = p("value");
            LrLambda::new(move |_| c)
        }
        "pow" => {
            let base = p("base");
            LrLambda::new(move |epoch| base.powf(epoch as f64))
        }
        "step_factor" => {
            let (gamma, every) = (p("gamma"), u(&v["every"]));
            LrLambda::new(move |epoch| {
                if epoch > 0 && epoch % every == 0 {
                    gamma
                } else {
                    1.0
                }
            })
        }
        "warmup_linear" => {
            let (warmup, total) = (u(&v["warmup"]) as i64, u(&v["total"]) as i64);
            LrLambda::new(move |step| {
                let step = step as i64;
                if step < warmup {
                    step as f64 / warmup.max(1) as f64
                } else {
                    ((total - step) as f64 / (total - warmup).max(1) as f64).max(0.0)
                }
            })
        }
        "warmup_cosine" => {
            let (warmup, total) = (u(&v["warmup"]) as i64, u(&v["total"]) as i64);
            let cycles = v.get("cycles").map_or(0.5, f);
            LrLambda::new(move |step| {
                let step = step as i64;
                if step < warmup {
                    return step as f64 / warmup.max(1) as f64;
                }
                let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
                (0.5 * (1.0 + (PI * cycles * 2.0 * progress).cos())).max(0.0)
            })
        }
        k => panic!("unknown lambda {k}"),
    }
}

/// `lr_lambda`: one function, or a list of them.
fn lambdas(v: &Value) -> LrLambdas {
    match v {
        Value::Array(a) => LrLambdas::Each(a.iter().map(lambda).collect()),
        v => LrLambdas::All(lambda(v)),
    }
}

/// PyTorch's keyword arguments to a [`Schedule`].
fn schedules(list: &Value) -> Vec<Schedule> {
    list.as_array().unwrap().iter().map(schedule).collect()
}

fn schedule(s: &Value) -> Schedule {
    let get = |k: &str| s.get(k).filter(|v| !v.is_null());
    let num = |k: &str, d: f64| get(k).map_or(d, f);
    let count = |k: &str, d: u64| get(k).map_or(d, u);
    match s["kind"].as_str().unwrap() {
        "StepLR" => StepLR {
            step_size: u(&s["step_size"]),
            gamma: num("gamma", 0.1),
        }
        .into(),
        "MultiStepLR" => MultiStepLR {
            milestones: s["milestones"].as_array().unwrap().iter().map(u).collect(),
            gamma: num("gamma", 0.1),
        }
        .into(),
        "ExponentialLR" => ExponentialLR::new(f(&s["gamma"])).into(),
        "CosineAnnealingLR" => CosineAnnealingLR {
            t_max: u(&s["T_max"]),
            eta_min: num("eta_min", 0.0),
        }
        .into(),
        "CosineAnnealingWarmRestarts" => CosineAnnealingWarmRestarts {
            t_0: u(&s["T_0"]),
            t_mult: count("T_mult", 1),
            eta_min: num("eta_min", 0.0),
        }
        .into(),
        "LinearLR" => {
            let d = LinearLR::default();
            LinearLR {
                start_factor: num("start_factor", d.start_factor),
                end_factor: num("end_factor", d.end_factor),
                total_iters: count("total_iters", d.total_iters),
            }
            .into()
        }
        "OneCycleLR" => {
            let d = OneCycleLR::new(per_group(&s["max_lr"]), u(&s["total_steps"]));
            OneCycleLR {
                pct_start: num("pct_start", d.pct_start),
                anneal_strategy: match get("anneal_strategy").and_then(|v| v.as_str()) {
                    Some("linear") => AnnealStrategy::Linear,
                    Some("cos") | None => AnnealStrategy::Cos,
                    Some(o) => panic!("anneal_strategy {o}"),
                },
                cycle_momentum: get("cycle_momentum").is_none_or(|v| v.as_bool().unwrap()),
                base_momentum: get("base_momentum").map_or(d.base_momentum.clone(), per_group),
                max_momentum: get("max_momentum").map_or(d.max_momentum.clone(), per_group),
                div_factor: num("div_factor", d.div_factor),
                final_div_factor: num("final_div_factor", d.final_div_factor),
                three_phase: get("three_phase").is_some_and(|v| v.as_bool().unwrap()),
                ..d
            }
            .into()
        }
        "CyclicLR" => {
            let d = CyclicLR::new(per_group(&s["base_lr"]), per_group(&s["max_lr"]));
            CyclicLR {
                step_size_up: count("step_size_up", d.step_size_up),
                step_size_down: get("step_size_down").map(u),
                mode: match get("mode").and_then(|v| v.as_str()) {
                    Some("triangular") | None => CyclicMode::Triangular,
                    Some("triangular2") => CyclicMode::Triangular2,
                    Some("exp_range") => CyclicMode::ExpRange,
                    Some(o) => panic!("mode {o}"),
                },
                gamma: num("gamma", d.gamma),
                cycle_momentum: get("cycle_momentum").is_none_or(|v| v.as_bool().unwrap()),
                base_momentum: get("base_momentum").map_or(d.base_momentum.clone(), per_group),
                max_momentum: get("max_momentum").map_or(d.max_momentum.clone(), per_group),
                ..d
            }
            .into()
        }
        "SequentialLR" => SequentialLR::new(
            schedules(&s["schedulers"]),
            s["milestones"]
                .as_array()
                .unwrap()
                .iter()
                .map(u)
                .collect::<Vec<_>>(),
        )
        .into(),
        "ConstantLR" => {
            let d = ConstantLR::default();
            ConstantLR {
                factor: num("factor", d.factor),
                total_iters: count("total_iters", d.total_iters),
            }
            .into()
        }
        "PolynomialLR" => {
            let d = PolynomialLR::default();
            PolynomialLR {
                total_iters: count("total_iters", d.total_iters),
                power: num("power", d.power),
            }
            .into()
        }
        "LambdaLR" => LambdaLR {
            lr_lambda: lambdas(&s["lr_lambda"]),
        }
        .into(),
        "MultiplicativeLR" => MultiplicativeLR {
            lr_lambda: lambdas(&s["lr_lambda"]),
        }
        .into(),
        "ChainedScheduler" => ChainedScheduler::new(schedules(&s["schedulers"])).into(),
        k => panic!("unknown scheduler {k}"),
    }
}

fn plateau(s: &Value) -> ReduceLROnPlateau {
    let get = |k: &str| s.get(k).filter(|v| !v.is_null());
    let d = ReduceLROnPlateau::default();
    ReduceLROnPlateau {
        mode: match get("mode").and_then(|v| v.as_str()) {
            Some("max") => PlateauMode::Max,
            _ => PlateauMode::Min,
        },
        factor: get("factor").map_or(d.factor, f),
        patience: get("patience").map_or(d.patience, u),
        threshold: get("threshold").map_or(d.threshold, f),
        threshold_mode: match get("threshold_mode").and_then(|v| v.as_str()) {
            Some("abs") => ThresholdMode::Abs,
            _ => ThresholdMode::Rel,
        },
        cooldown: get("cooldown").map_or(d.cooldown, u),
        min_lr: get("min_lr").map_or(d.min_lr.clone(), per_group),
        eps: get("eps").map_or(d.eps, f),
    }
}

/// Either kind of scheduler, as the replay drives it.
enum Driver {
    Epochs(Scheduler),
    Plateau(PlateauScheduler, Vec<f64>),
}

impl Driver {
    fn step(&mut self, i: usize, opt: &mut dyn Optimizer) {
        match self {
            Driver::Epochs(s) => s.step(opt).unwrap(),
            Driver::Plateau(s, metrics) => s.step_with(metrics[i], opt).unwrap(),
        }
    }
    fn last_epoch(&self) -> i64 {
        match self {
            Driver::Epochs(s) => s.last_epoch(),
            Driver::Plateau(s, _) => s.last_epoch(),
        }
    }
    fn last_lr(&self) -> Vec<f32> {
        match self {
            Driver::Epochs(s) => s.last_lr(),
            Driver::Plateau(s, _) => s.last_lr(),
        }
    }
    fn last_lr_f64(&self) -> Option<&[f64]> {
        match self {
            Driver::Epochs(s) => Some(s.last_lr_f64()),
            Driver::Plateau(..) => None,
        }
    }
    /// The state, through JSON text as it would be saved.
    fn state_json(&self) -> String {
        match self {
            Driver::Epochs(s) => serde_json::to_string(&s.state()).unwrap(),
            Driver::Plateau(s, _) => serde_json::to_string(&s.state()).unwrap(),
        }
    }
    fn load_json(&mut self, json: &str, opt: &mut dyn Optimizer) {
        match self {
            Driver::Epochs(s) => s.load_state(opt, &serde_json::from_str(json).unwrap()),
            Driver::Plateau(s, _) => s.load_state(opt, &serde_json::from_str(json).unwrap()),
        }
        .unwrap()
    }
}

fn attach(c: &Value, opt: &mut dyn Optimizer, group: Option<usize>) -> Driver {
    let s = &c["scheduler"];
    if s["kind"] == "ReduceLROnPlateau" {
        let metrics = c["metrics"].as_array().unwrap().iter().map(f).collect();
        let p = match group {
            None => PlateauScheduler::new(opt, plateau(s)),
            Some(g) => PlateauScheduler::for_group(opt, g, plateau(s)),
        };
        Driver::Plateau(p.unwrap(), metrics)
    } else {
        let r = match group {
            None => Scheduler::new(opt, schedule(s)),
            Some(g) => Scheduler::for_group(opt, g, schedule(s)),
        };
        Driver::Epochs(r.unwrap_or_else(|e| panic!("{}: {e}", c["name"])))
    }
}

/// Worst relative deviations seen (f32 in the optimizer, f64 in the scheduler).
#[derive(Default)]
struct Worst {
    f32: f64,
    f64: f64,
}

fn rel(got: f64, want: f64) -> f64 {
    if got == want {
        0.0
    } else {
        (got - want).abs() / want.abs().max(f64::MIN_POSITIVE)
    }
}

/// Compare group `g` of `opt` (driven as fixture group `fg`) at record `k`.
fn check(
    c: &Value,
    k: usize,
    opt: &dyn Optimizer,
    g: usize,
    fg: usize,
    f64_lr: Option<f64>,
    worst: &mut Worst,
) {
    let name = c["name"].as_str().unwrap();
    let mut want = f(&c["lr"][k][fg]);
    if want < 0.0 {
        // OneCycleLR's linear extrapolation at step total_steps (see the `schedule` module docs): clamped.
        assert_eq!(c["scheduler"]["kind"], "OneCycleLR", "{name}: negative lr");
        assert_eq!(
            k as u64,
            u(&c["steps"]),
            "{name}: negative lr before the last step"
        );
        want = 0.0;
    }
    let got = opt.group_lr(g).unwrap() as f64;
    let e = rel(got, want);
    assert!(
        e <= RTOL_F32,
        "{name} step {k} group {fg}: lr {got:e} vs torch {want:e} (rel {e:e})"
    );
    worst.f32 = worst.f32.max(e);
    if let Some(l) = f64_lr {
        let e = rel(l, want);
        assert!(
            e <= RTOL_F64,
            "{name} step {k} group {fg}: f64 lr {l:e} vs torch {want:e} (rel {e:e})"
        );
        worst.f64 = worst.f64.max(e);
    }
    if let Some(m) = c["momentum"].as_array() {
        let want = f(&m[k][fg]);
        let got = opt.group_momentum(g).unwrap().expect("momentum") as f64;
        let e = rel(got, want);
        assert!(
            e <= RTOL_F32,
            "{name} step {k} group {fg}: momentum {got} vs torch {want} (rel {e:e})"
        );
    }
}

/// Replay fixture `c` on `opt` (driving all groups, or only `group`, which then follows the
/// fixture's group 0).
fn replay(
    c: &Value,
    params: &mut Params,
    opt: &mut dyn Optimizer,
    group: Option<usize>,
    worst: &mut Worst,
) {
    let name = c["name"].as_str().unwrap();
    let mut sched = attach(c, opt, group);
    let groups: Vec<(usize, usize)> = match group {
        None => (0..opt.group_count()).map(|g| (g, g)).collect(),
        Some(g) => vec![(g, 0)],
    };
    let steps = u(&c["steps"]) as usize;
    for k in 0..=steps {
        if k > 0 {
            opt.step(params).unwrap();
            sched.step(k - 1, opt);
        }
        // ChainedScheduler has no last_epoch in PyTorch (null); here it counts the steps.
        let want_epoch = c["last_epoch"][k].as_i64().unwrap_or(k as i64);
        assert_eq!(sched.last_epoch(), want_epoch, "{name}: last_epoch at {k}");
        let last = sched.last_lr();
        for (i, &(g, fg)) in groups.iter().enumerate() {
            check(c, k, opt, g, fg, sched.last_lr_f64().map(|l| l[i]), worst);
            assert_eq!(last[i], opt.group_lr(g).unwrap(), "{name}: last_lr at {k}");
        }
    }
}

#[test]
fn pytorch_trajectories() {
    let cases = fixtures();
    assert!(cases.len() >= 50, "{} fixtures", cases.len());
    let mut kinds = std::collections::BTreeSet::new();
    for c in &cases {
        let (mut params, mut opt) = optimizer(&c["optimizer"]);
        let mut worst = Worst::default();
        replay(c, &mut params, opt.as_mut(), None, &mut worst);
        eprintln!(
            "{:<32} {} steps, worst rel. error: f32 lr {:.1e}, f64 lr {:.1e}",
            c["name"].as_str().unwrap(),
            c["steps"],
            worst.f32,
            worst.f64
        );
        kinds.insert(c["scheduler"]["kind"].as_str().unwrap().to_string());
    }
    for k in [
        "StepLR",
        "MultiStepLR",
        "ExponentialLR",
        "CosineAnnealingLR",
        "CosineAnnealingWarmRestarts",
        "LinearLR",
        "OneCycleLR",
        "CyclicLR",
        "ReduceLROnPlateau",
        "SequentialLR",
        "ConstantLR",
        "PolynomialLR",
        "LambdaLR",
        "MultiplicativeLR",
        "ChainedScheduler",
    ] {
        assert!(kinds.contains(k), "no fixture for {k}");
    }
}

/// A one-group fixture replayed on group 1 of a two-group optimizer: group 1 follows PyTorch,
/// group 0 (lr and momentum) is left alone.
#[test]
fn for_group_drives_only_that_group() {
    for name in [
        "cosine_tmax7",
        "cyclic_exp_range",
        "plateau_max_abs",
        "sequential_warmup_restarts",
        "step_default_gamma",
        "constant_half",
        "polynomial_sqrt",
        "lambda_pow_one_group",
        "chained_cyclic_exponential",
    ] {
        let c = case(name);
        let mut spec = c["optimizer"].clone();
        assert_eq!(spec["lrs"].as_array().unwrap().len(), 1, "{name}");
        let lr = f(&spec["lrs"][0]);
        spec["lrs"] = serde_json::json!([0.375, lr]);
        let (mut params, mut opt) = optimizer(&spec);
        let m0 = opt.group_momentum(0).unwrap();
        let mut worst = Worst::default();
        replay(&c, &mut params, opt.as_mut(), Some(1), &mut worst);
        assert_eq!(opt.group_lr(0).unwrap(), 0.375, "{name}: group 0 lr");
        assert_eq!(
            opt.group_momentum(0).unwrap(),
            m0,
            "{name}: group 0 momentum"
        );
    }
}

/// Recursive schedulers continue from the optimizer's lr when something else changed it, as
/// PyTorch's chainable `get_lr` does.
#[test]
fn recursive_forms_chain_from_the_current_lr() {
    let (_p, mut opt) = optimizer(&serde_json::json!({"kind": "sgd", "lrs": [0.1]}));
    let mut s = Scheduler::new(opt.as_mut(), ExponentialLR::new(0.5)).unwrap();
    s.step(opt.as_mut()).unwrap();
    assert_eq!(opt.lr(), 0.05);
    opt.set_group_lr(0, 1.0).unwrap();
    s.step(opt.as_mut()).unwrap();
    assert_eq!(opt.lr(), 0.5);
    assert_eq!(s.last_lr(), vec![0.5]);
    assert_eq!(s.last_epoch(), 2);
    // Trait objects work.
    let mut boxed: Box<dyn LrScheduler> = Box::new(s);
    boxed.step(opt.as_mut()).unwrap();
    assert_eq!(opt.lr(), 0.25);
}

/// What the optimizer looks like to a scheduler: every group's lr and momentum.
fn snapshot(opt: &dyn Optimizer) -> Vec<(f32, Option<f32>)> {
    (0..opt.group_count())
        .map(|g| (opt.group_lr(g).unwrap(), opt.group_momentum(g).unwrap()))
        .collect()
}

fn sgd2() -> (Params, Box<dyn Optimizer>) {
    optimizer(&serde_json::json!({"kind": "sgd", "lrs": [0.1, 0.01], "momentum": 0.9}))
}

/// `r` is an `InvalidScheduler` error for option `name`, and `opt` is as `before`.
fn invalid<T: std::fmt::Debug>(
    r: Result<T, Error>,
    name: &str,
    opt: &dyn Optimizer,
    before: &[(f32, Option<f32>)],
) {
    match r {
        Err(Error::InvalidScheduler { name: n, .. }) => assert_eq!(n, name),
        other => panic!("{name}: expected InvalidScheduler, got {other:?}"),
    }
    assert_eq!(snapshot(opt), before, "{name}: the optimizer changed");
}

#[test]
fn invalid_options_are_rejected_before_touching_the_optimizer() {
    let (_p, mut opt) = sgd2();
    let before = snapshot(opt.as_ref());
    let cases: Vec<(&str, Schedule)> = vec![
        ("step_size", StepLR::new(0).into()),
        (
            "gamma",
            StepLR {
                gamma: 0.0,
                ..StepLR::new(3)
            }
            .into(),
        ),
        (
            "gamma",
            StepLR {
                gamma: -0.5,
                ..StepLR::new(3)
            }
            .into(),
        ),
        (
            "gamma",
            StepLR {
                gamma: f64::NAN,
                ..StepLR::new(3)
            }
            .into(),
        ),
        ("milestones", MultiStepLR::new(vec![5, 3]).into()),
        (
            "gamma",
            MultiStepLR {
                gamma: 0.0,
                ..MultiStepLR::new(vec![2])
            }
            .into(),
        ),
        ("gamma", ExponentialLR::new(0.0).into()),
        ("gamma", ExponentialLR::new(f64::INFINITY).into()),
        ("T_max", CosineAnnealingLR::new(0).into()),
        (
            "eta_min",
            CosineAnnealingLR {
                eta_min: -1e-3,
                ..CosineAnnealingLR::new(5)
            }
            .into(),
        ),
        ("T_0", CosineAnnealingWarmRestarts::new(0).into()),
        (
            "T_mult",
            CosineAnnealingWarmRestarts {
                t_mult: 0,
                ..CosineAnnealingWarmRestarts::new(3)
            }
            .into(),
        ),
        (
            "eta_min",
            CosineAnnealingWarmRestarts {
                eta_min: f64::NAN,
                ..CosineAnnealingWarmRestarts::new(3)
            }
            .into(),
        ),
        (
            "start_factor",
            LinearLR {
                start_factor: 0.0,
                ..Default::default()
            }
            .into(),
        ),
        (
            "start_factor",
            LinearLR {
                start_factor: 1.5,
                ..Default::default()
            }
            .into(),
        ),
        (
            "end_factor",
            LinearLR {
                end_factor: 1.5,
                ..Default::default()
            }
            .into(),
        ),
        (
            "end_factor",
            LinearLR {
                end_factor: -0.1,
                ..Default::default()
            }
            .into(),
        ),
        (
            "total_iters",
            LinearLR {
                total_iters: 0,
                ..Default::default()
            }
            .into(),
        ),
        ("total_steps", OneCycleLR::new(0.1, 0).into()),
        (
            "pct_start",
            OneCycleLR {
                pct_start: 1.5,
                ..OneCycleLR::new(0.1, 10)
            }
            .into(),
        ),
        (
            "pct_start",
            OneCycleLR {
                pct_start: -0.1,
                ..OneCycleLR::new(0.1, 10)
            }
            .into(),
        ),
        // pct_start * total_steps == 1: a first phase of zero steps (PyTorch: ZeroDivisionError).
        (
            "pct_start",
            OneCycleLR {
                pct_start: 0.1,
                ..OneCycleLR::new(0.1, 10)
            }
            .into(),
        ),
        ("max_lr", OneCycleLR::new(0.0, 10).into()),
        ("max_lr", OneCycleLR::new(vec![0.1, 0.2, 0.3], 10).into()),
        (
            "div_factor",
            OneCycleLR {
                div_factor: 0.0,
                ..OneCycleLR::new(0.1, 10)
            }
            .into(),
        ),
        (
            "final_div_factor",
            OneCycleLR {
                final_div_factor: -1.0,
                ..OneCycleLR::new(0.1, 10)
            }
            .into(),
        ),
        (
            "base_momentum",
            OneCycleLR {
                base_momentum: vec![0.8; 3].into(),
                ..OneCycleLR::new(0.1, 10)
            }
            .into(),
        ),
        ("max_lr", CyclicLR::new(0.1, 0.01).into()),
        ("base_lr", CyclicLR::new(-0.01, 0.1).into()),
        ("base_lr", CyclicLR::new(vec![0.01; 3], 0.1).into()),
        (
            "step_size_up",
            CyclicLR {
                step_size_up: 0,
                ..CyclicLR::new(0.01, 0.1)
            }
            .into(),
        ),
        (
            "gamma",
            CyclicLR {
                gamma: 0.0,
                mode: CyclicMode::ExpRange,
                ..CyclicLR::new(0.01, 0.1)
            }
            .into(),
        ),
        (
            "max_momentum",
            CyclicLR {
                max_momentum: f64::NAN.into(),
                ..CyclicLR::new(0.01, 0.1)
            }
            .into(),
        ),
        ("schedulers", SequentialLR::new(vec![], vec![]).into()),
        (
            "milestones",
            SequentialLR::new(vec![StepLR::new(2).into(), StepLR::new(3).into()], vec![]).into(),
        ),
        (
            "milestones",
            SequentialLR::new(vec![StepLR::new(2).into()], vec![4]).into(),
        ),
        (
            "milestones",
            SequentialLR::new(
                vec![
                    StepLR::new(2).into(),
                    StepLR::new(3).into(),
                    StepLR::new(4).into(),
                ],
                vec![5, 5],
            )
            .into(),
        ),
        (
            "schedulers",
            SequentialLR::new(
                vec![
                    StepLR::new(2).into(),
                    SequentialLR::new(vec![StepLR::new(2).into()], vec![]).into(),
                ],
                vec![3],
            )
            .into(),
        ),
        (
            "T_max",
            SequentialLR::new(
                vec![LinearLR::default().into(), CosineAnnealingLR::new(0).into()],
                vec![5],
            )
            .into(),
        ),
        // ConstantLR: factor in (0, 1] (PyTorch: [0, 1], then 1/0 at total_iters), total_iters
        // >= 1 (PyTorch applies the factor forever with 0).
        ("factor", ConstantLR::new(0.0, 5).into()),
        ("factor", ConstantLR::new(1.5, 5).into()),
        ("factor", ConstantLR::new(-0.1, 5).into()),
        ("factor", ConstantLR::new(f64::NAN, 5).into()),
        ("total_iters", ConstantLR::new(0.5, 0).into()),
        // PolynomialLR: total_iters >= 1 (PyTorch's closed form divides by it), power >= 0.
        ("total_iters", PolynomialLR::new(0, 1.0).into()),
        ("power", PolynomialLR::new(10, -1.0).into()),
        ("power", PolynomialLR::new(10, f64::INFINITY).into()),
        // One function per group, or one for all.
        (
            "lr_lambda",
            LambdaLR::per_group(vec![LrLambda::new(|_| 1.0); 3]).into(),
        ),
        (
            "lr_lambda",
            MultiplicativeLR::per_group(vec![LrLambda::new(|_| 0.9); 3]).into(),
        ),
        ("schedulers", ChainedScheduler::new(vec![]).into()),
        (
            "gamma",
            ChainedScheduler::new(vec![
                ConstantLR::default().into(),
                ExponentialLR::new(-1.0).into(),
            ])
            .into(),
        ),
        // A ChainedScheduler only first in a SequentialLR (PyTorch raises when restarting one),
        // and no SequentialLR inside a SequentialLR through one.
        (
            "schedulers",
            SequentialLR::new(
                vec![
                    StepLR::new(2).into(),
                    ChainedScheduler::new(vec![StepLR::new(3).into()]).into(),
                ],
                vec![4],
            )
            .into(),
        ),
        (
            "schedulers",
            SequentialLR::new(
                vec![
                    ChainedScheduler::new(vec![
                        StepLR::new(3).into(),
                        SequentialLR::new(vec![StepLR::new(2).into()], vec![]).into(),
                    ])
                    .into(),
                    StepLR::new(2).into(),
                ],
                vec![4],
            )
            .into(),
        ),
        (
            "factor",
            SequentialLR::new(
                vec![LinearLR::default().into(), ConstantLR::new(2.0, 3).into()],
                vec![5],
            )
            .into(),
        ),
    ];
    for (name, s) in cases {
        invalid(
            Scheduler::new(opt.as_mut(), s.clone()),
            name,
            opt.as_ref(),
            &before,
        );
        invalid(
            Scheduler::for_group(opt.as_mut(), 1, s),
            name,
            opt.as_ref(),
            &before,
        );
    }
    // Per-group values: group 1's max_lr below its base_lr.
    invalid(
        Scheduler::new(opt.as_mut(), CyclicLR::new([0.01, 0.01], [0.1, 0.001])),
        "max_lr",
        opt.as_ref(),
        &before,
    );

    let plateaus = [
        (
            "factor",
            ReduceLROnPlateau {
                factor: 1.0,
                ..Default::default()
            },
        ),
        (
            "factor",
            ReduceLROnPlateau {
                factor: 1.5,
                ..Default::default()
            },
        ),
        (
            "factor",
            ReduceLROnPlateau {
                factor: -0.1,
                ..Default::default()
            },
        ),
        (
            "threshold",
            ReduceLROnPlateau {
                threshold: -1e-4,
                ..Default::default()
            },
        ),
        (
            "eps",
            ReduceLROnPlateau {
                eps: f64::NAN,
                ..Default::default()
            },
        ),
        (
            "min_lr",
            ReduceLROnPlateau {
                min_lr: (-1e-3).into(),
                ..Default::default()
            },
        ),
        (
            "min_lr",
            ReduceLROnPlateau {
                min_lr: vec![0.0; 3].into(),
                ..Default::default()
            },
        ),
    ];
    for (name, p) in plateaus {
        invalid(
            PlateauScheduler::new(opt.as_ref(), p),
            name,
            opt.as_ref(),
            &before,
        );
    }
}

#[test]
fn unknown_group_is_rejected() {
    let (_p, mut opt) = sgd2();
    let before = snapshot(opt.as_ref());
    let r = Scheduler::for_group(opt.as_mut(), 2, StepLR::new(1));
    assert!(matches!(r, Err(Error::InvalidGroups(_))), "{r:?}");
    let r = PlateauScheduler::for_group(opt.as_ref(), 5, ReduceLROnPlateau::default());
    assert!(matches!(r, Err(Error::InvalidGroups(_))), "{r:?}");
    assert_eq!(snapshot(opt.as_ref()), before);
}

/// CyclicLR and OneCycleLR cycle momentum by default; an optimizer without one (Adagrad) or
/// with it switched off (SGD built with momentum 0) is a typed error and stays untouched.
#[test]
fn cycling_momentum_needs_one() {
    let (_p, mut adagrad) = optimizer(&serde_json::json!({"kind": "adagrad", "lrs": [0.01, 0.05]}));
    let (_q, mut plain_sgd) = optimizer(&serde_json::json!({"kind": "sgd", "lrs": [0.1, 0.02]}));
    let schedules: [Schedule; 2] = [
        CyclicLR::new(0.001, 0.01).into(),
        OneCycleLR::new(0.1, 10).into(),
    ];
    for opt in [&mut adagrad, &mut plain_sgd] {
        let before = snapshot(opt.as_ref());
        for s in &schedules {
            match Scheduler::new(opt.as_mut(), s.clone()) {
                Err(Error::NoMomentum {
                    scheduler,
                    group: 0,
                    ..
                }) => assert_eq!(scheduler, s.name()),
                other => panic!("{} on {}: {other:?}", s.name(), opt.name()),
            }
            assert_eq!(snapshot(opt.as_ref()), before);
        }
        // Inside a SequentialLR too.
        let seq = SequentialLR::new(
            vec![LinearLR::default().into(), schedules[0].clone()],
            vec![3],
        );
        assert!(matches!(
            Scheduler::new(opt.as_mut(), seq),
            Err(Error::NoMomentum { .. })
        ));
        assert_eq!(snapshot(opt.as_ref()), before);
    }
    // Without momentum cycling both work on Adagrad.
    let s = CyclicLR {
        cycle_momentum: false,
        ..CyclicLR::new(0.001, 0.01)
    };
    Scheduler::new(adagrad.as_mut(), s).unwrap();
    assert_eq!(adagrad.lr(), 0.001);
}

/// OneCycleLR allows `total_steps` steps and refuses the next, as PyTorch raises; the refused
/// step changes nothing and can be retried (and refused) again.
#[test]
fn one_cycle_refuses_to_step_past_the_end() {
    let (mut params, mut opt) = sgd2();
    let mut s = Scheduler::new(opt.as_mut(), OneCycleLR::new(vec![0.1, 0.05], 5)).unwrap();
    for _ in 0..5 {
        opt.step(&mut params).unwrap();
        s.step(opt.as_mut()).unwrap();
    }
    assert_eq!(s.last_epoch(), 5);
    let before = snapshot(opt.as_ref());
    let last = s.last_lr();
    for _ in 0..2 {
        match s.step(opt.as_mut()) {
            Err(Error::ScheduleExhausted {
                scheduler: "OneCycleLR",
                step: 6,
                total_steps: 5,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(snapshot(opt.as_ref()), before);
        assert_eq!(s.last_epoch(), 5);
        assert_eq!(s.last_lr(), last);
    }
}

/// A failure partway through writing the groups puts every group back: Adam's beta1 must stay
/// below 1, so a per-group `max_momentum` of 1.0 fails in group 1 after group 0 was written.
#[test]
fn a_failed_write_changes_nothing() {
    let (_p, mut opt) = optimizer(&serde_json::json!({"kind": "adam", "lrs": [0.1, 0.2]}));
    let before = snapshot(opt.as_ref());
    let s = CyclicLR {
        max_momentum: vec![0.95, 1.0].into(),
        ..CyclicLR::new(0.01, 0.1)
    };
    let r = Scheduler::new(opt.as_mut(), s);
    assert!(
        matches!(r, Err(Error::InvalidHyperparameter { .. })),
        "{r:?}"
    );
    assert_eq!(snapshot(opt.as_ref()), before);
}

/// An lr_lambda giving a NaN or negative factor: the optimizer refuses the lr, so attaching or
/// stepping fails with its typed error and nothing changes.
#[test]
fn a_bad_lambda_value_changes_nothing() {
    let (_p, mut opt) = sgd2();
    let before = snapshot(opt.as_ref());
    let r = Scheduler::new(opt.as_mut(), LambdaLR::new(|_| -1.0));
    assert!(
        matches!(r, Err(Error::InvalidHyperparameter { name: "lr", .. })),
        "{r:?}"
    );
    assert_eq!(snapshot(opt.as_ref()), before);

    let mut s = Scheduler::new(
        opt.as_mut(),
        MultiplicativeLR::new(|e| if e == 3 { f64::NAN } else { 0.5 }),
    )
    .unwrap();
    s.step(opt.as_mut()).unwrap();
    s.step(opt.as_mut()).unwrap();
    let (before, state) = (snapshot(opt.as_ref()), s.state());
    for _ in 0..2 {
        let r = s.step(opt.as_mut());
        assert!(
            matches!(r, Err(Error::InvalidHyperparameter { .. })),
            "{r:?}"
        );
        assert_eq!(snapshot(opt.as_ref()), before);
        assert_eq!(s.state(), state);
    }
}

/// Closures keep `Schedule`'s derives meaningful: clones are equal, other functions are not.
#[test]
fn schedules_with_functions_compare_by_identity() {
    let f = LrLambda::new(|e| 0.9f64.powf(e as f64));
    let a: Schedule = LambdaLR {
        lr_lambda: f.clone().into(),
    }
    .into();
    assert_eq!(a.clone(), a);
    let b: Schedule = LambdaLR {
        lr_lambda: LrLambda::new(|e| 0.9f64.powf(e as f64)).into(),
    }
    .into();
    assert_ne!(a, b);
    assert_eq!(a.name(), "LambdaLR");
    assert!(format!("{a:?}").contains("LrLambda(0x"), "{a:?}");
}

/// What a scheduler looks like from outside, after each step: its full state (every counter,
/// f64 lr and sub-state) and the optimizer's groups.
fn observe(d: &Driver, opt: &dyn Optimizer) -> (String, Vec<(f32, Option<f32>)>) {
    (d.state_json(), snapshot(opt))
}

/// Every fixture: interrupted after `split` steps, its state saved as JSON text, loaded into a
/// scheduler built the same way on a fresh optimizer (whose lrs are the initial ones), and run
/// to the end: every step equals the uninterrupted run, bit for bit (f64 lrs, counters,
/// momenta, the optimizer's f32 lr and momentum).
#[test]
fn resuming_from_a_saved_state_is_exact() {
    let mut runs = 0;
    for c in &fixtures() {
        let name = c["name"].as_str().unwrap();
        let steps = u(&c["steps"]) as usize;
        let (_p, mut opt) = optimizer(&c["optimizer"]);
        let mut sched = attach(c, opt.as_mut(), None);
        let mut want = vec![observe(&sched, opt.as_ref())];
        for k in 0..steps {
            sched.step(k, opt.as_mut());
            want.push(observe(&sched, opt.as_ref()));
        }
        let mut splits = vec![0, 1, 7, steps / 2, steps - 1, steps];
        splits.dedup();
        for split in splits {
            let (_p, mut opt) = optimizer(&c["optimizer"]);
            let mut first = attach(c, opt.as_mut(), None);
            for k in 0..split {
                first.step(k, opt.as_mut());
            }
            let json = first.state_json();
            drop(first);
            let (_q, mut opt2) = optimizer(&c["optimizer"]);
            let mut resumed = attach(c, opt2.as_mut(), None);
            resumed.load_json(&json, opt2.as_mut());
            assert_eq!(
                observe(&resumed, opt2.as_ref()),
                want[split],
                "{name}: loaded at {split}"
            );
            for k in split..steps {
                resumed.step(k, opt2.as_mut());
                assert_eq!(
                    observe(&resumed, opt2.as_ref()),
                    want[k + 1],
                    "{name}: resumed at {split}, step {}",
                    k + 1
                );
            }
            runs += 1;
        }
    }
    eprintln!("{runs} interrupted runs resumed exactly");
}

/// `r` is an `Error::SchedulerState` about `what`.
fn state_error<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(Error::SchedulerState { what: w, .. }) => assert_eq!(w, what),
        other => panic!("{what}: expected SchedulerState, got {other:?}"),
    }
}

/// Loading checks the state against the scheduler (kind, groups, the chain inside, impossible
/// values) and changes nothing, neither scheduler nor optimizer, when it does not fit.
#[test]
fn load_state_rejects_what_does_not_fit() {
    let (_p, mut opt) = sgd2();
    let mut step = Scheduler::new(opt.as_mut(), StepLR::new(3)).unwrap();
    step.step(opt.as_mut()).unwrap();
    let good = step.state();

    // Try `state` on `sched`: the error names `what`, and nothing changed.
    fn reject(sched: &mut Scheduler, opt: &mut dyn Optimizer, state: &SchedulerState, what: &str) {
        let (before, own) = (snapshot(opt), sched.state());
        state_error(sched.load_state(opt, state), what);
        assert_eq!(snapshot(opt), before, "{what}: the optimizer changed");
        assert_eq!(sched.state(), own, "{what}: the scheduler changed");
    }

    let mut cosine = Scheduler::new(opt.as_mut(), CosineAnnealingLR::new(10)).unwrap();
    reject(&mut cosine, opt.as_mut(), &good, "kind");
    let mut one = Scheduler::for_group(opt.as_mut(), 1, StepLR::new(3)).unwrap();
    reject(&mut one, opt.as_mut(), &good, "groups");
    let mut bad = good.clone();
    bad.last_lr[1] = f64::NAN;
    reject(&mut step, opt.as_mut(), &bad, "last_lr[1]");
    let mut bad = good.clone();
    bad.base_lrs.pop();
    reject(&mut step, opt.as_mut(), &bad, "base_lrs");
    let mut bad = good.clone();
    bad.last_epoch = -5;
    reject(&mut step, opt.as_mut(), &bad, "last_epoch");
    let mut bad = good.clone();
    bad.t_i = Some(3);
    reject(&mut step, opt.as_mut(), &bad, "T_cur, T_i");
    let mut bad = good.clone();
    bad.schedulers.push(good.clone());
    reject(&mut step, opt.as_mut(), &bad, "schedulers");

    // CosineAnnealingWarmRestarts: T_i >= 1 (it is a divisor), both counters present.
    let mut restarts = Scheduler::new(opt.as_mut(), CosineAnnealingWarmRestarts::new(4)).unwrap();
    let mut bad = restarts.state();
    bad.t_i = Some(0);
    reject(&mut restarts, opt.as_mut(), &bad, "T_i");
    bad.t_i = None;
    reject(&mut restarts, opt.as_mut(), &bad, "T_cur, T_i");

    // The chain inside a SequentialLR: the same number of schedulers, each of the same kind.
    let seq = || {
        SequentialLR::new(
            vec![LinearLR::default().into(), StepLR::new(2).into()],
            vec![5],
        )
    };
    let mut a = Scheduler::new(opt.as_mut(), seq()).unwrap();
    let mut bad = a.state();
    bad.schedulers[1].kind = "ExponentialLR".into();
    reject(&mut a, opt.as_mut(), &bad, "schedulers[1].kind");
    let mut bad = a.state();
    bad.schedulers.pop();
    reject(&mut a, opt.as_mut(), &bad, "schedulers");
    let mut bad = a.state();
    bad.schedulers[0].last_lr[0] = -1.0;
    reject(&mut a, opt.as_mut(), &bad, "schedulers[0].last_lr[0]");

    // Momentum: present exactly where the schedule cycles it.
    let mut cyclic = Scheduler::new(opt.as_mut(), CyclicLR::new(0.01, 0.1)).unwrap();
    let mut bad = cyclic.state();
    assert_eq!(bad.momentum, Some(vec![0.9, 0.9]));
    bad.momentum = None;
    reject(&mut cyclic, opt.as_mut(), &bad, "momentum");
    let mut bad = cyclic.state();
    bad.momentum = Some(vec![0.9]);
    reject(&mut cyclic, opt.as_mut(), &bad, "momentum");
    let mut bad = good.clone();
    bad.momentum = Some(vec![0.9, 0.9]);
    reject(&mut step, opt.as_mut(), &bad, "momentum");

    // A value the optimizer refuses (Adam's beta1 must be < 1): its error, nothing changed.
    let (_q, mut adam) = optimizer(&serde_json::json!({"kind": "adam", "lrs": [0.1, 0.2]}));
    let mut cyc = Scheduler::new(adam.as_mut(), CyclicLR::new(0.01, 0.1)).unwrap();
    let mut bad = cyc.state();
    bad.momentum = Some(vec![0.9, 1.0]);
    let (before, own) = (snapshot(adam.as_ref()), cyc.state());
    let r = cyc.load_state(adam.as_mut(), &bad);
    assert!(
        matches!(r, Err(Error::InvalidHyperparameter { .. })),
        "{r:?}"
    );
    assert_eq!((snapshot(adam.as_ref()), cyc.state()), (before, own));

    // The state survives JSON with unknown fields ignored; broken JSON is serde's error.
    let mut v = serde_json::to_value(&good).unwrap();
    v["future_field"] = serde_json::json!(1);
    let back: SchedulerState = serde_json::from_value(v).unwrap();
    assert_eq!(back, good);

    // ReduceLROnPlateau.
    let mut plateau = PlateauScheduler::new(opt.as_ref(), ReduceLROnPlateau::default()).unwrap();
    plateau.step_with(1.0, opt.as_mut()).unwrap();
    let good = plateau.state();
    let reject_plateau =
        |p: &mut PlateauScheduler, opt: &mut dyn Optimizer, s: &PlateauState, what: &str| {
            let (before, own) = (snapshot(opt), p.state());
            state_error(p.load_state(opt, s), what);
            assert_eq!((snapshot(opt), p.state()), (before, own), "{what}");
        };
    let mut bad = good.clone();
    bad.kind = "StepLR".into();
    reject_plateau(&mut plateau, opt.as_mut(), &bad, "kind");
    let mut bad = good.clone();
    bad.best = f64::NAN;
    reject_plateau(&mut plateau, opt.as_mut(), &bad, "best");
    let mut bad = good.clone();
    bad.last_lr = vec![0.1];
    reject_plateau(&mut plateau, opt.as_mut(), &bad, "last_lr");
    let mut bad = good.clone();
    bad.num_bad_epochs = u64::MAX;
    reject_plateau(&mut plateau, opt.as_mut(), &bad, "num_bad_epochs");
    let mut one =
        PlateauScheduler::for_group(opt.as_ref(), 0, ReduceLROnPlateau::default()).unwrap();
    reject_plateau(&mut one, opt.as_mut(), &good, "groups");
    // An infinite best goes through JSON as a string.
    let fresh = PlateauScheduler::new(opt.as_ref(), ReduceLROnPlateau::default()).unwrap();
    let json = serde_json::to_string(&fresh.state()).unwrap();
    assert!(json.contains(r#""best":"inf""#), "{json}");
    let back: PlateauState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, fresh.state());
}

/// Scheduler states in a checkpoint: saved with the optimizer, read back exactly, and a run
/// resumed from the file alone (optimizer restored, schedulers rebuilt and loaded) continues as
/// if uninterrupted.
#[test]
fn scheduler_states_travel_in_a_checkpoint() {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-sched-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.safetensors");
    let gpu = gpu();
    let config = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    };
    let build = |params: &Params| {
        let groups = vec![
            ParamGroup::new(["a"], config.clone()),
            ParamGroup::new(
                ["b"],
                SgdConfig {
                    lr: 0.05,
                    ..config.clone()
                },
            ),
        ];
        Sgd::with_groups(params, groups).unwrap()
    };
    let cyclic = || {
        ChainedScheduler::new(vec![
            CyclicLR {
                step_size_up: 3,
                ..CyclicLR::new(0.01, 0.1)
            }
            .into(),
            ExponentialLR::new(0.97).into(),
        ])
    };
    let plateau = || ReduceLROnPlateau {
        patience: 1,
        ..Default::default()
    };
    let metric = |k: usize| 1.0 / (1.0 + (k % 5) as f64);
    let grads = |params: &mut Params| {
        params.write_grad("a", &[0.1, -0.2, 0.3]).unwrap();
        params.write_grad("b", &[0.4, 0.5]).unwrap();
    };
    let init_a = [1.0f32, 2.0, 3.0];
    let init_b = [4.0f32, 5.0];
    let tensors: [(&str, &[f32]); 2] = [("a", &init_a), ("b", &init_b)];

    let mut params = Params::new(&gpu, &tensors).unwrap();
    let mut opt = build(&params);
    let mut s0 = Scheduler::for_group(&mut opt, 0, cyclic()).unwrap();
    let mut s1 = PlateauScheduler::for_group(&opt, 1, plateau()).unwrap();
    let run = |k: usize,
               params: &mut Params,
               opt: &mut Sgd,
               s0: &mut Scheduler,
               s1: &mut PlateauScheduler| {
        grads(params);
        opt.step(params).unwrap();
        s0.step(opt).unwrap();
        s1.step_with(metric(k), opt).unwrap();
    };
    for k in 0..6 {
        run(k, &mut params, &mut opt, &mut s0, &mut s1);
    }
    let records: Vec<SchedulerRecord> = vec![s0.state().into(), s1.state().into()];
    checkpoint::save(
        &path,
        &params,
        &opt,
        SaveOptions::default().schedulers(&records),
    )
    .unwrap();
    for k in 6..15 {
        run(k, &mut params, &mut opt, &mut s0, &mut s1);
    }

    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.schedulers(), &records[..]);
    let mut params2 = ck.params(&gpu).unwrap();
    let mut opt2 = build(&params2);
    ck.restore(&mut params2, &mut opt2).unwrap();
    // Built after the restore, so their initial steps clobber the restored lrs; loading fixes them.
    let mut r0 = Scheduler::for_group(&mut opt2, 0, cyclic()).unwrap();
    let mut r1 = PlateauScheduler::for_group(&opt2, 1, plateau()).unwrap();
    match ck.schedulers() {
        [SchedulerRecord::Epochs(a), SchedulerRecord::Plateau(b)] => {
            r0.load_state(&mut opt2, a).unwrap();
            r1.load_state(&mut opt2, b).unwrap();
        }
        other => panic!("{other:?}"),
    }
    for k in 6..15 {
        run(k, &mut params2, &mut opt2, &mut r0, &mut r1);
    }
    assert_eq!(r0.state(), s0.state());
    assert_eq!(r1.state(), s1.state());
    assert_eq!(snapshot(&opt2), snapshot(&opt));
    for t in ["a", "b"] {
        assert_eq!(params2.read(t).unwrap(), params.read(t).unwrap(), "{t}");
    }

    // A checkpoint written by `save` has none, and `load` ignores them.
    let plain = dir.join("plain.safetensors");
    checkpoint::save(&plain, &params, &opt, SaveOptions::default()).unwrap();
    assert!(Checkpoint::open(&plain).unwrap().schedulers().is_empty());
    let mut opt3 = build(&params2);
    checkpoint::load(&path, &mut params2, &mut opt3).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Values a damaged or adversarial state may hold where a number is expected.
fn wild_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(1e300),
        Just(-1.0),
        Just(-0.0),
        0.0..1.0f64,
        any::<f64>(),
    ]
}

fn wild_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just((1i64 << 53) + 1),
        Just(1i64 << 53),
        -3..40i64,
        any::<i64>(),
    ]
}

fn wild_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(u64::MAX), Just(1u64 << 53), 0..40u64, any::<u64>()]
}

fn wild_lrs() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(wild_f64(), 0..4)
}

fn wild_groups() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![0, 1]),
        Just(vec![1, 0]),
        Just(vec![0]),
        Just(vec![]),
        prop::collection::vec(any::<usize>(), 0..4),
        Just(vec![0; 1000]),
    ]
}

fn wild_kind() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("StepLR".to_string()),
        Just("CosineAnnealingWarmRestarts".to_string()),
        Just("CyclicLR".to_string()),
        Just("ChainedScheduler".to_string()),
        Just("ReduceLROnPlateau".to_string()),
        ".{0,80}",
    ]
}

/// Replacements for some fields of one [`SchedulerState`] (`None`: keep the field).
#[derive(Clone, Debug)]
struct Damage {
    kind: Option<String>,
    groups: Option<Vec<usize>>,
    last_epoch: Option<i64>,
    step_count: Option<u64>,
    base_lrs: Option<Vec<f64>>,
    last_lr: Option<Vec<f64>>,
    t_cur: Option<Option<i64>>,
    t_i: Option<Option<i64>>,
    momentum: Option<Option<Vec<f64>>>,
    /// A new number of inner states (cut, or repeated from the first).
    schedulers: Option<usize>,
}

fn damage() -> impl Strategy<Value = Damage> {
    let w = 0.15;
    (
        (
            prop::option::weighted(w, wild_kind()),
            prop::option::weighted(w, wild_groups()),
            prop::option::weighted(w, wild_i64()),
            prop::option::weighted(w, wild_u64()),
            prop::option::weighted(w, wild_lrs()),
        ),
        (
            prop::option::weighted(w, wild_lrs()),
            prop::option::weighted(w, prop::option::of(wild_i64())),
            prop::option::weighted(w, prop::option::of(wild_i64())),
            prop::option::weighted(w, prop::option::of(wild_lrs())),
            prop::option::weighted(w, 0..4usize),
        ),
    )
        .prop_map(
            |(
                (kind, groups, last_epoch, step_count, base_lrs),
                (last_lr, t_cur, t_i, momentum, schedulers),
            )| Damage {
                kind,
                groups,
                last_epoch,
                step_count,
                base_lrs,
                last_lr,
                t_cur,
                t_i,
                momentum,
                schedulers,
            },
        )
}

fn apply_damage(st: &mut SchedulerState, d: &Damage) {
    if let Some(v) = &d.kind {
        st.kind.clone_from(v);
    }
    if let Some(v) = &d.groups {
        st.groups.clone_from(v);
    }
    if let Some(v) = d.last_epoch {
        st.last_epoch = v;
    }
    if let Some(v) = d.step_count {
        st.step_count = v;
    }
    if let Some(v) = &d.base_lrs {
        st.base_lrs.clone_from(v);
    }
    if let Some(v) = &d.last_lr {
        st.last_lr.clone_from(v);
    }
    if let Some(v) = d.t_cur {
        st.t_cur = v;
    }
    if let Some(v) = d.t_i {
        st.t_i = v;
    }
    if let Some(v) = &d.momentum {
        st.momentum.clone_from(v);
    }
    if let Some(n) = d.schedulers {
        match st.schedulers.first().cloned() {
            Some(first) => st.schedulers.resize(n, first),
            None => st.schedulers = vec![st.clone(); n.min(1)],
        }
    }
}

/// Random damage to valid states of every kind of scheduler (counts near and past the limits,
/// NaN, ±inf, negative and huge lrs, other kinds and groups, missing or extra fields and inner
/// states): `load_state` returns `Ok` or a typed `Err` and never panics; an `Err` changes
/// nothing; an `Ok` takes over the state exactly, and stepping on from it never panics either.
#[test]
fn load_state_survives_random_states() {
    use proptest::test_runner::{Config, TestRunner};
    let (_p, mut opt) = sgd2();
    let schedules: Vec<Schedule> = vec![
        StepLR::new(3).into(),
        CosineAnnealingWarmRestarts {
            t_mult: 2,
            ..CosineAnnealingWarmRestarts::new(4)
        }
        .into(),
        CyclicLR::new(0.01, 0.1).into(),
        OneCycleLR::new(0.1, 20).into(),
        LambdaLR::new(|e| 1.0 / (1.0 + e as f64)).into(),
        SequentialLR::new(
            vec![
                ChainedScheduler::new(vec![
                    LinearLR::default().into(),
                    CosineAnnealingWarmRestarts::new(3).into(),
                ])
                .into(),
                CosineAnnealingLR::new(10).into(),
            ],
            vec![5],
        )
        .into(),
    ];
    let scheds: Vec<Scheduler> = schedules
        .into_iter()
        .map(|s| {
            let mut sched = Scheduler::new(opt.as_mut(), s).unwrap();
            sched.step(opt.as_mut()).unwrap();
            sched
        })
        .collect();
    let bases: Vec<SchedulerState> = scheds.iter().map(Scheduler::state).collect();
    let mut plateau = PlateauScheduler::new(opt.as_ref(), ReduceLROnPlateau::default()).unwrap();
    plateau.step_with(1.0, opt.as_mut()).unwrap();
    let plateau_base = plateau.state();

    let strategy = (
        0..bases.len(),
        prop::collection::vec(damage(), 3),
        (
            prop::option::weighted(0.2, wild_kind()),
            prop::option::weighted(0.2, wild_groups()),
            prop::option::weighted(0.2, wild_i64()),
            prop::option::weighted(0.2, wild_f64()),
            prop::option::weighted(0.2, wild_u64()),
            prop::option::weighted(0.2, wild_u64()),
            prop::option::weighted(0.2, wild_lrs()),
        ),
        prop::collection::vec(wild_f64(), 3),
    );
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        ..Config::default()
    });
    // The runner wants an `Fn`: the optimizer and the schedulers live in a cell.
    let world = std::cell::RefCell::new((opt, scheds, plateau, 0usize, 0usize));
    runner
        .run(&strategy, |(which, damages, p, metrics)| {
            let mut guard = world.borrow_mut();
            let (opt, scheds, plateau, loaded, plateau_loaded) = &mut *guard;
            // An epoch scheduler: the outer state and up to two inner ones damaged.
            let mut st = bases[which].clone();
            apply_damage(&mut st, &damages[0]);
            for (inner, d) in st.schedulers.iter_mut().zip(&damages[1..]) {
                apply_damage(inner, d);
            }
            let sched = &mut scheds[which];
            let (before, own) = (snapshot(opt.as_ref()), sched.state());
            match sched.load_state(opt.as_mut(), &st) {
                Ok(()) => {
                    *loaded += 1;
                    prop_assert_eq!(&sched.state(), &st);
                    for _ in 0..3 {
                        let (before, own) = (snapshot(opt.as_ref()), sched.state());
                        if sched.step(opt.as_mut()).is_err() {
                            prop_assert_eq!(snapshot(opt.as_ref()), before);
                            prop_assert_eq!(sched.state(), own);
                        }
                    }
                }
                Err(e) => {
                    prop_assert!(
                        matches!(
                            e,
                            Error::SchedulerState { .. }
                                | Error::InvalidHyperparameter { .. }
                                | Error::NoMomentum { .. }
                        ),
                        "{e:?}"
                    );
                    prop_assert_eq!(snapshot(opt.as_ref()), before);
                    prop_assert_eq!(sched.state(), own);
                }
            }

            // The plateau scheduler.
            let mut ps = plateau_base.clone();
            let (kind, groups, last_epoch, best, bad, cooldown, last_lr) = p;
            if let Some(v) = kind {
                ps.kind = v;
            }
            if let Some(v) = groups {
                ps.groups = v;
            }
            if let Some(v) = last_epoch {
                ps.last_epoch = v;
            }
            if let Some(v) = best {
                ps.best = v;
            }
            if let Some(v) = bad {
                ps.num_bad_epochs = v;
            }
            if let Some(v) = cooldown {
                ps.cooldown_counter = v;
            }
            if let Some(v) = last_lr {
                ps.last_lr = v;
            }
            let (before, own) = (snapshot(opt.as_ref()), plateau.state());
            match plateau.load_state(opt.as_mut(), &ps) {
                Ok(()) => {
                    *plateau_loaded += 1;
                    prop_assert_eq!(&plateau.state(), &ps);
                    for m in metrics {
                        let (before, own) = (snapshot(opt.as_ref()), plateau.state());
                        if plateau.step_with(m, opt.as_mut()).is_err() {
                            prop_assert_eq!(snapshot(opt.as_ref()), before);
                            prop_assert_eq!(plateau.state(), own);
                        }
                    }
                }
                Err(_) => {
                    prop_assert_eq!(snapshot(opt.as_ref()), before);
                    prop_assert_eq!(plateau.state(), own);
                }
            }
            Ok(())
        })
        .unwrap();
    let (.., loaded, plateau_loaded) = world.into_inner();
    eprintln!("{loaded} scheduler and {plateau_loaded} plateau states loaded of 2000 each");
    assert!(loaded > 0 && plateau_loaded > 0);
}

/// The scheduler itself refuses an lr that is not finite, not finite as f32 or negative
/// (whatever the optimizer would accept), at attach and at a step, and keeps the old values.
#[test]
fn a_scheduler_never_writes_a_non_finite_or_negative_lr() {
    let (_p, mut opt) = sgd2();
    for bad in [f64::INFINITY, f64::NAN, 1e300, -1e-9] {
        let before = snapshot(opt.as_ref());
        let r = Scheduler::new(opt.as_mut(), LambdaLR::new(move |_| bad));
        assert!(
            matches!(r, Err(Error::InvalidHyperparameter { name: "lr", .. })),
            "{bad}: {r:?}"
        );
        assert_eq!(snapshot(opt.as_ref()), before);

        let mut s = Scheduler::new(
            opt.as_mut(),
            MultiplicativeLR::new(move |e| if e >= 2 { bad } else { 1.0 }),
        )
        .unwrap();
        s.step(opt.as_mut()).unwrap();
        let (before, state) = (snapshot(opt.as_ref()), s.state());
        let r = s.step(opt.as_mut());
        assert!(
            matches!(r, Err(Error::InvalidHyperparameter { name: "lr", .. })),
            "{bad}: {r:?}"
        );
        assert_eq!((snapshot(opt.as_ref()), s.state()), (before, state));
    }
}
