//! RAdam (`torch.optim.RAdam`): Adam with the variance of the adaptive learning rate rectified.

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::Result;

/// RAdam, `torch.optim.RAdam` (with `decoupled_weight_decay: true`, decoupled decay as AdamW).
pub type RAdam = FusedOptimizer<RAdamConfig>;

/// Options of [`RAdam`], with PyTorch's names and defaults.
///
/// The rectification branch (`rho_t > 5`) depends only on the step and `betas[1]`, so it is
/// decided on the host each step, as torch decides it; the kernel takes the branch uniformly.
///
/// ```
/// use wgpu_optim::RAdamConfig;
/// let cfg = RAdamConfig { decoupled_weight_decay: true, weight_decay: 1e-2, ..Default::default() };
/// assert_eq!((cfg.lr, cfg.eps), (1e-3, 1e-8));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RAdamConfig {
    /// Learning rate (default 1e-3).
    pub lr: f32,
    /// Coefficients of the running averages of the gradient and its square (0.9, 0.999).
    pub betas: (f32, f32),
    /// Added to the denominator (1e-8).
    pub eps: f32,
    /// Weight decay (0).
    pub weight_decay: f32,
    /// Decay the weights directly (`p *= 1 - lr * wd`, as AdamW) instead of adding `wd * p` to
    /// the gradient (false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing (false).
    pub maximize: bool,
}

impl Default for RAdamConfig {
    fn default() -> Self {
        RAdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/radam.wgsl` reads each step, per group (PyTorch's single-tensor RAdam).
    pub struct RAdamScalars {
        /// L2 decay added to the gradient (coupled decay).
        pub weight_decay: f32,
        /// `1 - lr * weight_decay` (decoupled decay).
        pub decay_factor: f32,
        /// `1 - beta1`, the weight of `exp_avg.lerp_(grad, 1 - beta1)`.
        pub lerp_w: f32,
        /// `beta2`.
        pub beta2: f32,
        /// `1 - beta2`.
        pub one_minus_beta2: f32,
        /// `1 - beta1^t`.
        pub bias_correction1: f32,
        /// `lr`.
        pub lr: f32,
        /// `sqrt(1 - beta2^t)`.
        pub bc2_sqrt: f32,
        /// The rectification term `sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))`.
        pub rect: f32,
        /// `eps`.
        pub eps: f32,
        /// 1 when `rho_t > 5` (adaptive, rectified step), else 0 (plain momentum step).
        pub rectify: f32,
    }
}

impl RAdamConfig {
    /// `(rho_t, rect)` for step `t`, in f64 as torch computes them (`rect` is only meaningful
    /// when `rho_t > 5`).
    pub fn rectification(&self, t: u64) -> (f64, f64) {
        let beta2 = widen(self.betas.1);
        let step = t as f64;
        let bias_correction2 = 1.0 - beta2.powf(step);
        let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
        let rho_t = rho_inf - 2.0 * step * beta2.powf(step) / bias_correction2;
        let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            .powf(0.5);
        (rho_t, rect)
    }
}

impl OptimizerConfig for RAdamConfig {
    const NAME: &'static str = "RAdam";
    const SHADER: &'static str = concat!(
        include_str!("../../shaders/adam_family.wgsl"),
        include_str!("../../shaders/radam.wgsl")
    );
    const MOMENTUM: Option<&'static str> = Some("betas[0]");
    type Scalars = RAdamScalars;
    const SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq"];

    fn validate(&self) -> Result<()> {
        super::check_adam_like(self.lr, self.eps, self.betas, self.weight_decay)
    }

    fn uses_state(&self, _key: &str) -> bool {
        true
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("DECOUPLED", self.decoupled_weight_decay as u32)]
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    fn scalars(&self, t: u64) -> RAdamScalars {
        let (lr, wd) = (widen(self.lr), widen(self.weight_decay));
        let (beta1, beta2) = (widen(self.betas.0), widen(self.betas.1));
        let step = t as f64;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let (rho_t, rect) = self.rectification(t);
        let rectify = rho_t > 5.0;
        RAdamScalars {
            weight_decay: wd as f32,
            decay_factor: (1.0 - lr * wd) as f32,
            lerp_w: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction1: bias_correction1 as f32,
            lr: lr as f32,
            bc2_sqrt: bias_correction2.powf(0.5) as f32,
            rect: if rectify { rect as f32 } else { 0.0 },
            eps: widen(self.eps) as f32,
            rectify: rectify as u8 as f32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "betas[0]" => num betas.0,
        "betas[1]" => num betas.1,
        "eps" => num eps,
        "weight_decay" => num weight_decay,
        "decoupled_weight_decay" => flag decoupled_weight_decay,
        "maximize" => flag maximize,
    }
}
