//! Stochastic gradient descent with momentum, dampening and Nesterov (`torch.optim.SGD`).

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::{check, Error, Result};
use crate::QuantMap;

/// SGD, optionally with (Nesterov) momentum.
pub type Sgd = FusedOptimizer<SgdConfig>;

/// Options of [`Sgd`], with PyTorch's names and defaults.
///
/// ```
/// let cfg = wgpu_optim::SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, ..Default::default() };
/// assert_eq!(cfg.dampening, 0.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate (default 1e-3).
    pub lr: f32,
    /// Momentum factor (0: plain SGD).
    pub momentum: f32,
    /// Dampening of the momentum (0).
    pub dampening: f32,
    /// L2 penalty (0).
    pub weight_decay: f32,
    /// Nesterov momentum; needs momentum > 0 and dampening 0 (false).
    pub nesterov: bool,
    /// Maximize the objective (false).
    pub maximize: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/sgd.wgsl` reads each step, per group (PyTorch's single-tensor SGD).
    pub struct SgdScalars {
        /// `-lr`.
        pub neg_lr: f32,
        /// `weight_decay` (L2, added to the gradient).
        pub weight_decay: f32,
        /// `momentum`.
        pub momentum: f32,
        /// `1 - dampening`.
        pub one_minus_dampening: f32,
        /// 1 on the step that creates the momentum buffer (`buf = grad`), else 0.
        pub first_step: f32,
    }
}

impl OptimizerConfig for SgdConfig {
    const NAME: &'static str = "SGD";
    const SHADER: &'static str = include_str!("../../shaders/sgd.wgsl");
    const MOMENTUM: Option<&'static str> = Some("momentum");
    type Scalars = SgdScalars;
    const SLOTS: &'static [&'static str] = &["momentum_buffer"];

    fn validate(&self) -> Result<()> {
        check("lr", self.lr as f64, self.lr >= 0.0, "must be >= 0")?;
        check(
            "momentum",
            self.momentum as f64,
            self.momentum >= 0.0,
            "must be >= 0",
        )?;
        check("dampening", self.dampening as f64, true, "must be finite")?;
        check(
            "weight_decay",
            self.weight_decay as f64,
            self.weight_decay >= 0.0,
            "must be >= 0",
        )?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(Error::InvalidOptions(
                "Nesterov momentum requires a momentum and zero dampening".into(),
            ));
        }
        Ok(())
    }

    fn quant_map(&self, _key: &str) -> Option<QuantMap> {
        Some(QuantMap::Signed)
    }

    fn uses_state(&self, _key: &str) -> bool {
        self.momentum != 0.0
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("MOMENTUM", (self.momentum != 0.0) as u32),
            ("NESTEROV", self.nesterov as u32),
        ]
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    fn scalars(&self, t: u64) -> SgdScalars {
        SgdScalars {
            neg_lr: (-widen(self.lr)) as f32,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            one_minus_dampening: (1.0 - widen(self.dampening)) as f32,
            first_step: if t == 1 { 1.0 } else { 0.0 },
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "momentum" => num momentum,
        "dampening" => num dampening,
        "weight_decay" => num weight_decay,
        "nesterov" => flag nesterov,
        "maximize" => flag maximize,
    }
}
