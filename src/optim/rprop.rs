//! Rprop (`torch.optim.Rprop`).

use super::{FusedOptimizer, OptimizerConfig};
use crate::error::{check, Result};

/// Rprop, the resilient backpropagation algorithm.
pub type Rprop = FusedOptimizer<RpropConfig>;

/// Options of [`Rprop`], with PyTorch's names and defaults.
///
/// `lr` is only the initial per-element step size: as in torch, `step_size` starts at the `lr`
/// the optimizer is built with (or loads from a checkpoint) and later changes of `lr` (e.g. by
/// a scheduler) do not affect it.
///
/// ```
/// let cfg = wgpu_optim::RpropConfig::default();
/// assert_eq!((cfg.lr, cfg.etas, cfg.step_sizes), (1e-2, (0.5, 1.2), (1e-6, 50.0)));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RpropConfig {
    /// Initial step size of every element (default 1e-2).
    pub lr: f32,
    /// Multiplicative decrease and increase factors `(etaminus, etaplus)` ((0.5, 1.2)).
    pub etas: (f32, f32),
    /// Minimal and maximal step sizes ((1e-6, 50)).
    pub step_sizes: (f32, f32),
    /// Maximize the objective (false).
    pub maximize: bool,
}

impl Default for RpropConfig {
    fn default() -> Self {
        RpropConfig {
            lr: 1e-2,
            etas: (0.5, 1.2),
            step_sizes: (1e-6, 50.0),
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/rprop.wgsl` reads each step, per group (PyTorch's single-tensor Rprop).
    pub struct RpropScalars {
        /// `etas[0]`, the factor where the gradient changed sign.
        pub etaminus: f32,
        /// `etas[1]`, the factor where it kept its sign.
        pub etaplus: f32,
        /// `step_sizes[0]`.
        pub step_size_min: f32,
        /// `step_sizes[1]`.
        pub step_size_max: f32,
    }
}

impl OptimizerConfig for RpropConfig {
    const NAME: &'static str = "Rprop";
    const SHADER: &'static str = include_str!("../../shaders/rprop.wgsl");
    type Scalars = RpropScalars;
    const SLOTS: &'static [&'static str] = &["prev", "step_size"];

    fn validate(&self) -> Result<()> {
        let (em, ep) = self.etas;
        check("lr", self.lr as f64, self.lr >= 0.0, "must be >= 0")?;
        check(
            "etas[0]",
            em as f64,
            0.0 < em && em < 1.0,
            "must be in (0, 1)",
        )?;
        check("etas[1]", ep as f64, ep > 1.0, "must be > 1")?;
        // torch checks nothing here; we only ask for finite numbers.
        check(
            "step_sizes[0]",
            self.step_sizes.0 as f64,
            true,
            "must be finite",
        )?;
        check(
            "step_sizes[1]",
            self.step_sizes.1 as f64,
            true,
            "must be finite",
        )
    }

    fn uses_state(&self, _key: &str) -> bool {
        true
    }

    /// torch: `prev` starts at 0, `step_size` at `lr`.
    fn state_init(&self, key: &str) -> f32 {
        if key == "step_size" {
            self.lr
        } else {
            0.0
        }
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    fn scalars(&self, _t: u64) -> RpropScalars {
        RpropScalars {
            etaminus: self.etas.0,
            etaplus: self.etas.1,
            step_size_min: self.step_sizes.0,
            step_size_max: self.step_sizes.1,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "etas[0]" => num etas.0,
        "etas[1]" => num etas.1,
        "step_sizes[0]" => num step_sizes.0,
        "step_sizes[1]" => num step_sizes.1,
        "maximize" => flag maximize,
    }
}
