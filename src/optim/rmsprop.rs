//! RMSprop, optionally centered and with momentum (`torch.optim.RMSprop`).

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::{check, Result};
use crate::QuantMap;

/// RMSprop.
pub type RmsProp = FusedOptimizer<RmsPropConfig>;

/// Options of [`RmsProp`], with PyTorch's names and defaults.
///
/// ```
/// let cfg = wgpu_optim::RmsPropConfig { centered: true, ..Default::default() };
/// assert_eq!((cfg.lr, cfg.alpha), (1e-2, 0.99));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RmsPropConfig {
    /// Learning rate (default 1e-2).
    pub lr: f32,
    /// Smoothing constant of the squared-gradient average (0.99).
    pub alpha: f32,
    /// Added to the denominator (1e-8).
    pub eps: f32,
    /// L2 penalty (0).
    pub weight_decay: f32,
    /// Momentum factor (0).
    pub momentum: f32,
    /// Normalise by an estimate of the gradient's variance (false).
    pub centered: bool,
    /// Maximize the objective (false).
    pub maximize: bool,
}

impl Default for RmsPropConfig {
    fn default() -> Self {
        RmsPropConfig {
            lr: 1e-2,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/rmsprop.wgsl` reads each step, per group (PyTorch's single-tensor RMSprop).
    pub struct RmsPropScalars {
        /// `-lr`.
        pub neg_lr: f32,
        /// `weight_decay` (L2, added to the gradient).
        pub weight_decay: f32,
        /// `alpha`.
        pub alpha: f32,
        /// `1 - alpha`: `square_avg`'s weight of `grad²` and `grad_avg.lerp_`'s weight.
        pub one_minus_alpha: f32,
        /// `eps`.
        pub eps: f32,
        /// `momentum`.
        pub momentum: f32,
    }
}

impl OptimizerConfig for RmsPropConfig {
    const NAME: &'static str = "RMSprop";
    const SHADER: &'static str = include_str!("../../shaders/rmsprop.wgsl");
    const MOMENTUM: Option<&'static str> = Some("momentum");
    type Scalars = RmsPropScalars;
    const SLOTS: &'static [&'static str] = &["square_avg", "momentum_buffer", "grad_avg"];

    fn validate(&self) -> Result<()> {
        check("lr", self.lr as f64, self.lr >= 0.0, "must be >= 0")?;
        check("eps", self.eps as f64, self.eps >= 0.0, "must be >= 0")?;
        check(
            "momentum",
            self.momentum as f64,
            self.momentum >= 0.0,
            "must be >= 0",
        )?;
        check(
            "weight_decay",
            self.weight_decay as f64,
            self.weight_decay >= 0.0,
            "must be >= 0",
        )?;
        check(
            "alpha",
            self.alpha as f64,
            self.alpha >= 0.0,
            "must be >= 0",
        )
    }

    fn quant_map(&self, key: &str) -> Option<QuantMap> {
        match key {
            "square_avg" => Some(QuantMap::Unsigned),
            _ => Some(QuantMap::Signed),
        }
    }

    fn uses_state(&self, key: &str) -> bool {
        match key {
            "momentum_buffer" => self.momentum > 0.0,
            "grad_avg" => self.centered,
            _ => true,
        }
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("CENTERED", self.centered as u32),
            ("MOMENTUM", (self.momentum > 0.0) as u32),
        ]
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    fn scalars(&self, _t: u64) -> RmsPropScalars {
        RmsPropScalars {
            neg_lr: (-widen(self.lr)) as f32,
            weight_decay: self.weight_decay,
            alpha: self.alpha,
            one_minus_alpha: (1.0 - widen(self.alpha)) as f32,
            eps: self.eps,
            momentum: self.momentum,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "alpha" => num alpha,
        "eps" => num eps,
        "weight_decay" => num weight_decay,
        "momentum" => num momentum,
        "centered" => flag centered,
        "maximize" => flag maximize,
    }
}
