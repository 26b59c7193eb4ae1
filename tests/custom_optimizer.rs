//! An optimizer defined outside the crate, through the public extension interface alone
//! (`OptimizerConfig` + `FusedOptimizer<C>` + `shader_struct!`): sign-SGD (`p -= lr * sign(g)`, with
//! optional momentum: `buf = momentum * buf + g` and the sign of `buf`, i.e. signum). It steps,
//! clips, skips non-finite steps, takes parameter groups, saves and resumes, and runs as a
//! bench `Workload`, like the built-in optimizers and through the same test runner.

mod common;
use common::Run;
use ndarray::Array1;
use wgpu_optim::reference::{self, State};
use wgpu_optim::{
    checkpoint, Error, FusedOptimizer, Optimizer, OptimizerConfig, ParamGroup, Result,
};

wgpu_optim::shader_struct! {
    /// What the sign-SGD shader reads each step, per group.
    pub struct SignSgdScalars {
        /// `-lr`.
        pub neg_lr: f32,
        /// `momentum`.
        pub momentum: f32,
        /// 1 on the step that creates the momentum buffer (`buf = grad`), else 0.
        pub first_step: f32,
    }
}

/// The optimizer's own WGSL: `update` for vec4 `i`; `param`, `grad`, `momentum_buffer` (from
/// `SLOTS`), `prep_grad` (clipping, loss scaling, maximize) and `add_scaled` come from the
/// engine's shared prologue.
const SHADER: &str = "
override MOMENTUM: bool = false;

fn update(i: u32, s: Scalars) {
    var g = prep_grad(load_grad(i));
    if (MOMENTUM) {
        var buf: vec4<f32>;
        if (s.first_step != 0.0) {
            buf = g;
        } else {
            buf = add_scaled(g, load_momentum_buffer(i), s.momentum);
        }
        store_momentum_buffer(i, buf);
        g = buf;
    }
    store_param(i, add_scaled(load_param(i), sign(g), s.neg_lr));
}
";

/// Sign-SGD's options.
#[derive(Clone, Debug, PartialEq)]
pub struct SignSgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum (0: none, no state).
    pub momentum: f32,
}

impl OptimizerConfig for SignSgdConfig {
    const NAME: &'static str = "SignSGD";
    const SHADER: &'static str = SHADER;
    const SLOTS: &'static [&'static str] = &["momentum_buffer"];
    const MOMENTUM: Option<&'static str> = Some("momentum");
    type Scalars = SignSgdScalars;

    fn validate(&self) -> Result<()> {
        let bad = |name, value: f32, rule| {
            Err(Error::InvalidHyperparameter {
                name,
                value: value as f64,
                rule,
            })
        };
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr, "must be >= 0");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", self.momentum, "must be in [0, 1)");
        }
        Ok(())
    }

    fn uses_state(&self, _key: &str) -> bool {
        self.momentum != 0.0
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("MOMENTUM", (self.momentum != 0.0) as u32)]
    }

    fn maximize(&self) -> bool {
        false
    }

    fn scalars(&self, t: u64) -> SignSgdScalars {
        SignSgdScalars {
            neg_lr: -self.lr,
            momentum: self.momentum,
            first_step: (t == 1) as u32 as f32,
        }
    }

    // lr(), set_lr(), momentum() and set_momentum() come from this table and MOMENTUM.
    wgpu_optim::hyperparameters! {
        "lr" => num lr,
        "momentum" => num momentum,
    }
}

/// WGSL's `sign`: -1, 0 or 1 (`f32::signum` gives 1 for +0).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The CPU reference, operation for operation the shader's (the reference's `add_scaled`
/// rounds `fma` as the device does).
fn sign_sgd(cfg: &SignSgdConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let first = state.step == 1;
    let momentum = cfg.momentum != 0.0;
    let mut buf = state.get(SignSgdConfig::SLOTS[0]).cloned();
    for i in 0..param.len() {
        let mut g = grad[i];
        if let Some(buf) = buf.as_mut().filter(|_| momentum) {
            buf[i] = if first {
                g
            } else {
                reference::add_scaled(g, buf[i], cfg.momentum)
            };
            g = buf[i];
        }
        param[i] = reference::add_scaled(param[i], sign(g), -cfg.lr);
    }
    if let (Some(buf), Some(slot)) = (buf, state.get_mut(SignSgdConfig::SLOTS[0])) {
        *slot = buf;
    }
}

const SIZES: &[usize] = &[1, 5, 64, 1000, 4099];

fn with_momentum() -> SignSgdConfig {
    SignSgdConfig {
        lr: 0.01,
        momentum: 0.9,
    }
}

/// Odd step counts throughout: every step moves a param by ±lr, so after an even number of
/// steps a quarter of them are back where they started, and the runner (rightly) refuses a
/// run in which an unwritten element could pass unseen.
const STEPS: usize = 7;

#[test]
fn steps_like_the_builtins() {
    Run::new("sign-sgd", sign_sgd)
        .steps(STEPS)
        .run(SignSgdConfig {
            lr: 0.01,
            momentum: 0.0,
        });
    Run::new("sign-sgd momentum", sign_sgd)
        .steps(STEPS)
        .poison_state("momentum_buffer")
        .run(with_momentum());
    Run::new("sign-sgd chunked", sign_sgd)
        .sizes(&[5000, 20000, 3, 16384])
        .max_chunk_bytes(64 * 1024)
        .steps(STEPS)
        .poison_state("momentum_buffer")
        .run(with_momentum());
}

#[test]
fn clips_and_skips_nonfinite() {
    // The sign ignores a positive scale, so clipping shows only through the momentum buffer.
    for p in [2.0, 1.0, f32::INFINITY] {
        let max = match p {
            2.0 => 20.0,
            1.0 => 1000.0,
            _ => 2.0,
        };
        let out = Run::new(format!("sign-sgd clip {p}"), sign_sgd)
            .sizes(SIZES)
            .steps(STEPS)
            .grad_scales(&[1.0, 0.01, 3.0])
            .clip(max, p)
            .run(with_momentum());
        assert!(out.clipped > 0 && out.clipped < STEPS, "norm {p}: {out:?}");
    }
    let out = Run::new("sign-sgd skip", sign_sgd)
        .sizes(SIZES)
        .steps(STEPS + 2)
        .skip_nonfinite()
        .bad_steps(&[1], f32::NAN, ("t4_4099", 4098))
        .bad_steps(&[3], f32::NEG_INFINITY, ("t0_1", 0))
        .run(with_momentum());
    assert_eq!(out.applied, STEPS);
}

#[test]
fn parameter_groups() {
    let tensors = [("w1", 300), ("b1", 7), ("w2", 2000), ("b2", 1)];
    let slow = SignSgdConfig {
        lr: 1e-3,
        momentum: 0.5,
    };
    Run::new("sign-sgd groups", sign_sgd)
        .tensors(&tensors)
        .steps(STEPS)
        .run_groups(
            vec![
                ParamGroup::matching(|n| n.starts_with('b'), slow),
                ParamGroup::rest(with_momentum()),
            ],
            |n| n.starts_with('w') as usize,
        );
}

/// Save after 3 steps, resume into a fresh parameter set and optimizer, take 4 more: the
/// result equals the uninterrupted reference run (bit for bit on lavapipe).
#[test]
fn saves_and_resumes() {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-custom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sign_sgd.safetensors");
    let mut h = Run::new("sign-sgd resume", sign_sgd)
        .sizes(SIZES)
        .steps(STEPS)
        .harness(vec![ParamGroup::rest(with_momentum())], |_| 0);
    for _ in 0..3 {
        h.step();
    }
    checkpoint::save(&path, &h.params, &h.opt, Default::default()).unwrap();
    let specs: Vec<(&str, usize)> = SIZES
        .iter()
        .zip(h.params.names())
        .map(|(&n, name)| (name, n))
        .collect();
    let mut params = wgpu_optim::Params::zeros(&common::gpu(), &specs).unwrap();
    common::poison_padding(&params);
    let other = SignSgdConfig {
        lr: 0.5,
        momentum: 0.1,
    };
    let mut opt = FusedOptimizer::new(&params, other).unwrap();
    checkpoint::load(&path, &mut params, &mut opt).unwrap();
    assert_eq!(opt.step_count(), 3);
    assert_eq!(opt.config(), &with_momentum());
    (h.params, h.opt) = (params, opt);
    h.finish();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn description_drives_the_engine() {
    let gpu = common::gpu();
    let params = wgpu_optim::Params::zeros(&gpu, &[("w", 10)]).unwrap();
    let opt = FusedOptimizer::new(&params, with_momentum()).unwrap();
    assert_eq!(opt.name(), "SignSGD");
    assert_eq!(opt.state_keys(), vec!["momentum_buffer"]);
    let plain = FusedOptimizer::new(
        &params,
        SignSgdConfig {
            lr: 0.1,
            momentum: 0.0,
        },
    )
    .unwrap();
    assert!(plain.state_keys().is_empty());
    assert!(matches!(
        FusedOptimizer::new(
            &params,
            SignSgdConfig {
                lr: -1.0,
                momentum: 0.0
            }
        ),
        Err(Error::InvalidHyperparameter { name: "lr", .. })
    ));
}

/// The bench `Workload` takes its label and bytes per element from the description alone.
#[cfg(feature = "bench")]
#[test]
fn benchmarks_like_the_builtins() {
    use wgpu_optim::bench::{self, GpuTimer, Workload};
    let w = Workload::with_reference(with_momentum(), sign_sgd);
    assert_eq!((w.label(), w.bytes_per_element()), ("SignSGD momentum", 20));
    let plain = Workload::new(SignSgdConfig {
        lr: 0.1,
        momentum: 0.0,
    });
    assert_eq!((plain.label(), plain.bytes_per_element()), ("SignSGD", 12));
    let gpu = common::gpu();
    let n = 1 << 16;
    let mut params = wgpu_optim::Params::zeros(&gpu, &[("w", n)]).unwrap();
    params.write_grad("w", &bench::pattern(n, 2)).unwrap();
    let mut opt = w.optimizer(&params).unwrap().expect("an optimizer");
    let mut timer = GpuTimer::new(&gpu);
    let t = bench::time_steps(&mut timer, opt.as_mut(), &mut params, 3).unwrap();
    assert!(t > std::time::Duration::ZERO);
    assert_eq!(opt.step_count(), 5);
    let mut step = w.reference_step(n).expect("a reference");
    let mut p = Array1::zeros(n);
    step(&mut p, &Array1::from(bench::pattern(n, 2)));
    assert!(p.iter().all(|x| x.abs() == 0.01 || *x == 0.0));
}
