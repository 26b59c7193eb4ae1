//! Adamax (`torch.optim.Adamax`): Adam with the infinity norm.

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::Result;

/// Adamax, `torch.optim.Adamax`.
pub type Adamax = FusedOptimizer<AdamaxConfig>;

/// Options of [`Adamax`], with PyTorch's names and defaults.
///
/// ```
/// use wgpu_optim::AdamaxConfig;
/// let cfg = AdamaxConfig { weight_decay: 1e-2, ..Default::default() };
/// assert_eq!((cfg.lr, cfg.betas), (2e-3, (0.9, 0.999)));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdamaxConfig {
    /// Learning rate (default 2e-3).
    pub lr: f32,
    /// Coefficients of the running average of the gradient and of the decayed infinity norm
    /// (0.9, 0.999).
    pub betas: (f32, f32),
    /// Added to `|grad|` before the infinity norm is taken (1e-8).
    pub eps: f32,
    /// L2 weight decay added to the gradient (0).
    pub weight_decay: f32,
    /// Maximize the objective instead of minimizing (false).
    pub maximize: bool,
}

impl Default for AdamaxConfig {
    fn default() -> Self {
        AdamaxConfig {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/adamax.wgsl` reads each step, per group (PyTorch's single-tensor Adamax).
    pub struct AdamaxScalars {
        /// L2 decay added to the gradient.
        pub weight_decay: f32,
        /// `1 - beta1`, the weight of `exp_avg.lerp_(grad, 1 - beta1)`.
        pub lerp_w: f32,
        /// `beta2`.
        pub beta2: f32,
        /// `eps`.
        pub eps: f32,
        /// `-lr / (1 - beta1^t)`.
        pub neg_clr: f32,
    }
}

impl OptimizerConfig for AdamaxConfig {
    const NAME: &'static str = "Adamax";
    const SHADER: &'static str = include_str!("../../shaders/adamax.wgsl");
    const MOMENTUM: Option<&'static str> = Some("betas[0]");
    type Scalars = AdamaxScalars;
    const SLOTS: &'static [&'static str] = &["exp_avg", "exp_inf"];

    fn validate(&self) -> Result<()> {
        super::check_adam_like(self.lr, self.eps, self.betas, self.weight_decay)
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

    fn scalars(&self, t: u64) -> AdamaxScalars {
        let lr = widen(self.lr);
        let beta1 = widen(self.betas.0);
        let bias_correction = 1.0 - beta1.powf(t as f64);
        let clr = lr / bias_correction;
        AdamaxScalars {
            weight_decay: widen(self.weight_decay) as f32,
            lerp_w: (1.0 - beta1) as f32,
            beta2: widen(self.betas.1) as f32,
            eps: widen(self.eps) as f32,
            neg_clr: (-clr) as f32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "betas[0]" => num betas.0,
        "betas[1]" => num betas.1,
        "eps" => num eps,
        "weight_decay" => num weight_decay,
        "maximize" => flag maximize,
    }
}
