//! Adadelta (`torch.optim.Adadelta`).

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::{check, Result};

/// Adadelta.
pub type Adadelta = FusedOptimizer<AdadeltaConfig>;

/// Options of [`Adadelta`], with PyTorch's names and defaults.
///
/// ```
/// let cfg = wgpu_optim::AdadeltaConfig { rho: 0.95, ..Default::default() };
/// assert_eq!((cfg.lr, cfg.eps), (1.0, 1e-6));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdadeltaConfig {
    /// Coefficient scaling the delta before it is applied (default 1.0).
    pub lr: f32,
    /// Coefficient of the running averages of the squared gradient and squared delta (0.9).
    pub rho: f32,
    /// Added inside both square roots (1e-6).
    pub eps: f32,
    /// L2 penalty (0).
    pub weight_decay: f32,
    /// Maximize the objective (false).
    pub maximize: bool,
}

impl Default for AdadeltaConfig {
    fn default() -> Self {
        AdadeltaConfig {
            lr: 1.0,
            rho: 0.9,
            eps: 1e-6,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/adadelta.wgsl` reads each step, per group (PyTorch's single-tensor
    /// Adadelta).
    pub struct AdadeltaScalars {
        /// `weight_decay` (L2, added to the gradient).
        pub weight_decay: f32,
        /// `rho`.
        pub rho: f32,
        /// `1 - rho`.
        pub one_minus_rho: f32,
        /// `eps`.
        pub eps: f32,
        /// `-lr`.
        pub neg_lr: f32,
    }
}

impl OptimizerConfig for AdadeltaConfig {
    const NAME: &'static str = "Adadelta";
    const SHADER: &'static str = include_str!("../../shaders/adadelta.wgsl");
    type Scalars = AdadeltaScalars;
    const SLOTS: &'static [&'static str] = &["square_avg", "acc_delta"];

    fn validate(&self) -> Result<()> {
        check("lr", self.lr as f64, self.lr >= 0.0, "must be >= 0")?;
        check(
            "rho",
            self.rho as f64,
            (0.0..=1.0).contains(&self.rho),
            "must be in [0, 1]",
        )?;
        check("eps", self.eps as f64, self.eps >= 0.0, "must be >= 0")?;
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

    fn scalars(&self, _t: u64) -> AdadeltaScalars {
        AdadeltaScalars {
            weight_decay: self.weight_decay,
            rho: self.rho,
            one_minus_rho: (1.0 - widen(self.rho)) as f32,
            eps: self.eps,
            neg_lr: (-widen(self.lr)) as f32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "rho" => num rho,
        "eps" => num eps,
        "weight_decay" => num weight_decay,
        "maximize" => flag maximize,
    }
}
