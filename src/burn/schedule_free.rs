//! Schedule-Free AdamW's switch between its two sequences, on a Burn model.

use super::bridge::{check_device, check_same, collect, copy_in, values, write_back};
use super::bridge::{Arena, Pin, Ranges};
use super::{BurnOptimizer, Rejected};
use crate::error::Result;
use crate::optim::Optimizer;
use crate::ScheduleFreeAdamWConfig;
use ::burn::module::Module;
use std::collections::HashMap;

/// Schedule-Free AdamW steps the training sequence `y` and keeps the average `x` (what to
/// evaluate and deploy) implicitly: call [`BurnOptimizer::eval`] before evaluating or saving
/// the model and [`BurnOptimizer::train`] before stepping again, as with
/// `schedulefree.AdamWScheduleFree`. A step in eval mode is an [`crate::Error::InvalidOptions`].
///
/// ```no_run
/// # use burn::nn::{Linear, LinearConfig};
/// # use burn::optim::GradientsParams;
/// use wgpu_optim::burn::{init, BurnOptimizer};
/// use wgpu_optim::ScheduleFreeAdamWConfig;
/// let (device, _) = init(Default::default())?;
/// let mut model: Linear = LinearConfig::new(4, 2).init(&device.autodiff());
/// let mut optim = BurnOptimizer::new(ScheduleFreeAdamWConfig::default());
/// # let grads: GradientsParams = todo!();
/// model = optim.step(2.5e-3, model, grads)?;
/// model = optim.eval(model)?; // the average x: evaluate, save
/// model = optim.train(model)?; // back to y, for the next step
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
impl BurnOptimizer<ScheduleFreeAdamWConfig> {
    /// Put `module`'s parameters on the average `x` (`p = lerp(p, z, 1 - 1 / beta1)`), to
    /// evaluate or save the model. A no-op in eval mode, and before the first step (where
    /// `x = y`: only the mode changes). Takes the module's current values, so a model changed
    /// since the step (loaded weights, say) is switched as it is now.
    ///
    /// Errors, checked before the optimizer changes: a model whose parameters are not those
    /// the optimizer steps, or that are not on its device. As with [`BurnOptimizer::step`],
    /// an `Err` drops the module: [`BurnOptimizer::try_eval`] gives it back with the error.
    pub fn eval<M: Module>(&mut self, module: M) -> Result<M> {
        self.try_eval(module).map_err(|r| r.error)
    }

    /// Put `module`'s parameters back on the training sequence `y` (`p = lerp(p, z, 1 -
    /// beta1)`), for stepping. A no-op in train mode; see [`BurnOptimizer::eval`], and
    /// [`BurnOptimizer::try_train`] for the form that gives the module back with an error.
    pub fn train<M: Module>(&mut self, module: M) -> Result<M> {
        self.try_train(module).map_err(|r| r.error)
    }

    /// [`BurnOptimizer::eval`], giving the module back with the error ([`Rejected`]).
    ///
    /// For every error raised before the switch runs (those [`BurnOptimizer::eval`] lists)
    /// the module comes back as it was passed in and the optimizer is unchanged, as from
    /// [`BurnOptimizer::try_step`].
    ///
    /// ```no_run
    /// # use burn::nn::Linear;
    /// # use wgpu_optim::burn::BurnOptimizer;
    /// # use wgpu_optim::ScheduleFreeAdamWConfig;
    /// # fn evaluate(optim: &mut BurnOptimizer<ScheduleFreeAdamWConfig>, model: Linear) -> Linear {
    /// match optim.try_eval(model) {
    ///     Ok(average) => average,
    ///     Err(rejected) => {
    ///         eprintln!("evaluating the training sequence: {}", rejected.error);
    ///         rejected.module
    ///     }
    /// }
    /// # }
    /// ```
    pub fn try_eval<M: Module>(&mut self, module: M) -> std::result::Result<M, Rejected<M>> {
        self.switch_mode(module, false)
    }

    /// [`BurnOptimizer::train`], giving the module back with the error; see
    /// [`BurnOptimizer::try_eval`].
    pub fn try_train<M: Module>(&mut self, module: M) -> std::result::Result<M, Rejected<M>> {
        self.switch_mode(module, true)
    }

    /// Whether the parameters hold the training sequence (every group is in train mode).
    pub fn is_train_mode(&self) -> bool {
        match &self.arena {
            Some(a) => a.opt.is_train_mode(),
            None => self.groups.iter().all(|g| g.config.train_mode),
        }
    }

    fn switch_mode<M: Module>(
        &mut self,
        module: M,
        train: bool,
    ) -> std::result::Result<M, Rejected<M>> {
        let Some(arena) = self.arena.as_mut() else {
            for g in &mut self.groups {
                g.config.train_mode = train;
            }
            return Ok(module);
        };
        let all_in_mode = (0..arena.opt.group_count()).all(|g| {
            arena
                .opt
                .group_config(g)
                .is_ok_and(|c| c.train_mode == train)
        });
        if all_in_mode {
            return Ok(module);
        }
        let (ranges, pins, copies_in) = match copy_in_and_switch(arena, &module, train) {
            Ok(r) => r,
            Err(error) => return Err(Rejected { error, module }),
        };
        self.last_copies_in = copies_in;
        let gpu = arena.gpu.clone();
        let out = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim burn mode switch out"),
            });
        let out = write_back(arena, ranges, out, module);
        arena.written = out.written;
        drop(pins);
        match out.done {
            Ok(()) => Ok(out.module),
            Err(error) => Err(Rejected {
                error,
                module: out.module,
            }),
        }
    }
}

/// The checks, then `module`'s values into the arena and the switch itself: two submits in
/// queue order, no wait. Returns the buffer range of each parameter (pinned where it was read
/// now), for the write-back, and how many were copied in: as in a step, one still the tensor
/// the last write-back left holds the arena's values already ([`values`]). The module is only
/// read.
fn copy_in_and_switch<M: Module>(
    arena: &mut Arena<ScheduleFreeAdamWConfig>,
    module: &M,
    train: bool,
) -> Result<(Ranges, Vec<Pin>, usize)> {
    let found = collect(module, None, None)?;
    check_same(arena, &found)?;
    let values = values(module, Some(&arena.written))?;
    for f in &found {
        if let Some(t) = values.get(&f.id) {
            check_device(&f.path, &t.tensor, &arena.device)?;
        }
    }
    let gpu = arena.gpu.clone();
    let mut enc = gpu
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("wgpu-optim burn mode switch in"),
        });
    let mut pins = Vec::new();
    let mut ranges = HashMap::with_capacity(found.len());
    for f in &found {
        let range = match values.get(&f.id) {
            Some(t) => {
                let name = &arena.names[arena.slot[&f.id]];
                copy_in(&mut enc, &arena.params, name, f, t, false, &mut pins)?
            }
            None => arena.written[&f.id].range(),
        };
        ranges.insert(f.id, Some(range));
    }
    gpu.queue().submit([enc.finish()]);
    match train {
        true => arena.opt.train(&arena.params)?,
        false => arena.opt.eval(&arena.params)?,
    }
    Ok((ranges, pins, values.len()))
}
