//! The [`Optimizer`] trait for [`FusedOptimizer`], and read-only views of its settings.

use super::{factored, FusedOptimizer, MASTER};
use crate::arena::{self, Layout};
use crate::error::{check, Error, Result};
use crate::gpu::Gpu;
use crate::norm::NormType;
use crate::optim::{Optimizer, OptimizerConfig, ReadFuture};
use crate::params::Params;
use crate::scaler::GradScaler;

impl<C: OptimizerConfig> Optimizer for FusedOptimizer<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn step(&mut self, params: &mut Params) -> Result<()> {
        self.check_step(params)?;
        self.gpu.clone().scoped(|| self.record_step())
    }

    fn lr(&self) -> f32 {
        self.groups[0].lr()
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        check("lr", lr as f64, lr >= 0.0, "must be >= 0")?;
        for g in &mut self.groups {
            g.set_lr(lr);
        }
        Ok(())
    }

    /// Steps applied: submitted steps minus those the GPU skipped (may wait for a read-back
    /// when steps can be skipped and the host does not know yet).
    fn step_count(&self) -> u64 {
        self.submitted - self.scalars.skipped(self.submitted, || self.read_ctrl())
    }

    fn step_count_async(&self) -> ReadFuture<'_, u64> {
        Box::pin(async move {
            let skipped = self
                .scalars
                .skipped_async(self.submitted, self.read_ctrl_async())
                .await;
            Ok(self.submitted - skipped)
        })
    }

    fn state_keys(&self) -> Vec<&'static str> {
        if self.factored.is_some() {
            return factored::KEYS.to_vec();
        }
        self.states.iter().map(|(k, _)| *k).collect()
    }

    fn state_keys_of(&self, tensor: &str) -> Result<Vec<&'static str>> {
        let t = *self
            .layout
            .index
            .get(tensor)
            .ok_or_else(|| Error::UnknownTensor(tensor.to_string()))?;
        Ok(match &self.factored {
            Some(f) => f.regions[t].keys().to_vec(),
            None => self.state_keys(),
        })
    }

    fn state(&self, key: &str, tensor: &str) -> Result<Vec<f32>> {
        crate::gpu::block_on(
            "Optimizer::state",
            "Optimizer::state_async",
            self.state_async(key, tensor),
        )
    }

    fn state_async<'a>(&'a self, key: &'a str, tensor: &'a str) -> ReadFuture<'a, Vec<f32>> {
        Box::pin(async move {
            if let Some((at, len, _)) = self.factored_state(key, tensor)? {
                let range = [(self.factored_buffer(), at, 4 * len as u64)];
                return self.gpu.read_pieces_async(&range).await;
            }
            if self.blockwise.is_some() && key != MASTER {
                let (k, t) = self.state_index(key, tensor)?;
                return self.read_state_values(k, t).await;
            }
            let (bufs, dtype) = self.state_buffers_of(key, tensor)?;
            let slot = self.layout.slot(tensor)?;
            arena::read_slot_async(&self.gpu, bufs, slot, dtype).await
        })
    }

    fn group_count(&self) -> usize {
        self.groups.len()
    }

    fn group_lr(&self, group: usize) -> Result<f32> {
        Ok(self.group_config(group)?.lr())
    }

    fn set_group_lr(&mut self, group: usize, lr: f32) -> Result<()> {
        let mut c = self.group_config(group)?.clone();
        c.set_lr(lr);
        self.set_group_config(group, c)
    }

    fn group_momentum(&self, group: usize) -> Result<Option<f32>> {
        Ok(self.group_config(group)?.momentum())
    }

    fn set_group_momentum(&mut self, group: usize, momentum: f32) -> Result<()> {
        let mut c = self.group_config(group)?.clone();
        if c.momentum().is_none() {
            return Err(Error::InvalidOptions(format!(
                "{} has no momentum to set",
                C::NAME
            )));
        }
        c.set_momentum(momentum);
        self.set_group_config(group, c)
    }

    fn set_max_grad_norm(&mut self, max_norm: Option<f32>) -> Result<()> {
        if let Some(m) = max_norm {
            check("max_norm", m as f64, m > 0.0, "must be > 0")?;
        }
        self.max_grad_norm = max_norm;
        self.reconfigure(false)
    }

    fn set_grad_norm_type(&mut self, t: NormType) -> Result<()> {
        let changed = t != self.norm_type;
        self.norm_type = t;
        self.reconfigure(changed)
    }

    fn last_grad_norm(&self) -> Result<f32> {
        crate::gpu::block_on(
            "Optimizer::last_grad_norm",
            "Optimizer::last_grad_norm_async",
            self.last_grad_norm_async(),
        )
    }

    fn last_grad_norm_async(&self) -> ReadFuture<'_, f32> {
        Box::pin(async move {
            if !self.norm_ran {
                return Err(Self::no_norm());
            }
            Ok(self.read_ctrl_async().await?.norm)
        })
    }

    fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()> {
        self.skip_nonfinite = skip;
        self.reconfigure(false)
    }

    fn last_step_skipped(&self) -> Result<bool> {
        crate::gpu::block_on(
            "Optimizer::last_step_skipped",
            "Optimizer::last_step_skipped_async",
            self.last_step_skipped_async(),
        )
    }

    fn last_step_skipped_async(&self) -> ReadFuture<'_, bool> {
        Box::pin(async move { Ok(self.norm_ran && self.read_ctrl_async().await?.skip != 0) })
    }

    fn set_grad_scaler(&mut self, scaler: Option<&GradScaler>) -> Result<()> {
        if let Some(s) = scaler {
            if !s.gpu().same_device(&self.gpu) {
                return Err(Error::ParamsMismatch(
                    "the grad scaler lives on another device".into(),
                ));
            }
        }
        self.scaler = scaler.cloned();
        self.reconfigure(true)
    }
}

/// Read-only views of the settings, and crate-internal access for checkpoints
/// (`crate::checkpoint`).
impl<C: OptimizerConfig> FusedOptimizer<C> {
    /// The index of the group a tensor belongs to.
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, FusedOptimizer, ParamGroup, Params, Sgd, SgdConfig};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 8), ("b", 2)])?;
    /// let opt: Sgd = FusedOptimizer::with_groups(&params, vec![
    ///     ParamGroup::new(["b"], SgdConfig::default()),
    ///     ParamGroup::rest(SgdConfig::default()),
    /// ])?;
    /// assert_eq!((opt.group_of("b")?, opt.group_of("w")?), (0, 1));
    /// assert_eq!(opt.group_tensors(1)?, vec!["w"]);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn group_of(&self, tensor: &str) -> Result<usize> {
        let t = *self
            .layout
            .index
            .get(tensor)
            .ok_or_else(|| Error::UnknownTensor(tensor.to_string()))?;
        Ok(self.group_of[t] as usize)
    }

    /// The tensors of a group, in the parameter set's order (see [`FusedOptimizer::group_of`]).
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, Params, Sgd, SgdConfig};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 8), ("b", 2)])?;
    /// let opt = Sgd::new(&params, SgdConfig::default())?;
    /// assert_eq!(opt.group_tensors(0)?, vec!["w", "b"]);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn group_tensors(&self, group: usize) -> Result<Vec<&str>> {
        self.group_config(group)?;
        Ok(self
            .layout
            .slots
            .iter()
            .zip(&self.group_of)
            .filter(|(_, &g)| g as usize == group)
            .map(|(s, _)| s.name.as_str())
            .collect())
    }

    /// The clipping threshold set with [`Optimizer::set_max_grad_norm`] (`None`: no clipping).
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, Gpu, NormType, Optimizer, Params};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 8)])?;
    /// let mut opt = Adam::new(&params, AdamConfig::default())?;
    /// opt.set_max_grad_norm(Some(1.0))?;
    /// assert_eq!(opt.max_grad_norm(), Some(1.0));
    /// assert_eq!(opt.grad_norm_type(), NormType::L2);
    /// assert!(!opt.skip_nonfinite() && opt.grad_scaler().is_none());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn max_grad_norm(&self) -> Option<f32> {
        self.max_grad_norm
    }

    /// The norm used for clipping ([`Optimizer::set_grad_norm_type`]).
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 8)])?;
    /// let mut opt = Adam::new(&params, AdamConfig::default())?;
    /// opt.set_grad_norm_type(wgpu_optim::NormType::Inf)?;
    /// assert_eq!(opt.grad_norm_type(), wgpu_optim::NormType::Inf);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn grad_norm_type(&self) -> NormType {
        self.norm_type
    }

    /// Whether steps with a non-finite gradient are skipped ([`Optimizer::set_skip_nonfinite`]).
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 8)])?;
    /// let mut opt = Adam::new(&params, AdamConfig::default())?;
    /// opt.set_skip_nonfinite(true)?;
    /// assert!(opt.skip_nonfinite());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn skip_nonfinite(&self) -> bool {
        self.skip_nonfinite
    }

    /// The attached loss scaler ([`Optimizer::set_grad_scaler`]), sharing its GPU buffer with
    /// yours.
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 8)])?;
    /// let mut opt = Adam::new(&params, AdamConfig::default())?;
    /// let scaler = wgpu_optim::GradScaler::new(&gpu, Default::default())?;
    /// opt.set_grad_scaler(Some(&scaler))?;
    /// assert_eq!(opt.grad_scaler().unwrap().config(), scaler.config());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn grad_scaler(&self) -> Option<&GradScaler> {
        self.scaler.as_ref()
    }

    /// `Err` unless this optimizer was built for `params`.
    pub(crate) fn ensure_params(&self, params: &Params) -> Result<()> {
        self.check_params(params)
    }

    /// The arena layout shared with the parameters.
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The per-chunk buffers of state `key`.
    pub(crate) fn state_chunks(&self, key: &str) -> Result<&[wgpu::Buffer]> {
        self.state_buffers(key)
    }

    /// The device.
    pub(crate) fn device(&self) -> &Gpu {
        &self.gpu
    }
}
