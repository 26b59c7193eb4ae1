//! The step-like schedulers: StepLR, MultiStepLR, ExponentialLR, LinearLR, ConstantLR and
//! PolynomialLR. Each is its own [`Rule`]: PyTorch's recursive `get_lr` (from the group's
//! current lr) and its closed form (for SequentialLR's restarts).

use super::rules::Scheduler;
use super::rules::{
    bad, each, ensure, ensure_count, epoch_of, scaled, Attach, Core, Options, Rule, Vals,
};
use crate::error::Result;

/// Decays the lr by `gamma` every `step_size` epochs (PyTorch's `StepLR`).
#[derive(Clone, Debug, PartialEq)]
pub struct StepLR {
    /// Period of the decay, in epochs (>= 1).
    pub step_size: u64,
    /// Multiplicative factor (> 0). Default 0.1.
    pub gamma: f64,
}

impl StepLR {
    /// `step_size` with PyTorch's default `gamma = 0.1`.
    pub fn new(step_size: u64) -> Self {
        StepLR {
            step_size,
            gamma: 0.1,
        }
    }
}

/// Decays the lr by `gamma` at each milestone (PyTorch's `MultiStepLR`). A milestone listed `k`
/// times multiplies by `gamma^k`, as PyTorch's `Counter` does.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiStepLR {
    /// Epochs at which to decay, non-decreasing.
    pub milestones: Vec<u64>,
    /// Multiplicative factor (> 0). Default 0.1.
    pub gamma: f64,
}

impl MultiStepLR {
    /// `milestones` with PyTorch's default `gamma = 0.1`.
    pub fn new(milestones: impl Into<Vec<u64>>) -> Self {
        MultiStepLR {
            milestones: milestones.into(),
            gamma: 0.1,
        }
    }
}

/// Decays the lr by `gamma` every epoch (PyTorch's `ExponentialLR`).
#[derive(Clone, Debug, PartialEq)]
pub struct ExponentialLR {
    /// Multiplicative factor (> 0).
    pub gamma: f64,
}

impl ExponentialLR {
    /// Decay by `gamma` per epoch.
    pub fn new(gamma: f64) -> Self {
        ExponentialLR { gamma }
    }
}

/// Scales the lr linearly from `start_factor` to `end_factor` over `total_iters` epochs
/// (PyTorch's `LinearLR`, its recursive form). Defaults are PyTorch's: 1/3, 1, 5.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearLR {
    /// Factor at epoch 0, in (0, 1].
    pub start_factor: f64,
    /// Factor from epoch `total_iters` on, in [0, 1].
    pub end_factor: f64,
    /// Length of the ramp in epochs (>= 1).
    pub total_iters: u64,
}

impl Default for LinearLR {
    fn default() -> Self {
        LinearLR {
            start_factor: 1.0 / 3.0,
            end_factor: 1.0,
            total_iters: 5,
        }
    }
}

/// Multiplies the lr by `factor` until epoch `total_iters`, then restores it (PyTorch's
/// `ConstantLR`, its recursive form). Defaults are PyTorch's: 1/3, 5.
///
/// ```
/// use wgpu_optim::{ConstantLR, Schedule};
/// // lr/2 for the first 4 epochs, then the full lr.
/// let s = ConstantLR::new(0.5, 4);
/// assert_eq!(ConstantLR::default(), ConstantLR::new(1.0 / 3.0, 5));
/// Schedule::from(s).validate(1)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ConstantLR {
    /// Factor applied before epoch `total_iters`, in (0, 1].
    pub factor: f64,
    /// Epochs at the reduced lr (>= 1).
    pub total_iters: u64,
}

impl Default for ConstantLR {
    fn default() -> Self {
        ConstantLR {
            factor: 1.0 / 3.0,
            total_iters: 5,
        }
    }
}

impl ConstantLR {
    /// `factor` for `total_iters` epochs.
    ///
    /// ```
    /// let s = wgpu_optim::ConstantLR::new(0.1, 2);
    /// assert_eq!((s.factor, s.total_iters), (0.1, 2));
    /// ```
    pub fn new(factor: f64, total_iters: u64) -> Self {
        ConstantLR {
            factor,
            total_iters,
        }
    }
}

/// Decays the lr as `(1 - epoch / total_iters)^power` of the initial lr, reaching 0 at
/// `total_iters` (PyTorch's `PolynomialLR`, its recursive form). Defaults are PyTorch's: 5, 1.
///
/// ```
/// use wgpu_optim::{PolynomialLR, Schedule};
/// // Quadratic decay to 0 over 100 epochs.
/// let s = PolynomialLR::new(100, 2.0);
/// assert_eq!(PolynomialLR::default(), PolynomialLR::new(5, 1.0));
/// Schedule::from(s).validate(1)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PolynomialLR {
    /// Epochs until the lr reaches 0 (>= 1); it stays there after.
    pub total_iters: u64,
    /// The power of the polynomial (>= 0).
    pub power: f64,
}

impl Default for PolynomialLR {
    fn default() -> Self {
        PolynomialLR {
            total_iters: 5,
            power: 1.0,
        }
    }
}

impl PolynomialLR {
    /// Decay over `total_iters` epochs with `power`.
    ///
    /// ```
    /// let s = wgpu_optim::PolynomialLR::new(30, 0.5);
    /// assert_eq!((s.total_iters, s.power), (30, 0.5));
    /// ```
    pub fn new(total_iters: u64, power: f64) -> Self {
        PolynomialLR { total_iters, power }
    }
}

/// The [`Options`] of a step-like config that is its own [`Rule`] (no derived state).
macro_rules! own_rule {
    ($t:ty, $name:literal, |$s:ident, $groups:ident| $validate:expr) => {
        impl Options for $t {
            fn name(&self) -> &'static str {
                $name
            }
            fn validate(&self, $groups: usize) -> Result<()> {
                let $s = self;
                $validate
            }
            fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler> {
                at.standard($name, self.clone())
            }
        }
    };
}

own_rule!(StepLR, "StepLR", |s, _groups| {
    ensure_count("step_size", s.step_size, 1, "must be >= 1")?;
    ensure("gamma", s.gamma, s.gamma > 0.0, "must be > 0")
});

impl Rule for StepLR {
    fn get_lr(&self, core: &Core, vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        let e = core.last_epoch;
        Ok(if e == 0 || e % epoch_of(self.step_size) != 0 {
            vals.lr.clone()
        } else {
            scaled(&vals.lr, self.gamma)
        })
    }

    fn closed_form(&self, core: &Core) -> Option<Vec<f64>> {
        let k = core.last_epoch / epoch_of(self.step_size);
        Some(each(&core.base_lrs, |b| b * self.gamma.powf(k as f64)))
    }
}

own_rule!(MultiStepLR, "MultiStepLR", |s, _groups| {
    ensure("gamma", s.gamma, s.gamma > 0.0, "must be > 0")?;
    if let Some(w) = s.milestones.windows(2).find(|w| w[1] < w[0]) {
        return Err(bad(
            "milestones",
            w[1] as f64,
            "must be non-decreasing (a repeated milestone decays twice)",
        ));
    }
    Ok(())
});

impl MultiStepLR {
    /// How many milestones `ok` accepts (compared as i128: any u64 against any epoch).
    fn count(&self, ok: impl Fn(i128) -> bool) -> usize {
        self.milestones.iter().filter(|&&m| ok(m as i128)).count()
    }
}

impl Rule for MultiStepLR {
    fn get_lr(&self, core: &Core, vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        let e = core.last_epoch as i128;
        Ok(match self.count(|m| m == e) {
            0 => vals.lr.clone(),
            count => scaled(&vals.lr, self.gamma.powf(count as f64)),
        })
    }

    fn closed_form(&self, core: &Core) -> Option<Vec<f64>> {
        let e = core.last_epoch as i128;
        let k = self.count(|m| m <= e);
        Some(each(&core.base_lrs, |b| b * self.gamma.powf(k as f64)))
    }
}

own_rule!(ExponentialLR, "ExponentialLR", |s, _groups| ensure(
    "gamma",
    s.gamma,
    s.gamma > 0.0,
    "must be > 0"
));

impl Rule for ExponentialLR {
    fn get_lr(&self, _core: &Core, vals: &mut Vals, initial: bool) -> Result<Vec<f64>> {
        Ok(if initial {
            vals.lr.clone()
        } else {
            scaled(&vals.lr, self.gamma)
        })
    }

    fn closed_form(&self, core: &Core) -> Option<Vec<f64>> {
        let e = core.last_epoch as f64;
        Some(each(&core.base_lrs, |b| b * self.gamma.powf(e)))
    }
}

own_rule!(LinearLR, "LinearLR", |s, _groups| {
    ensure(
        "start_factor",
        s.start_factor,
        s.start_factor > 0.0 && s.start_factor <= 1.0,
        "must be in (0, 1]",
    )?;
    ensure(
        "end_factor",
        s.end_factor,
        (0.0..=1.0).contains(&s.end_factor),
        "must be in [0, 1]",
    )?;
    ensure_count("total_iters", s.total_iters, 1, "must be >= 1")
});

impl Rule for LinearLR {
    fn get_lr(&self, core: &Core, vals: &mut Vals, initial: bool) -> Result<Vec<f64>> {
        let e = core.last_epoch;
        Ok(if e == 0 {
            scaled(&vals.lr, self.start_factor)
        } else if initial || e > epoch_of(self.total_iters) {
            vals.lr.clone()
        } else {
            let d = self.end_factor - self.start_factor;
            let f = 1.0 + d / (self.total_iters as f64 * self.start_factor + (e - 1) as f64 * d);
            scaled(&vals.lr, f)
        })
    }

    fn closed_form(&self, core: &Core) -> Option<Vec<f64>> {
        let e = epoch_of(self.total_iters).min(core.last_epoch) as f64;
        Some(each(&core.base_lrs, |b| {
            b * (self.start_factor
                + (self.end_factor - self.start_factor) * e / self.total_iters as f64)
        }))
    }
}

own_rule!(ConstantLR, "ConstantLR", |s, _groups| {
    ensure(
        "factor",
        s.factor,
        s.factor > 0.0 && s.factor <= 1.0,
        "must be in (0, 1] (PyTorch divides by it at total_iters)",
    )?;
    ensure_count(
        "total_iters",
        s.total_iters,
        1,
        "must be >= 1 (with 0 PyTorch applies the factor forever)",
    )
});

impl Rule for ConstantLR {
    fn get_lr(&self, core: &Core, vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        let e = core.last_epoch;
        Ok(if e == 0 {
            scaled(&vals.lr, self.factor)
        } else if e != epoch_of(self.total_iters) {
            vals.lr.clone()
        } else {
            scaled(&vals.lr, 1.0 / self.factor)
        })
    }

    fn closed_form(&self, core: &Core) -> Option<Vec<f64>> {
        // Python's `(last_epoch >= total_iters) * (1 - factor)`: a bool times a float.
        let after = if core.last_epoch >= epoch_of(self.total_iters) {
            1.0 - self.factor
        } else {
            0.0
        };
        Some(each(&core.base_lrs, |b| b * (self.factor + after)))
    }
}

own_rule!(PolynomialLR, "PolynomialLR", |s, _groups| {
    ensure_count(
        "total_iters",
        s.total_iters,
        1,
        "must be >= 1 (PyTorch's closed form divides by it)",
    )?;
    ensure(
        "power",
        s.power,
        s.power >= 0.0,
        "must be >= 0 (a negative power divides by zero at total_iters)",
    )
});

impl Rule for PolynomialLR {
    fn get_lr(&self, core: &Core, vals: &mut Vals, initial: bool) -> Result<Vec<f64>> {
        let e = core.last_epoch;
        Ok(if initial || e > epoch_of(self.total_iters) {
            vals.lr.clone()
        } else {
            let t = self.total_iters as f64;
            let decay = ((1.0 - e as f64 / t) / (1.0 - (e - 1) as f64 / t)).powf(self.power);
            scaled(&vals.lr, decay)
        })
    }

    fn closed_form(&self, core: &Core) -> Option<Vec<f64>> {
        let e = epoch_of(self.total_iters).min(core.last_epoch) as f64;
        Some(each(&core.base_lrs, |b| {
            b * (1.0 - e / self.total_iters as f64).powf(self.power)
        }))
    }
}
