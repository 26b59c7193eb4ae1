//! Object-safe access to an optimizer's tensors and settings for [`crate::checkpoint`], so that
//! checkpoints work with `&dyn Optimizer` as well as with `&FusedOptimizer<C>`.
//!
//! [`Persist`] is a supertrait of [`super::Optimizer`] that only this crate can name (a
//! "sealed" trait): its methods are not part of the public API, and [`super::Optimizer`] is
//! implemented by [`FusedOptimizer`] for every [`OptimizerConfig`] (extend the crate through
//! `OptimizerConfig`, not by implementing `Optimizer`). Every method takes and returns public
//! types only.

use super::engine::{BlockwiseView, StateHome};
use super::{FusedOptimizer, Optimizer, OptimizerConfig};
use crate::arena::Piece;
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::norm::NormType;
use crate::params::Params;
use crate::scaler::GradScaler;

/// A tensor as a checkpoint sees it: name, length, pieces in the arena chunks, storage dtype,
/// shape.
type TensorView<'a> = (&'a str, usize, &'a [Piece], DType, &'a [usize]);

/// What a checkpoint needs from an optimizer (see the module documentation).
pub trait Persist {
    /// [`OptimizerConfig::NAME`].
    fn ck_kind(&self) -> &'static str;
    /// `Err` unless the optimizer was built for `params`.
    fn ck_ensure_params(&self, params: &Params) -> Result<()>;
    /// The device.
    fn ck_gpu(&self) -> &Gpu;
    /// Every tensor in layout order: name, length, pieces in the arena chunks, storage dtype,
    /// shape.
    fn ck_tensors(&self) -> Vec<TensorView<'_>>;
    /// The per-chunk buffers of state `key` (none for a factored second moment's keys, which
    /// lie where [`Persist::ck_state_home`] says).
    fn ck_state_buffers(&self, key: &str) -> Result<&[wgpu::Buffer]>;
    /// Where state `key` of tensor `t` (layout order) lies.
    fn ck_state_home(&self, key: &str, t: usize) -> Result<StateHome<'_>>;
    /// The tensors of group `g`.
    fn ck_group_tensors(&self, g: usize) -> Result<Vec<&str>>;
    /// Group `g`'s hyperparameters ([`OptimizerConfig::hyperparameters`]).
    fn ck_group_hyperparameters(&self, g: usize) -> Result<Vec<(&'static str, f64)>>;
    /// Check that `hps` (every hyperparameter, by name) would be a valid configuration of group
    /// `g` with the same boolean options; changes nothing.
    fn ck_check_group(&self, g: usize, hps: &[(String, f64)]) -> Result<()>;
    /// Replace group `g`'s hyperparameters with `hps` (checked as by [`Persist::ck_check_group`]).
    fn ck_apply_group(&mut self, g: usize, hps: &[(String, f64)]) -> Result<()>;
    /// Validate every group's configuration.
    fn ck_validate(&self) -> Result<()>;
    /// The state format ([`FusedOptimizer::set_state_format`]).
    fn ck_state_format(&self) -> crate::StateFormat;
    /// Under 8-bit state: where state `key` of tensor `t` (layout order) lies.
    fn ck_blockwise(&self, key: &str, t: usize) -> Result<Option<BlockwiseView<'_>>>;
    /// Quantize state `key` with `map` ([`FusedOptimizer::set_quant_map`]).
    fn ck_set_quant_map(&mut self, key: &str, map: crate::QuantMap) -> Result<()>;
    /// max_grad_norm, norm type, skip_nonfinite.
    fn ck_clipping(&self) -> (Option<f32>, NormType, bool);
    /// Set max_grad_norm, norm type and skip_nonfinite (only those that differ).
    fn ck_set_clipping(&mut self, max: Option<f32>, norm: NormType, skip: bool) -> Result<()>;
    /// The attached loss scaler.
    fn ck_scaler(&self) -> Option<&GradScaler>;
    /// Set the number of steps taken.
    fn ck_set_step_count(&mut self, steps: u64) -> Result<()>;
    /// The state dtype, master weights and rounding; the rounding seed; and the counter the
    /// stochastic-rounding stream is at (steps submitted, skipped ones included).
    fn ck_precision(&self) -> (Precision, u64, u64);
    /// Restore the rounding choice, seed and counter (the state dtype and master weights are
    /// already the checkpoint's). Call after [`Persist::ck_set_step_count`].
    fn ck_set_rounding(&mut self, stochastic: bool, seed: u64, counter: u64) -> Result<()>;
    /// The per-chunk f32 master copies of 16-bit parameters (empty without master weights).
    fn ck_master_buffers(&self) -> &[wgpu::Buffer];
    /// Every group's L1 coefficient.
    fn ck_l1(&self) -> Vec<f32>;
    /// Set every group's L1 coefficient (one per group, each finite and >= 0).
    fn ck_set_l1(&mut self, l1: &[f32]) -> Result<()>;
}

/// Group `g`'s configuration with `hps` applied over `current`: every hyperparameter present,
/// validated, with the same boolean options.
fn configured<C: OptimizerConfig>(g: usize, current: &C, hps: &[(String, f64)]) -> Result<C> {
    let mut cfg = current.clone();
    for (name, _) in current.hyperparameters() {
        if !hps.iter().any(|(k, _)| k == name) {
            return Err(Error::CheckpointFormat(format!(
                "group {g} lacks the hyperparameter `{name}`"
            )));
        }
    }
    for (name, value) in hps {
        cfg.set_hyperparameter(name, *value)?;
    }
    cfg.validate()?;
    if cfg.constants() != current.constants() || cfg.maximize() != current.maximize() {
        let flags = |c: &C| {
            let mut f: Vec<String> = c
                .constants()
                .iter()
                .map(|(k, v)| format!("{}={v}", k.to_lowercase()))
                .collect();
            f.push(format!("maximize={}", c.maximize() as u8));
            f.join(" ")
        };
        return Err(Error::CheckpointMismatch {
            what: format!("boolean options of group {g} (fixed when the optimizer is built)"),
            expected: flags(current),
            got: flags(&cfg),
        });
    }
    Ok(cfg)
}

impl<C: OptimizerConfig> Persist for FusedOptimizer<C> {
    fn ck_kind(&self) -> &'static str {
        C::NAME
    }

    fn ck_ensure_params(&self, params: &Params) -> Result<()> {
        self.ensure_params(params)
    }

    fn ck_gpu(&self) -> &Gpu {
        self.device()
    }

    fn ck_precision(&self) -> (Precision, u64, u64) {
        (
            self.precision(),
            self.rounding_seed(),
            self.rounding_counter(),
        )
    }

    fn ck_set_rounding(&mut self, stochastic: bool, seed: u64, counter: u64) -> Result<()> {
        self.set_precision(Precision {
            stochastic_rounding: stochastic,
            ..self.precision()
        })?;
        self.set_rounding_seed(seed);
        self.set_rounding_counter(counter);
        Ok(())
    }

    fn ck_master_buffers(&self) -> &[wgpu::Buffer] {
        self.master_chunks()
    }

    fn ck_l1(&self) -> Vec<f32> {
        (0..self.group_count())
            .map(|g| self.group_l1(g).unwrap_or(0.0))
            .collect()
    }

    fn ck_set_l1(&mut self, l1: &[f32]) -> Result<()> {
        for (g, &v) in l1.iter().enumerate() {
            self.set_group_l1(g, v)?;
        }
        Ok(())
    }

    fn ck_tensors(&self) -> Vec<TensorView<'_>> {
        self.layout()
            .slots
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.len,
                    s.pieces.as_slice(),
                    s.dtype,
                    s.shape.as_slice(),
                )
            })
            .collect()
    }

    fn ck_state_buffers(&self, key: &str) -> Result<&[wgpu::Buffer]> {
        if C::FACTORED && super::engine::FACTORED_KEYS.contains(&key) {
            return Ok(&[]);
        }
        self.state_chunks(key)
    }

    fn ck_state_home(&self, key: &str, t: usize) -> Result<StateHome<'_>> {
        self.state_home(key, t)
    }

    fn ck_group_tensors(&self, g: usize) -> Result<Vec<&str>> {
        self.group_tensors(g)
    }

    fn ck_group_hyperparameters(&self, g: usize) -> Result<Vec<(&'static str, f64)>> {
        Ok(self.group_config(g)?.hyperparameters())
    }

    fn ck_check_group(&self, g: usize, hps: &[(String, f64)]) -> Result<()> {
        configured(g, self.group_config(g)?, hps).map(|_| ())
    }

    fn ck_apply_group(&mut self, g: usize, hps: &[(String, f64)]) -> Result<()> {
        let cfg = configured(g, self.group_config(g)?, hps)?;
        self.set_group_config(g, cfg)
    }

    fn ck_validate(&self) -> Result<()> {
        for g in 0..self.group_count() {
            self.group_config(g)?.validate()?;
        }
        Ok(())
    }

    fn ck_state_format(&self) -> crate::StateFormat {
        self.state_format()
    }

    fn ck_blockwise(&self, key: &str, t: usize) -> Result<Option<BlockwiseView<'_>>> {
        self.blockwise_view(key, t)
    }

    fn ck_set_quant_map(&mut self, key: &str, map: crate::QuantMap) -> Result<()> {
        if self.quant_map(key)? == Some(map) {
            return Ok(());
        }
        self.set_quant_map(key, map)
    }

    fn ck_clipping(&self) -> (Option<f32>, NormType, bool) {
        (
            self.max_grad_norm(),
            self.grad_norm_type(),
            self.skip_nonfinite(),
        )
    }

    fn ck_set_clipping(&mut self, max: Option<f32>, norm: NormType, skip: bool) -> Result<()> {
        if self.max_grad_norm() != max {
            self.set_max_grad_norm(max)?;
        }
        if self.grad_norm_type() != norm {
            self.set_grad_norm_type(norm)?;
        }
        if self.skip_nonfinite() != skip {
            self.set_skip_nonfinite(skip)?;
        }
        Ok(())
    }

    fn ck_scaler(&self) -> Option<&GradScaler> {
        self.grad_scaler()
    }

    fn ck_set_step_count(&mut self, steps: u64) -> Result<()> {
        self.set_step_count(steps)
    }
}
