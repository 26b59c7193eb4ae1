//! The optimizer engine shared by every algorithm, and the object-safe [`Optimizer`] trait.
//!
//! Each algorithm (`adam.rs`, `sgd.rs`, ...) only says what is its own: its config with
//! PyTorch's names and defaults, validation, state names, per-step scalars and its shader.
//! Everything else (state buffers in the arena layout, bind groups built once, one dispatch per
//! chunk, one submit per step) lives here, in [`Optim`].

mod adagrad;
mod adam;
mod rmsprop;
mod sgd;

pub use adagrad::{Adagrad, AdagradConfig};
pub use adam::{Adam, AdamConfig};
pub use rmsprop::{RmsProp, RmsPropConfig};
pub use sgd::{Sgd, SgdConfig};

mod engine;
mod groups;
mod persist;

pub use groups::ParamGroup;

use crate::clip::GradScaler;
use crate::error::Result;
use crate::params::Params;

/// Number of f32 scalars per parameter group passed to a kernel each step (64 bytes).
pub const SCALARS: usize = 16;

/// What every optimizer can do; object safe, so `Box<dyn Optimizer>` works (and checkpoints:
/// [`crate::checkpoint::save`] takes `&dyn Optimizer`). Implemented by [`Optim`] for every
/// [`OptimizerConfig`]; its supertrait is private to the crate (sealed).
pub trait Optimizer: persist::Persist {
    /// The algorithm's name, e.g. `"Adam"`.
    fn name(&self) -> &'static str;
    /// Record and submit one fused update of every tensor. Never waits for the GPU.
    ///
    /// Validates the configuration and that `params` is the set this optimizer was built for
    /// before any GPU work; an `Err` changes nothing.
    fn step(&mut self, params: &mut Params) -> Result<()>;
    /// Current learning rate.
    fn lr(&self) -> f32;
    /// Set the learning rate used from the next step on (validated by the next `step`).
    fn set_lr(&mut self, lr: f32);
    /// Number of steps taken.
    fn step_count(&self) -> u64;
    /// The state keys this configuration keeps (PyTorch's names, e.g. `exp_avg`).
    fn state_keys(&self) -> Vec<&'static str>;
    /// Read one state tensor back (PyTorch's key, tensor name). Blocks.
    fn state(&self, key: &str, tensor: &str) -> Result<Vec<f32>>;

    /// Number of parameter groups (1 unless built with [`Optim::with_groups`]).
    fn group_count(&self) -> usize;
    /// Learning rate of one group.
    fn group_lr(&self, group: usize) -> Result<f32>;
    /// Set the learning rate of one group (validated here).
    fn set_group_lr(&mut self, group: usize, lr: f32) -> Result<()>;
    /// The group's momentum-like coefficient, for schedulers that cycle it: SGD's and RMSprop's
    /// `momentum`, Adam's `betas[0]`; `None` for Adagrad.
    fn group_momentum(&self, group: usize) -> Result<Option<f32>>;
    /// Set the group's momentum-like coefficient (validated here).
    fn set_group_momentum(&mut self, group: usize, momentum: f32) -> Result<()>;

    /// Clip gradients by their global norm before every update (`None`: off). The norm is
    /// computed on the GPU in one extra read of the gradients and never read back.
    fn set_max_grad_norm(&mut self, max_norm: Option<f32>) -> Result<()>;
    /// Norm used for clipping and [`Optimizer::last_grad_norm`]: 2 (default), 1 or `inf`.
    fn set_grad_norm_type(&mut self, norm_type: f32) -> Result<()>;
    /// Total gradient norm of the last step (after unscaling). A sync point: one small read-back.
    fn last_grad_norm(&self) -> Result<f32>;
    /// Make a step with any inf/NaN gradient a no-op on the GPU (params, state and step count
    /// untouched).
    fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()>;
    /// Whether the last step was skipped for a non-finite gradient. A sync point.
    fn last_step_skipped(&self) -> Result<bool>;
    /// Attach a loss scaler (`None` detaches it): gradients are unscaled as they are read,
    /// overflowing steps are skipped and the scale is updated on the GPU.
    fn set_grad_scaler(&mut self, scaler: Option<&GradScaler>) -> Result<()>;
}

/// The per-algorithm part of an optimizer. Implemented by [`AdamConfig`], [`SgdConfig`],
/// [`RmsPropConfig`] and [`AdagradConfig`]; [`Optim`] does the rest.
pub trait OptimizerConfig: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The algorithm's name.
    const NAME: &'static str;
    /// Full WGSL source of the update kernel (common code + the family's file).
    const SHADER: &'static str;
    /// Every state buffer the shader declares, in binding order (PyTorch's names).
    const SLOTS: &'static [&'static str];
    /// Check every option against PyTorch's rules.
    fn validate(&self) -> Result<()>;
    /// Whether this configuration uses state `key` (one of [`Self::SLOTS`]).
    fn uses_state(&self, key: &str) -> bool;
    /// Initial value of state `key` (PyTorch initialises all but Adagrad's `sum` to zero).
    fn state_init(&self, _key: &str) -> f32 {
        0.0
    }
    /// Boolean specialisation constants (`override`s) of the shader, as 0/1.
    fn constants(&self) -> Vec<(&'static str, u32)>;
    /// Whether gradients are negated (`maximize`).
    fn maximize(&self) -> bool;
    /// The scalars for step `t` (1-based, the step about to be taken), computed in f64 as
    /// PyTorch's single-tensor path does and rounded to f32 once.
    fn scalars(&self, t: u64) -> [f32; SCALARS];
    /// The learning rate.
    fn lr(&self) -> f32;
    /// Set the learning rate.
    fn set_lr(&mut self, lr: f32);
    /// The momentum-like coefficient (SGD/RMSprop `momentum`, Adam `betas[0]`), if any.
    fn momentum(&self) -> Option<f32> {
        None
    }
    /// Set the momentum-like coefficient (ignored where there is none).
    fn set_momentum(&mut self, _momentum: f32) {}
    /// Every option by PyTorch's name (Adam's `betas` tuple as `betas[0]` and `betas[1]`):
    /// numbers as the f64 a Python user would have written (see [`widen`]; `0.9f32` is `0.9`),
    /// booleans as 0 or 1. Checkpoints store these for every group.
    ///
    /// ```
    /// use wgpu_optim::{OptimizerConfig, SgdConfig};
    /// let hp = SgdConfig { lr: 0.1, nesterov: true, momentum: 0.9, ..Default::default() }
    ///     .hyperparameters();
    /// assert!(hp.contains(&("lr", 0.1)) && hp.contains(&("nesterov", 1.0)));
    /// ```
    fn hyperparameters(&self) -> Vec<(&'static str, f64)>;
    /// Set one option by its name in [`OptimizerConfig::hyperparameters`]: numbers are rounded
    /// to f32, booleans must be exactly 0 or 1 ([`crate::Error::InvalidHyperparameter`]), an
    /// unknown name is an [`crate::Error::UnknownHyperparameter`]. The value is not range-checked
    /// here: call [`OptimizerConfig::validate`] after the last one.
    ///
    /// ```
    /// use wgpu_optim::{AdamConfig, OptimizerConfig};
    /// let mut cfg = AdamConfig::default();
    /// cfg.set_hyperparameter("betas[1]", 0.98)?;
    /// cfg.set_hyperparameter("amsgrad", 1.0)?;
    /// assert_eq!((cfg.betas.1, cfg.amsgrad), (0.98, true));
    /// assert!(cfg.set_hyperparameter("momentum", 0.9).is_err());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    fn set_hyperparameter(&mut self, name: &str, value: f64) -> Result<()>;
}

/// A hyperparameter for [`OptimizerConfig::hyperparameters`]: [`widen`]ed, unless that would
/// not round back to the same f32 (then the f32's exact value), so a save/load round trip is
/// exact.
pub(crate) fn hyper(x: f32) -> f64 {
    let w = widen(x);
    if w as f32 == x || x.is_nan() {
        w
    } else {
        x as f64
    }
}

/// A boolean hyperparameter from 0 or 1.
pub(crate) fn flag(name: &'static str, value: f64) -> Result<bool> {
    if value == 0.0 || value == 1.0 {
        Ok(value == 1.0)
    } else {
        Err(crate::Error::InvalidHyperparameter {
            name,
            value,
            rule: "a boolean option must be 0 or 1",
        })
    }
}

/// The error for a hyperparameter name an optimizer does not have.
pub(crate) fn unknown_hyperparameter(optimizer: &'static str, name: &str) -> crate::Error {
    crate::Error::UnknownHyperparameter {
        name: name.to_string(),
        optimizer,
    }
}

/// A hyperparameter given as f32, widened to the f64 a Python user would have written
/// (0.9f32 becomes 0.9, not 0.8999999761581421): the shortest decimal that round-trips.
pub fn widen(x: f32) -> f64 {
    if !x.is_finite() {
        return x as f64;
    }
    // Every step widens each hyperparameter again (for up to 8 candidate step counts once
    // steps can be skipped), and formatting + parsing is the costly part of the host's own
    // work in `step()`: remember the last few, per thread.
    thread_local! {
        static RECENT: std::cell::Cell<[(u32, f64); 16]> =
            const { std::cell::Cell::new([(u32::MAX, 0.0); 16]) };
    }
    let bits = x.to_bits();
    let slot = (bits ^ (bits >> 7) ^ (bits >> 17)) as usize % 16;
    RECENT.with(|recent| {
        let mut cache = recent.get();
        if cache[slot].0 == bits {
            return cache[slot].1;
        }
        let wide = x.to_string().parse().unwrap_or(x as f64);
        cache[slot] = (bits, wide);
        recent.set(cache);
        wide
    })
}

pub use engine::Optim;

#[cfg(test)]
mod tests {
    use super::widen;

    #[test]
    fn widen_is_the_shortest_decimal_and_cached_values_agree() {
        assert_eq!(widen(0.9), 0.9);
        assert_eq!(widen(1e-3), 1e-3);
        assert_eq!(widen(0.999), 0.999);
        assert_eq!(widen(f32::INFINITY), f64::INFINITY);
        assert!(widen(f32::NAN).is_nan());
        // Many values through the 16-entry cache, twice, in different orders: every answer is
        // the uncached one.
        let xs: Vec<f32> = (0..200).map(|i| 1e-4 * (i as f32 + 0.37)).collect();
        let want: Vec<f64> = xs.iter().map(|x| x.to_string().parse().unwrap()).collect();
        for _ in 0..2 {
            for (x, w) in xs.iter().zip(&want) {
                assert_eq!(widen(*x), *w);
            }
            for (x, w) in xs.iter().zip(&want).rev() {
                assert_eq!(widen(*x), *w);
            }
        }
    }
}
