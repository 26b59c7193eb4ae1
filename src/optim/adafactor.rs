//! Adafactor (`torch.optim.Adafactor`).

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::{check, Result};

/// Adafactor (Shazeer & Stern 2018) as `torch.optim.Adafactor`: a second moment factored
/// over the last two dimensions of every tensor of rank 2 or more (a row and a column mean
/// instead of a value per element), a relative step size and update clipping.
///
/// State per tensor, with torch's names and shapes: `row_var` (`[..., rows, 1]`) and
/// `col_var` (`[..., 1, cols]`) for tensors of rank >= 2, `variance` (the tensor's shape) for
/// vectors and scalars. All of it is f32, whatever [`crate::Precision::state`] says (it is
/// small: `rows + cols` values per matrix), and [`FusedOptimizer::state_memory_bytes`]
/// counts it. [`crate::Optimizer::state`] returns a tensor's keys' values flattened (row
/// major); asking a matrix for `variance`, or a vector for `row_var`, is an
/// [`crate::Error::UnknownState`].
///
/// Each step takes, in its one submit: the row and column sums of `g * g` (one small pass per
/// chunk, one over the rows and columns, one over the matrices), then two passes over the
/// tensors with the per-tensor norms of the parameter and of the update reduced between them
/// in a fixed order ([`OptimizerConfig::TENSOR_SUMS`]): deterministic, no read-back.
pub type Adafactor = FusedOptimizer<AdafactorConfig>;

/// Options of [`Adafactor`], with PyTorch's names and defaults: lr 1e-2, beta2_decay -0.8,
/// eps (None, 1e-3), d 1.0, weight_decay 0, maximize false.
///
/// Each step `t` of a tensor `p` (its gradient `g`, `-g` with maximize):
///
/// ```text
/// w     = t ^ beta2_decay,   rho = min(lr, 1 / sqrt(t))
/// alpha = max(eps.1, ||p|| / sqrt(numel)) * rho
/// p     = p * (1 - lr * weight_decay)
/// rank >= 2:  row_var = lerp(row_var, mean(g^2 over the last dim), w)
///             col_var = lerp(col_var, mean(g^2 over the second-last dim), w)
///             v = row_var * col_var / max(mean(row_var over the rows), eps.0)
/// otherwise:  variance = lerp(variance, g^2, w);  v = variance
/// u     = g / sqrt(max(v, eps.0^2))
/// p     = p - alpha / max(1, ||u|| / (sqrt(numel) * d)) * u
/// ```
///
/// `eps.0` of `None` is f32's machine epsilon (torch takes the parameter dtype's: the same for
/// f32 parameters, larger for 16-bit ones, where torch's bf16 run differs from ours with
/// master weights); checkpoints store the value it stands for.
///
/// ```
/// use wgpu_optim::AdafactorConfig;
/// let cfg = AdafactorConfig { weight_decay: 0.01, ..Default::default() };
/// assert_eq!((cfg.lr, cfg.beta2_decay, cfg.eps, cfg.d), (1e-2, -0.8, (None, 1e-3), 1.0));
/// assert_eq!(cfg.eps1(), f32::EPSILON);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdafactorConfig {
    /// Learning rate, the cap of the relative step size `min(lr, 1 / sqrt(t))` (default 1e-2).
    pub lr: f32,
    /// Decay of the second moment's weight: `w = t ^ beta2_decay` (-0.8; must be <= 0).
    pub beta2_decay: f32,
    /// `(eps1, eps2)`: eps1 floors the variance estimate (squared) and the row mean (`None`:
    /// f32's machine epsilon), eps2 the parameter's RMS in the step size ((None, 1e-3)).
    pub eps: (Option<f32>, f32),
    /// Update clipping threshold: the update is scaled down where its RMS exceeds `d` (1.0;
    /// must be >= 1).
    pub d: f32,
    /// Decoupled weight decay, `p * (1 - lr * weight_decay)` (0).
    pub weight_decay: f32,
    /// Maximize the objective (false).
    pub maximize: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        AdafactorConfig {
            lr: 1e-2,
            beta2_decay: -0.8,
            eps: (None, 1e-3),
            d: 1.0,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

impl AdafactorConfig {
    /// `eps.0`, or f32's machine epsilon where it is `None`.
    pub fn eps1(&self) -> f32 {
        self.eps.0.unwrap_or(f32::EPSILON)
    }
}

crate::shader_struct! {
    /// What `shaders/adafactor.wgsl` reads each step, per group.
    pub struct AdafactorScalars {
        /// `t ^ beta2_decay`, the weight of the new mean in the second moment's lerp.
        pub beta2_weight: f32,
        /// `min(lr, 1 / sqrt(t))`.
        pub rho: f32,
        /// `eps1`.
        pub eps1: f32,
        /// `eps1 * eps1` (computed in f64).
        pub eps1_sq: f32,
        /// `eps2`.
        pub eps2: f32,
        /// `d`.
        pub d: f32,
        /// `1 - lr * weight_decay`.
        pub decay: f32,
    }
}

impl OptimizerConfig for AdafactorConfig {
    const NAME: &'static str = "Adafactor";
    const SHADER: &'static str = include_str!("../../shaders/adafactor.wgsl");
    const TENSOR_SUMS: u32 = 2;
    const FACTORED: bool = true;
    type Scalars = AdafactorScalars;
    const SLOTS: &'static [&'static str] = &[];

    /// torch's rules: `lr >= 0`, `beta2_decay <= 0`, `eps1 >= 0` (when given), `eps2 >= 0`,
    /// `d >= 1`, `weight_decay >= 0`.
    fn validate(&self) -> Result<()> {
        check("lr", self.lr as f64, self.lr >= 0.0, "must be >= 0")?;
        check(
            "beta2_decay",
            self.beta2_decay as f64,
            self.beta2_decay <= 0.0,
            "must be <= 0",
        )?;
        if let Some(e) = self.eps.0 {
            check("eps[0]", e as f64, e >= 0.0, "must be >= 0")?;
        }
        check(
            "eps[1]",
            self.eps.1 as f64,
            self.eps.1 >= 0.0,
            "must be >= 0",
        )?;
        check("d", self.d as f64, self.d >= 1.0, "must be >= 1")?;
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

    /// torch computes these in Python floats (f64) from the step count; each is rounded to
    /// f32 once, as torch rounds a Python scalar into an f32 kernel.
    fn scalars(&self, t: u64) -> AdafactorScalars {
        let (t, lr) = (t as f64, widen(self.lr));
        let eps1 = widen(self.eps1());
        AdafactorScalars {
            beta2_weight: t.powf(widen(self.beta2_decay)) as f32,
            rho: lr.min(1.0 / t.sqrt()) as f32,
            eps1: self.eps1(),
            eps1_sq: (eps1 * eps1) as f32,
            eps2: self.eps.1,
            d: self.d,
            decay: (1.0 - lr * widen(self.weight_decay)) as f32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "beta2_decay" => num beta2_decay,
        "eps[0]" => num_or(f32::EPSILON) eps.0,
        "eps[1]" => num eps.1,
        "d" => num d,
        "weight_decay" => num weight_decay,
        "maximize" => flag maximize,
    }
}
