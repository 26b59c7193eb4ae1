//! LAMB (You et al. 2019), as `optax.lamb` chains it.

use super::{check_adam_like, widen, FusedOptimizer, OptimizerConfig};
use crate::error::Result;

/// LAMB: Adam's direction with decoupled weight decay, scaled per tensor by the trust ratio
/// `||p|| / ||u||`.
pub type Lamb = FusedOptimizer<LambConfig>;

/// Options of [`Lamb`], with `optax.lamb`'s meaning (`b1`, `b2` as `betas`): lr 1e-3, betas
/// (0.9, 0.999), eps 1e-6, weight_decay 0 by default.
///
/// Each step `t`, per element, then per tensor: `m = beta1 m + (1 - beta1) g`,
/// `v = beta2 v + (1 - beta2) g^2`,
/// `u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p`,
/// `p = p - lr * (||p|| / ||u||) * u` (the ratio 1 where either norm is 0). The two norms of
/// every tensor are reduced on the GPU in the step's own submit, in a fixed order
/// ([`OptimizerConfig::TENSOR_SUMS`]): the step is two passes over the tensors and a small
/// reduce pass, with no read-back. Both passes compute the direction from the moments as
/// stored, so they agree on it with a bf16 state too.
///
/// ```
/// use wgpu_optim::LambConfig;
/// let lamb = LambConfig { weight_decay: 0.01, ..Default::default() };
/// assert_eq!((lamb.lr, lamb.betas, lamb.eps), (1e-3, (0.9, 0.999), 1e-6));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LambConfig {
    /// Learning rate (default 1e-3).
    pub lr: f32,
    /// Decay rates of the moments ((0.9, 0.999)).
    pub betas: (f32, f32),
    /// Added to the denominator (1e-6).
    pub eps: f32,
    /// Decoupled weight decay, added to the direction before the trust ratio (0).
    pub weight_decay: f32,
}

impl Default for LambConfig {
    fn default() -> Self {
        LambConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-6,
            weight_decay: 0.0,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/lamb.wgsl` reads each step, per group.
    pub struct LambScalars {
        /// `beta1`.
        pub beta1: f32,
        /// `1 - beta1`.
        pub one_minus_beta1: f32,
        /// `beta2`.
        pub beta2: f32,
        /// `1 - beta2`.
        pub one_minus_beta2: f32,
        /// `1 - beta1^t`.
        pub bias_correction1: f32,
        /// `1 - beta2^t`.
        pub bias_correction2: f32,
        /// `eps`.
        pub eps: f32,
        /// `weight_decay`.
        pub weight_decay: f32,
        /// `-lr`.
        pub neg_lr: f32,
    }
}

impl OptimizerConfig for LambConfig {
    const NAME: &'static str = "LAMB";
    const SHADER: &'static str = include_str!("../../shaders/lamb.wgsl");
    const MOMENTUM: Option<&'static str> = Some("betas[0]");
    const TENSOR_SUMS: u32 = 2;
    type Scalars = LambScalars;
    const SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq"];

    /// torch.optim's rules for Adam's options: `lr`, `eps`, `weight_decay` >= 0, betas in
    /// [0, 1).
    fn validate(&self) -> Result<()> {
        check_adam_like(self.lr, self.eps, self.betas, self.weight_decay)
    }

    fn uses_state(&self, _key: &str) -> bool {
        true
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    fn maximize(&self) -> bool {
        false
    }

    fn scalars(&self, t: u64) -> LambScalars {
        let (beta1, beta2) = (widen(self.betas.0), widen(self.betas.1));
        LambScalars {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction1: (1.0 - beta1.powf(t as f64)) as f32,
            bias_correction2: (1.0 - beta2.powf(t as f64)) as f32,
            eps: self.eps,
            weight_decay: self.weight_decay,
            neg_lr: (-widen(self.lr)) as f32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "betas[0]" => num betas.0,
        "betas[1]" => num betas.1,
        "eps" => num eps,
        "weight_decay" => num weight_decay,
    }
}
