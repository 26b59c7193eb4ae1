//! Averaged SGD (`torch.optim.ASGD`).

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::{check, Result};

/// Averaged stochastic gradient descent.
pub type Asgd = FusedOptimizer<AsgdConfig>;

/// Options of [`Asgd`], with PyTorch's names and defaults.
///
/// # `eta` and `mu`
/// torch keeps, per tensor, two float32 scalar tensors besides `ax`: `eta` (the step size) and
/// `mu` (the averaging weight). It sets them after step `t` from `t` and the options alone:
/// `eta = lr / (1 + lambd * lr * t)^alpha`, `mu = 1 / max(1, t - t0)` (and to `lr` and 1
/// before the first step), and uses them in step `t + 1`. Here they are not GPU state: the
/// host computes them in f64 for each step and rounds them to f32 once, exactly as torch's
/// f32 tensors hold them ([`AsgdConfig::eta`] and [`AsgdConfig::mu`] give what torch's state
/// holds after `t` steps). Checkpoints therefore store only `ax` (and `step`); `eta` and `mu`
/// are recomputed from the stored step count and hyperparameters, so a resume is exact.
///
/// One difference: torch computes the next `eta` with the `lr` of the step just taken, so an
/// `lr` changed between steps (a scheduler) reaches `eta` one step later there than here.
/// With a constant `lr` the two agree bit for bit.
///
/// ```
/// let cfg = wgpu_optim::AsgdConfig { t0: 100.0, ..Default::default() };
/// assert_eq!((cfg.lr, cfg.lambd, cfg.alpha), (1e-2, 1e-4, 0.75));
/// assert_eq!(cfg.mu(0), 1.0);
/// assert_eq!(cfg.mu(104), 0.25);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AsgdConfig {
    /// Learning rate (default 1e-2).
    pub lr: f32,
    /// Decay term (1e-4).
    pub lambd: f32,
    /// Power of the `eta` update (0.75).
    pub alpha: f32,
    /// Step at which averaging starts (1e6).
    pub t0: f32,
    /// L2 penalty (0).
    pub weight_decay: f32,
    /// Maximize the objective (false).
    pub maximize: bool,
}

impl Default for AsgdConfig {
    fn default() -> Self {
        AsgdConfig {
            lr: 1e-2,
            lambd: 1e-4,
            alpha: 0.75,
            t0: 1e6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl AsgdConfig {
    /// torch's `state["eta"]` after `steps` steps: `lr` before the first, then
    /// `lr / (1 + lambd * lr * steps)^alpha`, computed in f64 and stored as f32.
    pub fn eta(&self, steps: u64) -> f32 {
        let lr = widen(self.lr);
        if steps == 0 {
            return lr as f32;
        }
        let (lambd, alpha) = (widen(self.lambd), widen(self.alpha));
        (lr / (1.0 + lambd * lr * steps as f64).powf(alpha)) as f32
    }

    /// torch's `state["mu"]` after `steps` steps: 1 before the first, then
    /// `1 / max(1, steps - t0)`, computed in f64 and stored as f32.
    pub fn mu(&self, steps: u64) -> f32 {
        if steps == 0 {
            return 1.0;
        }
        (1.0 / (steps as f64 - widen(self.t0)).max(1.0)) as f32
    }
}

crate::shader_struct! {
    /// What `shaders/asgd.wgsl` reads each step, per group (PyTorch's single-tensor ASGD).
    pub struct AsgdScalars {
        /// `weight_decay` (L2, added to the gradient).
        pub weight_decay: f32,
        /// `1 - lambd * eta`.
        pub decay: f32,
        /// `-eta`.
        pub neg_eta: f32,
        /// `mu`.
        pub mu: f32,
    }
}

impl OptimizerConfig for AsgdConfig {
    const NAME: &'static str = "ASGD";
    const SHADER: &'static str = include_str!("../../shaders/asgd.wgsl");
    type Scalars = AsgdScalars;
    const SLOTS: &'static [&'static str] = &["ax"];

    fn validate(&self) -> Result<()> {
        check("lr", self.lr as f64, self.lr >= 0.0, "must be >= 0")?;
        check(
            "lambd",
            self.lambd as f64,
            self.lambd >= 0.0,
            "must be >= 0",
        )?;
        check(
            "alpha",
            self.alpha as f64,
            self.alpha >= 0.0,
            "must be >= 0",
        )?;
        // torch checks nothing here; we only ask for a finite number.
        check("t0", self.t0 as f64, true, "must be finite")?;
        check(
            "weight_decay",
            self.weight_decay as f64,
            self.weight_decay >= 0.0,
            "must be >= 0",
        )
    }

    fn uses_state(&self, _key: &str) -> bool {
        true
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    /// Step `t` uses the `eta` and `mu` torch's state holds after `t - 1` steps.
    fn scalars(&self, t: u64) -> AsgdScalars {
        let eta = self.eta(t.saturating_sub(1));
        // `1 - lambd * eta.item()` in f64, rounded once by `param.mul_`.
        let decay = 1.0 - widen(self.lambd) * eta as f64;
        AsgdScalars {
            weight_decay: self.weight_decay,
            decay: decay as f32,
            neg_eta: -eta,
            mu: self.mu(t.saturating_sub(1)),
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "lambd" => num lambd,
        "alpha" => num alpha,
        "t0" => num t0,
        "weight_decay" => num weight_decay,
        "maximize" => flag maximize,
    }
}
