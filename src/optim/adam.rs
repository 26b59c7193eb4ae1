//! Adam and AdamW (`torch.optim.Adam` / `torch.optim.AdamW`).

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::Result;
use crate::QuantMap;

/// Adam, or AdamW with `decoupled_weight_decay: true`.
pub type Adam = FusedOptimizer<AdamConfig>;

/// Options of [`Adam`], with PyTorch's names and defaults.
///
/// ```
/// use wgpu_optim::AdamConfig;
/// let adam = AdamConfig { lr: 3e-4, ..Default::default() };
/// let adamw = AdamConfig::adamw(); // lr 1e-3, weight_decay 1e-2, decoupled
/// assert!(adamw.decoupled_weight_decay && adam.betas == (0.9, 0.999));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f32,
    /// Coefficients of the running averages of the gradient and its square (0.9, 0.999).
    pub betas: (f32, f32),
    /// Added to the denominator (1e-8).
    pub eps: f32,
    /// Weight decay (0; AdamW's default is 1e-2).
    pub weight_decay: f32,
    /// Use the AMSGrad variant (false).
    pub amsgrad: bool,
    /// Maximize the objective instead of minimizing (false).
    pub maximize: bool,
    /// AdamW: decay the weights directly (`p *= 1 - lr * wd`) instead of adding `wd * p` to the
    /// gradient (false).
    pub decoupled_weight_decay: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            amsgrad: false,
            maximize: false,
            decoupled_weight_decay: false,
        }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
    /// weight_decay 1e-2, decoupled weight decay.
    pub fn adamw() -> Self {
        AdamConfig {
            weight_decay: 1e-2,
            decoupled_weight_decay: true,
            ..Default::default()
        }
    }
}

crate::shader_struct! {
    /// What `shaders/adam.wgsl` reads each step, per group (PyTorch's single-tensor Adam).
    pub struct AdamScalars {
        /// L2 decay added to the gradient (Adam).
        pub weight_decay: f32,
        /// `1 - lr * weight_decay` (AdamW's decoupled decay).
        pub decay_factor: f32,
        /// `1 - beta1`, the weight of `exp_avg.lerp_(grad, 1 - beta1)`.
        pub lerp_w: f32,
        /// `beta2`.
        pub beta2: f32,
        /// `1 - beta2`.
        pub one_minus_beta2: f32,
        /// `-lr / (1 - beta1^t)`.
        pub neg_step_size: f32,
        /// `sqrt(1 - beta2^t)`.
        pub bc2_sqrt: f32,
        /// `eps`.
        pub eps: f32,
    }
}

impl OptimizerConfig for AdamConfig {
    const NAME: &'static str = "Adam";
    const SHADER: &'static str = concat!(
        include_str!("../../shaders/adam_family.wgsl"),
        include_str!("../../shaders/adam.wgsl")
    );
    const MOMENTUM: Option<&'static str> = Some("betas[0]");
    type Scalars = AdamScalars;
    const SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq", "max_exp_avg_sq"];

    fn validate(&self) -> Result<()> {
        super::check_adam_like(self.lr, self.eps, self.betas, self.weight_decay)
    }

    fn quant_map(&self, key: &str) -> Option<QuantMap> {
        match key {
            "exp_avg" => Some(QuantMap::Signed),
            _ => Some(QuantMap::Unsigned),
        }
    }

    fn uses_state(&self, key: &str) -> bool {
        key != "max_exp_avg_sq" || self.amsgrad
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("AMSGRAD", self.amsgrad as u32),
            ("DECOUPLED", self.decoupled_weight_decay as u32),
        ]
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    fn scalars(&self, t: u64) -> AdamScalars {
        let (lr, wd) = (widen(self.lr), widen(self.weight_decay));
        let (beta1, beta2) = (widen(self.betas.0), widen(self.betas.1));
        let step = t as f64;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = lr / bias_correction1;
        AdamScalars {
            weight_decay: wd as f32,
            decay_factor: (1.0 - lr * wd) as f32,
            lerp_w: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            neg_step_size: (-step_size) as f32,
            bc2_sqrt: bias_correction2.powf(0.5) as f32,
            eps: widen(self.eps) as f32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "betas[0]" => num betas.0,
        "betas[1]" => num betas.1,
        "eps" => num eps,
        "weight_decay" => num weight_decay,
        "amsgrad" => flag amsgrad,
        "maximize" => flag maximize,
        "decoupled_weight_decay" => flag decoupled_weight_decay,
    }
}
