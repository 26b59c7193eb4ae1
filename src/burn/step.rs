//! The step: everything checked and recorded before any GPU work, then the write-back and
//! one submit; [`BurnOptimizer::try_step`] gives the module back with an error.

use super::bridge::{check_device, check_same, clear_grad, collect, copy_in, write_back};
use super::bridge::{Found, Pin, Ranges};
use super::BurnOptimizer;
use crate::error::{Error, Result};
use crate::optim::{Optimizer, OptimizerConfig};
use ::burn::module::Module;
use ::burn::optim::GradientsParams;
use std::collections::HashMap;

/// The error of [`BurnOptimizer::try_step`], with the module it was given.
///
/// It converts into [`Error`] (so `?` works where [`crate::Result`] is returned), displays as
/// its error and has that error's source.
pub struct Rejected<M> {
    /// Why the step was refused.
    pub error: Error,
    /// The module: unchanged for every error raised before any GPU work.
    pub module: M,
}

impl<M> std::fmt::Debug for Rejected<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejected")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<M> std::fmt::Display for Rejected<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<M> std::error::Error for Rejected<M> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

impl<M> From<Rejected<M>> for Error {
    fn from(r: Rejected<M>) -> Error {
        r.error
    }
}

/// A step recorded up to the write-back, not submitted.
struct RecordedBurnStep {
    enc: wgpu::CommandEncoder,
    /// The buffer range each stepped parameter was read from.
    ranges: Ranges,
    step: crate::optim::RecordedStep,
    /// The parameters and gradients, alive until the submit.
    found: Vec<Found>,
    pins: Vec<Pin>,
    /// Parameters copied into the arena.
    copies_in: usize,
}

impl<C: OptimizerConfig> BurnOptimizer<C> {
    /// One optimizer step over every parameter of `module` that has a gradient in `grads`;
    /// returns the updated module. `lr` is the learning rate of every group for this step
    /// (what a Burn scheduler gives). See the [module documentation](super) for what runs.
    ///
    /// Errors, raised before any GPU work: a parameter on another backend or device, or on a
    /// wgpu device not set up with [`init`](super::init); a parameter or gradient that is not
    /// f32; a model whose parameters (ids or shapes) differ from those of the first step; an
    /// invalid `lr` or configuration. As Burn's step consumes the module, so does this one,
    /// and an `Err` drops it: [`BurnOptimizer::try_step`] gives it back with the error.
    pub fn step<M: Module>(&mut self, lr: f64, module: M, grads: GradientsParams) -> Result<M> {
        self.try_step(lr, module, grads).map_err(|r| r.error)
    }

    /// [`BurnOptimizer::step`], giving the module back with the error.
    ///
    /// For every error raised before any GPU work (all those [`BurnOptimizer::step`] lists),
    /// the module comes back as it was passed in and the optimizer is unchanged, so the caller
    /// can fix the cause and go on. Keeping a clone of the model instead would cost more:
    /// parameters whose handle is shared are written into fresh tensors, not in place. After
    /// an error of the device itself, reported when the step is submitted, the parameters'
    /// values are unspecified.
    ///
    /// ```no_run
    /// # use burn::{module::Module, nn::{Linear, LinearConfig}, optim::GradientsParams};
    /// # use wgpu_optim::burn::BurnOptimizer;
    /// # fn train(optim: &mut BurnOptimizer<wgpu_optim::AdamConfig>, model: Linear,
    /// #          grads: GradientsParams) -> Linear {
    /// match optim.try_step(1e-3, model, grads) {
    ///     Ok(stepped) => stepped,
    ///     Err(rejected) => {
    ///         eprintln!("step skipped: {}", rejected.error);
    ///         rejected.module
    ///     }
    /// }
    /// # }
    /// ```
    pub fn try_step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> std::result::Result<M, Rejected<M>> {
        let recorded = match self.record_step(lr, &module, &mut grads) {
            Ok(r) => r,
            Err(error) => return Err(Rejected { error, module }),
        };
        let arena = self.arena.as_ref().expect("laid out by record_step");
        // 3. The updated parameters back into Burn's tensors.
        let out = write_back(arena, recorded.ranges, recorded.enc, module);
        let (module, done) = (out.module, out.done);
        self.last_writes = out.writes;
        self.last_copies_in = recorded.copies_in;
        self.arena.as_mut().expect("laid out").written = out.written;
        recorded.step.submitted();
        drop(recorded.found);
        drop(recorded.pins);
        match done {
            Ok(()) => Ok(module),
            Err(error) => Err(Rejected { error, module }),
        }
    }

    /// Check the step and record everything before the write-back: the copies of parameters
    /// and gradients into the arena and the fused update, in one encoder that nothing has
    /// submitted yet (errors leave everything as it was).
    fn record_step<M: Module>(
        &mut self,
        lr: f64,
        module: &M,
        grads: &mut GradientsParams,
    ) -> Result<RecordedBurnStep> {
        let lr = lr as f32;
        crate::error::check("lr", lr as f64, lr >= 0.0, "must be >= 0")?;
        let written = self.arena.as_ref().map(|a| &a.written);
        let found = collect(module, Some(grads), written)?;
        // A first step's arena is kept only once the step is known to go ahead, so a refused
        // first step leaves the optimizer unbuilt.
        let fresh = match self.arena {
            None => Some(self.build(&found)?),
            Some(_) => None,
        };
        {
            let arena = fresh.as_ref().or(self.arena.as_ref()).expect("built above");
            check_same(arena, &found)?;
            for f in &found {
                if let Some((p, g)) = &f.tensors {
                    if let Some(p) = p {
                        check_device(&f.path, &p.tensor, &arena.device)?;
                    }
                    check_device(&f.path, &g.tensor, &arena.device)?;
                }
            }
        }
        if fresh.is_some() {
            self.arena = fresh;
        }
        let arena = self.arena.as_mut().expect("built above");
        arena.opt.set_lr(lr)?;
        let gpu = arena.gpu.clone();

        // 1. One encoder for the whole step: the copies of parameters and gradients into the
        // arena, the fused update, the copies of the new values back.
        let mut pins = Vec::new();
        let mut enc = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim burn step"),
            });
        // The buffer range of each stepped parameter, pinned until the write-back is submitted.
        let mut ranges = HashMap::with_capacity(found.len());
        let mut copies_in = 0;
        for f in &found {
            let name = arena.names[arena.slot[&f.id]].clone();
            match &f.tensors {
                Some((p, g)) => {
                    let param = match p {
                        Some(p) => {
                            copies_in += 1;
                            copy_in(&mut enc, &arena.params, &name, f, p, false, &mut pins)?
                        }
                        None => arena.written[&f.id].range(),
                    };
                    copy_in(&mut enc, &arena.params, &name, f, g, true, &mut pins)?;
                    ranges.insert(f.id, Some(param));
                }
                None => clear_grad(&mut enc, &arena.params, &name)?,
            }
        }

        // 2. The fused update.
        let step = gpu.scoped(|| arena.opt.record_checked_step(&arena.params, &mut enc))?;
        Ok(RecordedBurnStep {
            enc,
            ranges,
            step,
            found,
            pins,
            copies_in,
        })
    }
}
