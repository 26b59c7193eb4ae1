//! Adagrad (`torch.optim.Adagrad`).

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::{check, Result};
use crate::QuantMap;

/// Adagrad.
pub type Adagrad = FusedOptimizer<AdagradConfig>;

/// Options of [`Adagrad`], with PyTorch's names and defaults.
///
/// ```
/// let cfg = wgpu_optim::AdagradConfig { lr_decay: 1e-3, ..Default::default() };
/// assert_eq!(cfg.eps, 1e-10);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdagradConfig {
    /// Learning rate (default 1e-2).
    pub lr: f32,
    /// Learning-rate decay: step t uses `lr / (1 + (t - 1) * lr_decay)` (0).
    pub lr_decay: f32,
    /// L2 penalty (0).
    pub weight_decay: f32,
    /// Starting value of the squared-gradient sum (0).
    pub initial_accumulator_value: f32,
    /// Added to the denominator (1e-10).
    pub eps: f32,
    /// Maximize the objective (false).
    pub maximize: bool,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        AdagradConfig {
            lr: 1e-2,
            lr_decay: 0.0,
            weight_decay: 0.0,
            initial_accumulator_value: 0.0,
            eps: 1e-10,
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/adagrad.wgsl` reads each step, per group (PyTorch's single-tensor Adagrad).
    pub struct AdagradScalars {
        /// `-clr`, the decayed learning rate `-lr / (1 + (t - 1) * lr_decay)`.
        pub neg_clr: f32,
        /// `weight_decay` (L2, added to the gradient).
        pub weight_decay: f32,
        /// `eps`.
        pub eps: f32,
    }
}

impl OptimizerConfig for AdagradConfig {
    const NAME: &'static str = "Adagrad";
    const SHADER: &'static str = include_str!("../../shaders/adagrad.wgsl");
    type Scalars = AdagradScalars;
    const SLOTS: &'static [&'static str] = &["sum"];

    fn validate(&self) -> Result<()> {
        check("lr", self.lr as f64, self.lr >= 0.0, "must be >= 0")?;
        check(
            "lr_decay",
            self.lr_decay as f64,
            self.lr_decay >= 0.0,
            "must be >= 0",
        )?;
        check(
            "weight_decay",
            self.weight_decay as f64,
            self.weight_decay >= 0.0,
            "must be >= 0",
        )?;
        let iav = self.initial_accumulator_value;
        check(
            "initial_accumulator_value",
            iav as f64,
            iav >= 0.0,
            "must be >= 0",
        )?;
        check("eps", self.eps as f64, self.eps >= 0.0, "must be >= 0")
    }

    fn quant_map(&self, _key: &str) -> Option<QuantMap> {
        Some(QuantMap::Unsigned)
    }

    fn uses_state(&self, _key: &str) -> bool {
        true
    }

    fn state_init(&self, _key: &str) -> f32 {
        self.initial_accumulator_value
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    fn scalars(&self, t: u64) -> AdagradScalars {
        let step = t as f64;
        let clr = widen(self.lr) / (1.0 + (step - 1.0) * widen(self.lr_decay));
        AdagradScalars {
            neg_clr: (-clr) as f32,
            weight_decay: self.weight_decay,
            eps: self.eps,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "lr_decay" => num lr_decay,
        "weight_decay" => num weight_decay,
        "initial_accumulator_value" => num initial_accumulator_value,
        "eps" => num eps,
        "maximize" => flag maximize,
    }
}
