//! Lion (Chen et al. 2023), as bitsandbytes' `Lion32bit` and lucidrains' `lion-pytorch` step it.

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::{check, Result};
use crate::QuantMap;

/// Lion: the sign of an interpolation of the momentum and the gradient, with decoupled weight
/// decay.
pub type Lion = FusedOptimizer<LionConfig>;

/// Options of [`Lion`], with `lion_pytorch.Lion`'s names and defaults (plus torch's `maximize`).
///
/// Each step, per element: `c = b1 * m + (1 - b1) * g`, `p = p * (1 - lr * wd) - lr * sign(c)`,
/// `m = b2 * m + (1 - b2) * g`, rounded as lion-pytorch's torch ops round it.
///
/// ```
/// use wgpu_optim::LionConfig;
/// let lion = LionConfig { lr: 3e-5, weight_decay: 0.1, ..Default::default() };
/// assert_eq!(lion.betas, (0.9, 0.99));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LionConfig {
    /// Learning rate (default 1e-4; Lion wants 3-10x less than AdamW).
    pub lr: f32,
    /// `betas[0]` weighs the momentum in the update's sign, `betas[1]` in the running average
    /// (0.9, 0.99).
    pub betas: (f32, f32),
    /// Decoupled weight decay: `p *= 1 - lr * weight_decay` (0).
    pub weight_decay: f32,
    /// Maximize the objective instead of minimizing: the gradient is negated first (false).
    pub maximize: bool,
}

impl Default for LionConfig {
    fn default() -> Self {
        LionConfig {
            lr: 1e-4,
            betas: (0.9, 0.99),
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/lion.wgsl` reads each step, per group.
    pub struct LionScalars {
        /// `1 - lr * weight_decay`.
        pub decay_factor: f32,
        /// `beta1`.
        pub beta1: f32,
        /// `1 - beta1`.
        pub one_minus_beta1: f32,
        /// `beta2`.
        pub beta2: f32,
        /// `1 - beta2`.
        pub one_minus_beta2: f32,
        /// `-lr`.
        pub neg_lr: f32,
    }
}

impl OptimizerConfig for LionConfig {
    const NAME: &'static str = "Lion";
    const SHADER: &'static str = include_str!("../../shaders/lion.wgsl");
    const MOMENTUM: Option<&'static str> = Some("betas[0]");
    type Scalars = LionScalars;
    const SLOTS: &'static [&'static str] = &["exp_avg"];

    /// lion-pytorch's rules (`0 <= beta <= 1`), with `lr >= 0` as torch.optim's.
    fn validate(&self) -> Result<()> {
        let (b1, b2) = (self.betas.0 as f64, self.betas.1 as f64);
        check("lr", self.lr as f64, self.lr >= 0.0, "must be >= 0")?;
        check(
            "betas[0]",
            b1,
            (0.0..=1.0).contains(&b1),
            "must be in [0, 1]",
        )?;
        check(
            "betas[1]",
            b2,
            (0.0..=1.0).contains(&b2),
            "must be in [0, 1]",
        )?;
        check(
            "weight_decay",
            self.weight_decay as f64,
            self.weight_decay >= 0.0,
            "must be >= 0",
        )
    }

    fn quant_map(&self, _key: &str) -> Option<QuantMap> {
        Some(QuantMap::Signed)
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

    fn scalars(&self, _t: u64) -> LionScalars {
        let (lr, wd) = (widen(self.lr), widen(self.weight_decay));
        let (beta1, beta2) = (widen(self.betas.0), widen(self.betas.1));
        LionScalars {
            decay_factor: (1.0 - lr * wd) as f32,
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            neg_lr: (-lr) as f32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "betas[0]" => num betas.0,
        "betas[1]" => num betas.1,
        "weight_decay" => num weight_decay,
        "maximize" => flag maximize,
    }
}
