//! L1 regularisation, for every optimizer: `l1 * sign(p)` added to the gradient inside the
//! update kernel (the coefficient in the last word of each group's scalar slot).

use super::FusedOptimizer;
use crate::error::Result;
use crate::optim::OptimizerConfig;

impl<C: OptimizerConfig> FusedOptimizer<C> {
    /// L1 regularisation for every group (0 turns it off, the default): `l1 * sign(p)` is
    /// added to each gradient before the optimizer's update, after clipping, unscaling and
    /// `maximize`, as torch adds `weight_decay * p` (L2; each optimizer's own `weight_decay`)
    /// — the gradient of `l1 * sum(|p|)`. With master weights the sign is the f32 master
    /// copy's. Applies from the next step; a negative or non-finite value is an
    /// [`crate::Error::InvalidHyperparameter`] and changes nothing.
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, Optimizer, Params, Sgd, SgdConfig};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::new(&gpu, &[("w", &[0.5f32, -0.5, 0.0][..])])?;
    /// let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
    /// opt.set_l1(0.01)?;
    /// opt.step(&mut params)?; // zero gradients: only the L1 term moves w
    /// assert_eq!(params.read("w")?, vec![0.5 - 0.001, -0.5 + 0.001, 0.0]);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn set_l1(&mut self, l1: f32) -> Result<()> {
        check_l1(l1)?;
        let l1 = vec![l1; self.groups.len()];
        self.apply_l1(l1);
        Ok(())
    }

    /// L1 regularisation of one group (see [`FusedOptimizer::set_l1`]).
    pub fn set_group_l1(&mut self, group: usize, l1: f32) -> Result<()> {
        self.group_config(group)?;
        check_l1(l1)?;
        let mut all = self.l1.clone();
        all[group] = l1;
        self.apply_l1(all);
        Ok(())
    }

    /// The L1 coefficient of one group (0 when off).
    pub fn group_l1(&self, group: usize) -> Result<f32> {
        self.group_config(group)?;
        Ok(self.l1[group])
    }

    /// Every group's L1 coefficient, rebuilding the kernel when L1 turns on or off.
    fn apply_l1(&mut self, l1: Vec<f32>) {
        let on = |v: &[f32]| v.iter().any(|&l| l != 0.0);
        let rebuild = on(&l1) != on(&self.l1);
        self.l1 = l1;
        if rebuild {
            self.rebuild_pipeline();
        }
    }
}

/// `l1` must be finite and >= 0.
fn check_l1(l1: f32) -> Result<()> {
    crate::error::check("l1", l1 as f64, l1.is_finite() && l1 >= 0.0, "must be >= 0")
}
