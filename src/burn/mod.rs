//! Step a [Burn](https://burn.dev) model with the fused kernels (feature `burn`, Burn 0.22).
//!
//! Burn's optimizers run a chain of tensor operations for every parameter, one parameter
//! after the other, and clip gradients per tensor. [`BurnOptimizer`] takes the place of Burn's
//! `ModuleOptimizer` in a training loop and updates every parameter of the model in one fused
//! kernel per arena chunk, with any optimizer of this crate, global-norm clipping
//! ([`BurnOptimizer::with_max_grad_norm`]), non-finite skipping and parameter groups by module
//! path:
//!
//! ```no_run
//! # fn main() -> Result<(), wgpu_optim::Error> {
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Distribution, Tensor};
//! use wgpu_optim::burn::{self as wb, BurnOptimizer};
//! use wgpu_optim::AdamConfig;
//!
//! // Once, before Burn first uses the device: Burn's device, with our handle on it.
//! let (device, _gpu) = wb::init(Default::default())?;
//! let device = device.autodiff();
//! let mut model: Linear = LinearConfig::new(8, 1).init(&device);
//! // Instead of `AdamWConfig::new().init()`:
//! let mut optim = BurnOptimizer::new(AdamConfig { weight_decay: 0.01, decoupled_weight_decay: true, ..Default::default() })
//!     .with_max_grad_norm(1.0);
//! for _ in 0..10 {
//!     let x = Tensor::<2>::random([32, 8], Distribution::Default, &device);
//!     let loss = model.forward(x).powf_scalar(2.0).mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     model = optim.step(1e-3, model, grads)?; // the one changed line
//! }
//! # Ok(()) }
//! ```
//!
//! # What a step does
//! The optimizer keeps its own arena ([`Params`]) in which every parameter and gradient of the
//! model has a slot, laid out on the first step, and its state (`exp_avg`, ...) in the same
//! layout; the state is keyed by Burn's [`ParamId`] and named by the parameter's module path
//! (`fc1.weight`). A step, all on Burn's own wgpu device and queue:
//! 1. resolves every gradient, and every parameter that is not the tensor the last step wrote
//!    back ([`BurnOptimizer::last_copies_in`]), to its CubeCL buffer and records one
//!    device-side copy per tensor into the arena: nothing goes through the host. The tensors
//!    are resolved together, by one operation queued on Burn's fusion server that hands out
//!    their handles and buffers (it runs on the device's thread, where reaching a buffer is a
//!    plain call): one wait for the work Burn queued before it (such as the backward pass,
//!    which so runs first), not one per tensor. A parameter the last step
//!    wrote holds the arena's values as long as the module holds that tensor (Burn makes a new
//!    tensor for every change), so it is neither resolved nor copied;
//! 2. records the fused update (clipping, skipping and groups included) after the copies;
//! 3. records the copy of every updated parameter back, and submits all of it at once: one
//!    submit per step, however many parameters. A parameter whose Burn handle is exclusively
//!    owned (its fusion tensor has no other reference, Burn's own rule for in-place kernels)
//!    is written in place, into the buffer range it was read from; a shared one (for example,
//!    a clone of the model is alive) is written into a fresh tensor, so the other holder
//!    keeps the old values; the fresh tensors' buffers are reached together, in one more
//!    such operation.
//!
//! If the update cannot be recorded (an invalid hyperparameter, say), nothing is submitted
//! and the error is returned.
//!
//! Nothing waits for the GPU. The copies cost 8 bytes per element over the update's own
//! traffic (the gradient in, the parameter out; the parameter in too, 12, on the first step
//! and where the model replaced it): for Adam 36 bytes per element instead of 28. Binding
//! Burn's pool buffers directly would save them, but Burn hands out a new gradient buffer
//! every step and our bind groups are built once; the copies keep the fused kernels as they
//! are.
//!
//! # Differences from Burn's `ModuleOptimizer`
//! - It is not a `ModuleOptimizer`, which is a struct of Burn's that steps one tensor at a
//!   time: a custom training loop calls [`BurnOptimizer::step`] where it called Burn's, but
//!   Burn's `Learner` (burn-train), which takes a `ModuleOptimizer`, cannot take it.
//! - `step` returns a `Result`: a model on another backend or device, a parameter that is not
//!   f32, or a model whose parameters changed since the first step is an [`Error`] before any
//!   GPU work. [`BurnOptimizer::try_step`] gives the module back with the error
//!   ([`Rejected`]), unchanged, so a training loop can recover without keeping a clone; so do
//!   [`BurnOptimizer::try_load`] and Schedule-Free's [`BurnOptimizer::try_eval`] and
//!   [`BurnOptimizer::try_train`].
//! - A parameter without a gradient is not changed, as in Burn. Its slot's gradient is zero
//!   for that step, so it adds nothing to the global norm; as the state is one arena, its
//!   moments decay as for a zero gradient and the step count is shared (Burn keeps both
//!   untouched for that parameter).
//! - The `lr` argument sets the learning rate of every group, as Burn's `f64` learning rate
//!   does: schedulers (`burn::lr_scheduler`) keep working; a group's own `lr` is used only
//!   until the first step.
//! - Checkpoints are in this crate's format ([`BurnOptimizer::save`] / [`BurnOptimizer::load`],
//!   parameters included); for the optimizers Burn has too ([`BurnRecord`]: Adam, AdamW, SGD,
//!   RMSprop, AdaGrad, Lion, LAMB, Adafactor), [`BurnOptimizer::save_burn_record`] also writes the state
//!   as a Burn optimizer record that Burn's `ModuleOptimizer::load` reads, and
//!   [`BurnOptimizer::load_burn_record`] takes over the state of Burn's own optimizer.
//!
//! # Devices
//! The optimizer needs our handle ([`Gpu`]) on the wgpu device Burn runs on. [`init`] makes
//! Burn's device and registers both; [`init_setup`] registers a device and queue you made
//! yourself. A model on a device set up otherwise is an [`Error::BurnTensor`] naming [`init`].
//!
//! Fusion is on in this build (as in Burn's default `wgpu` feature), so it is on in every
//! application that uses this module.

use crate::checkpoint::{self, SaveOptions};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::norm::NormType;
use crate::optim::{FusedOptimizer, Optimizer, OptimizerConfig, ParamGroup};
use crate::params::Params;
use crate::{Precision, StateFormat};
use ::burn::module::{Module, ParamId};
use ::burn::tensor::Device;
use burn_cubecl::CubeDevice;
use cubecl::wgpu::{WgpuDevice, WgpuSetup};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

pub use cubecl::wgpu::RuntimeOptions;
pub use record::BurnRecord;

mod bridge;
mod record;
mod schedule_free;
mod step;

pub use step::Rejected;

use bridge::{collect, wgpu_device, write_back, Arena, FirstDevice, Found};

/// Our handle on each wgpu device registered through [`init`] or [`init_setup`].
fn registry() -> &'static Mutex<Vec<(WgpuDevice, Gpu)>> {
    static REGISTRY: OnceLock<Mutex<Vec<(WgpuDevice, Gpu)>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn gpu_of(device: &WgpuDevice) -> Option<Gpu> {
    let list = registry().lock().unwrap_or_else(|e| e.into_inner());
    list.iter()
        .find(|(d, _)| d == device)
        .map(|(_, g)| g.clone())
}

/// Bring up Burn's wgpu runtime on `device` (`WgpuDevice::default()` for the first adapter)
/// and return Burn's [`Device`] for it with our [`Gpu`] on the same wgpu device and queue.
///
/// Call it before Burn first uses the device (Burn brings a device up once); then make the
/// model on the returned device (`.autodiff()` for training). The adapter is the one Burn
/// picks; its full limits are requested.
///
/// ```no_run
/// let (device, gpu) = wgpu_optim::burn::init(Default::default())?;
/// println!("training on {}", gpu.info().name);
/// let device = device.autodiff();
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn init(device: WgpuDevice) -> Result<(Device, Gpu)> {
    if let Some(gpu) = gpu_of(&device) {
        return Ok((Device::new(CubeDevice::Wgpu(device)), gpu));
    }
    let setup = cubecl::wgpu::try_init_setup::<cubecl::wgpu::AutoGraphicsApi>(
        &device,
        RuntimeOptions::default(),
    )
    .map_err(|e| Error::BurnDevice(format!("{e:?}")))?;
    let gpu = Gpu::from_device(setup.device, setup.queue);
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((device.clone(), gpu.clone()));
    Ok((Device::new(CubeDevice::Wgpu(device)), gpu))
}

/// Register a wgpu device and queue you created (with this crate's re-exported
/// [`crate::wgpu`]) as a Burn device, and return it with our [`Gpu`] on it.
///
/// ```no_run
/// use wgpu_optim::burn::{init_setup, RuntimeOptions};
/// # fn setup() -> cubecl::wgpu::WgpuSetup { unimplemented!() }
/// let (device, gpu) = init_setup(setup(), RuntimeOptions::default())?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn init_setup(setup: WgpuSetup, options: RuntimeOptions) -> Result<(Device, Gpu)> {
    let gpu = Gpu::from_device(setup.device.clone(), setup.queue.clone());
    let device = cubecl::wgpu::try_init_device(setup, options)
        .map_err(|e| Error::BurnDevice(format!("{e:?}")))?;
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((device.clone(), gpu.clone()));
    Ok((Device::new(CubeDevice::Wgpu(device)), gpu))
}

/// A Burn-model optimizer running this crate's fused kernels: swap it in for
/// `AdamWConfig::new().init()` (see the [module documentation](self)).
///
/// Any [`OptimizerConfig`] works: [`crate::AdamConfig`] (AdamW with `decoupled_weight_decay: true`),
/// [`crate::SgdConfig`], [`crate::RmsPropConfig`], [`crate::AdagradConfig`],
/// [`crate::AdadeltaConfig`], [`crate::AdamaxConfig`], [`crate::NAdamConfig`],
/// [`crate::RAdamConfig`], [`crate::RpropConfig`], [`crate::AsgdConfig`],
/// [`crate::LionConfig`], [`crate::LambConfig`], [`crate::AdafactorConfig`] (which factors the
/// second moment of every parameter of rank >= 2, in Burn's shape),
/// [`crate::ScheduleFreeAdamWConfig`] (with [`BurnOptimizer::eval`] and
/// [`BurnOptimizer::train`] to switch the model between its sequences) and your own.
pub struct BurnOptimizer<C: OptimizerConfig> {
    groups: Vec<ParamGroup<C>>,
    max_grad_norm: Option<f32>,
    norm_type: NormType,
    skip_nonfinite: bool,
    precision: Precision,
    state_format: StateFormat,
    arena: Option<Arena<C>>,
    /// Parameters of the last step written in place and into fresh tensors.
    last_writes: (usize, usize),
    /// Parameters the last step copied into the arena.
    last_copies_in: usize,
}

impl<C: OptimizerConfig> std::fmt::Debug for BurnOptimizer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnOptimizer")
            .field("optimizer", &C::NAME)
            .field("groups", &self.groups)
            .field("max_grad_norm", &self.max_grad_norm)
            .field("tensors", &self.arena.as_ref().map(|a| a.names.len()))
            .finish()
    }
}

impl<C: OptimizerConfig> BurnOptimizer<C> {
    /// One group holding every parameter of the model.
    ///
    /// ```
    /// use wgpu_optim::burn::BurnOptimizer;
    /// use wgpu_optim::SgdConfig;
    /// let optim = BurnOptimizer::new(SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() });
    /// assert_eq!(optim.step_count(), 0);
    /// ```
    pub fn new(config: C) -> Self {
        Self::with_groups(vec![ParamGroup::rest(config)])
    }

    /// Parameter groups with their own hyperparameters, matched by module path (`fc1.weight`)
    /// as [`ParamGroup::new`], [`ParamGroup::matching`] and [`ParamGroup::rest`] match tensor
    /// names; they are resolved on the first step.
    ///
    /// ```
    /// use wgpu_optim::burn::BurnOptimizer;
    /// use wgpu_optim::{AdamConfig, ParamGroup};
    /// let decay = AdamConfig { weight_decay: 0.01, decoupled_weight_decay: true, ..Default::default() };
    /// let no_decay = AdamConfig { weight_decay: 0.0, ..decay.clone() };
    /// let optim = BurnOptimizer::with_groups(vec![
    ///     ParamGroup::matching(|path| path.ends_with(".bias"), no_decay),
    ///     ParamGroup::rest(decay),
    /// ]);
    /// assert!(optim.optimizer().is_none()); // laid out on the first step
    /// ```
    pub fn with_groups(groups: Vec<ParamGroup<C>>) -> Self {
        Self {
            groups,
            max_grad_norm: None,
            norm_type: NormType::L2,
            skip_nonfinite: false,
            precision: Precision::default(),
            state_format: StateFormat::Dense,
            arena: None,
            last_writes: (0, 0),
            last_copies_in: 0,
        }
    }

    /// Clip the gradients by their global norm over every parameter, as
    /// `torch.nn.utils.clip_grad_norm_` does (coefficient `max_norm / (norm + 1e-6)`, at most
    /// 1), before each update; Burn clips each tensor by its own norm. A step whose gradients
    /// are not finite is skipped.
    pub fn with_max_grad_norm(mut self, max_norm: f32) -> Self {
        self.max_grad_norm = Some(max_norm);
        self
    }

    /// The norm used for clipping ([`NormType::L2`] by default).
    pub fn with_grad_norm_type(mut self, norm_type: NormType) -> Self {
        self.norm_type = norm_type;
        self
    }

    /// Skip (on the GPU, without waiting) every step whose gradients hold an inf or NaN:
    /// parameters, state and step count stay as they were.
    pub fn with_skip_nonfinite(mut self, skip: bool) -> Self {
        self.skip_nonfinite = skip;
        self
    }

    /// Keep the optimizer state in `format` from the first step on:
    /// [`StateFormat::Blockwise8`] is bitsandbytes' 8-bit blockwise state (about 2 bytes per
    /// element instead of 8 for Adam), for Adam/AdamW, SGD with momentum, RMSprop, Adagrad and
    /// Lion ([`FusedOptimizer::set_state_format`]). An optimizer or setting that cannot keep
    /// it is an error of the first step (or of [`BurnOptimizer::load`]), before anything runs.
    ///
    /// ```
    /// use wgpu_optim::burn::BurnOptimizer;
    /// use wgpu_optim::{AdamConfig, StateFormat};
    /// let optim = BurnOptimizer::new(AdamConfig::adamw())
    ///     .with_state_format(StateFormat::Blockwise8 { min_size: 4096 });
    /// assert_eq!(optim.state_format(), StateFormat::Blockwise8 { min_size: 4096 });
    /// ```
    pub fn with_state_format(mut self, format: StateFormat) -> Self {
        self.state_format = format;
        self
    }

    /// The state's dtype ([`Precision::state`]: bf16 or f16 halves f32's state memory) from
    /// the first step on ([`FusedOptimizer::set_precision`]). The parameters a Burn model
    /// hands over are f32, so master weights and stochastic rounding have nothing to do here.
    /// Errors as for [`BurnOptimizer::with_state_format`].
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The state format the state is kept in ([`BurnOptimizer::with_state_format`]).
    pub fn state_format(&self) -> StateFormat {
        self.arena
            .as_ref()
            .map_or(self.state_format, |a| a.opt.state_format())
    }

    /// The fused optimizer behind it, once the first step has laid out the arena: for
    /// [`Optimizer::state`], [`Optimizer::last_grad_norm`], [`Optimizer::last_step_skipped`],
    /// the learning rate and the step count. Tensor names are module paths.
    pub fn optimizer(&self) -> Option<&FusedOptimizer<C>> {
        self.arena.as_ref().map(|a| &a.opt)
    }

    /// The arena holding the copies of the parameters and gradients of the last step. Read it
    /// rather than write it: a parameter the last step wrote back is not copied in again
    /// ([`BurnOptimizer::last_copies_in`]), so a value written here goes into the next step
    /// and from there into the model.
    pub fn params(&self) -> Option<&Params> {
        self.arena.as_ref().map(|a| &a.params)
    }

    /// Steps taken (skipped ones included).
    pub fn step_count(&self) -> u64 {
        self.arena.as_ref().map_or(0, |a| a.opt.step_count())
    }

    /// How the last step wrote the parameters back: `(in place, into fresh tensors)`. A
    /// parameter is written in place when the module holds the only reference to its Burn
    /// tensor, into a fresh tensor when something else (a clone of the module, a tensor kept
    /// from `param.val()`) still refers to it, so that holder keeps the old values.
    pub fn last_writes(&self) -> (usize, usize) {
        self.last_writes
    }

    /// How many parameters the last step (or Schedule-Free switch) copied into the optimizer's
    /// arena. A parameter that is still the tensor the step before wrote back holds the
    /// arena's values, so it is neither resolved nor copied: after the first step, only
    /// parameters the model replaced since (a new tensor, a loaded record), those without a
    /// gradient at the step before, and those on another fusion stream than their gradient
    /// are copied in. A switch copies in one parameter more: resolving one runs and flushes
    /// what Burn queued on the others.
    pub fn last_copies_in(&self) -> usize {
        self.last_copies_in
    }

    /// The name a parameter has in the state and in checkpoints: its module path.
    pub fn path_of(&self, id: ParamId) -> Option<&str> {
        let a = self.arena.as_ref()?;
        a.slot.get(&id).map(|&i| a.names[i].as_str())
    }

    /// Lay out the arena for the model's parameters that have a gradient now.
    fn build(&self, found: &[Found]) -> Result<Arena<C>> {
        let Some(dev) = found.iter().find_map(|f| {
            f.tensors
                .as_ref()
                .and_then(|t| wgpu_device(&t.1.tensor))
                .cloned()
        }) else {
            return Err(Error::Empty(
                "no parameter of the model has a gradient; nothing to step".into(),
            ));
        };
        let gpu = gpu_of(&dev).ok_or_else(|| Error::BurnTensor {
            param: found[0].path.clone(),
            reason: format!(
                "its wgpu device {dev:?} was not set up with wgpu_optim::burn::init (call it \
                 before Burn first uses the device, and make the model on the device it returns)"
            ),
        })?;
        self.new_arena(found, dev, gpu)
    }

    /// The fused optimizer for `params` with this optimizer's groups, precision and state
    /// format.
    fn fused(&self, params: &Params) -> Result<FusedOptimizer<C>> {
        let mut opt = FusedOptimizer::with_groups(params, self.groups.clone())?;
        opt.set_precision(self.precision)?;
        opt.set_state_format(self.state_format)?;
        Ok(opt)
    }

    /// A fresh arena for `found` (state zero) with this optimizer's groups and clipping
    /// settings.
    fn new_arena(&self, found: &[Found], dev: WgpuDevice, gpu: Gpu) -> Result<Arena<C>> {
        let names = slot_names(found);
        let params = params_of(&gpu, &names, found)?;
        let mut opt = self.fused(&params)?;
        opt.set_grad_norm_type(self.norm_type)?;
        opt.set_max_grad_norm(self.max_grad_norm)?;
        opt.set_skip_nonfinite(self.skip_nonfinite)?;
        let slot = found.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        Ok(Arena {
            gpu,
            device: dev,
            params,
            opt,
            names,
            slots: slots_of(found),
            slot,
            written: HashMap::new(),
        })
    }

    /// Save the optimizer's state and the parameters (as of the last step) to a checkpoint in
    /// this crate's format ([`crate::checkpoint`]), tensors named by module path.
    ///
    /// Resume with [`BurnOptimizer::load`], which also writes the saved parameters into the
    /// model, so that one file resumes the run.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let a = self.arena.as_ref().ok_or_else(|| {
            Error::Empty("nothing to save before the first step lays out the state".into())
        })?;
        checkpoint::save(path, &a.params, &a.opt, SaveOptions::default())
    }

    /// Resume from a checkpoint written by [`BurnOptimizer::save`]: lay out the state for
    /// `module`'s parameters (every float parameter, by module path), restore the state, the
    /// hyperparameters, the clipping settings and the step count, and return `module` with the
    /// saved parameter values. The state format and precision are this optimizer's
    /// ([`BurnOptimizer::with_state_format`], [`BurnOptimizer::with_precision`]) and must be
    /// those of the run that saved. Everything is checked before anything changes; on `Err`
    /// the optimizer is as it was, and the module is dropped: [`BurnOptimizer::try_load`]
    /// gives it back with the error.
    ///
    /// ```no_run
    /// # use burn::nn::{Linear, LinearConfig};
    /// use wgpu_optim::burn::{init, BurnOptimizer};
    /// use wgpu_optim::AdamConfig;
    /// let (device, _) = init(Default::default())?;
    /// let model: Linear = LinearConfig::new(4, 2).init(&device.autodiff());
    /// let mut optim = BurnOptimizer::new(AdamConfig::default());
    /// let model = optim.load("run.safetensors", model)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn load<M: Module>(&mut self, path: impl AsRef<Path>, module: M) -> Result<M> {
        self.try_load(path, module).map_err(|r| r.error)
    }

    /// [`BurnOptimizer::load`], giving the module back with the error ([`Rejected`]).
    ///
    /// For every error of the file or the model (a missing or damaged checkpoint, one of
    /// another optimizer or layout, a model whose parameters are not the checkpoint's), the
    /// module comes back as it was passed in and the optimizer is unchanged: a run can start
    /// fresh when there is nothing to resume.
    ///
    /// ```no_run
    /// # use burn::nn::{Linear, LinearConfig};
    /// use wgpu_optim::burn::{init, BurnOptimizer};
    /// use wgpu_optim::AdamConfig;
    /// let (device, _) = init(Default::default())?;
    /// let model: Linear = LinearConfig::new(4, 2).init(&device.autodiff());
    /// let mut optim = BurnOptimizer::new(AdamConfig::default());
    /// let model = match optim.try_load("run.safetensors", model) {
    ///     Ok(resumed) => resumed,
    ///     Err(fresh) => {
    ///         eprintln!("starting afresh: {}", fresh.error);
    ///         fresh.module
    ///     }
    /// };
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn try_load<M: Module>(
        &mut self,
        path: impl AsRef<Path>,
        module: M,
    ) -> std::result::Result<M, Rejected<M>> {
        let (arena, found) = match self.restore(path.as_ref(), &module) {
            Ok(r) => r,
            Err(error) => return Err(Rejected { error, module }),
        };
        let enc = arena
            .gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim burn load"),
            });
        let ranges = found.iter().map(|f| (f.id, None)).collect();
        let out = write_back(&arena, ranges, enc, module);
        if let Err(error) = out.done {
            return Err(Rejected {
                error,
                module: out.module,
            });
        }
        self.max_grad_norm = arena.opt.max_grad_norm();
        self.norm_type = arena.opt.grad_norm_type();
        self.skip_nonfinite = arena.opt.skip_nonfinite();
        self.arena = Some(Arena {
            written: out.written,
            ..arena
        });
        Ok(out.module)
    }

    /// A new arena for `module`'s parameters with the checkpoint's state and parameters;
    /// nothing of this optimizer or the module changes.
    fn restore<M: Module>(&self, path: &Path, module: &M) -> Result<(Arena<C>, Vec<Found>)> {
        let found = collect(module, None, None)?;
        let (dev, gpu) = module_device(module, &found)?;
        let names = slot_names(&found);
        let mut params = params_of(&gpu, &names, &found)?;
        let mut opt = self.fused(&params)?;
        checkpoint::load(path, &mut params, &mut opt)?;
        let slot = found.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        let arena = Arena {
            gpu,
            device: dev,
            params,
            opt,
            names,
            slots: slots_of(&found),
            slot,
            written: HashMap::new(),
        };
        Ok((arena, found))
    }
}

/// The wgpu device of a module's float parameters and our handle on it.
fn module_device<M: Module>(module: &M, found: &[Found]) -> Result<(WgpuDevice, Gpu)> {
    let mut v = FirstDevice { device: None };
    module.visit(&mut v);
    let dev = v
        .device
        .ok_or_else(|| Error::Empty("the model has no float parameter on a wgpu device".into()))?;
    let gpu = gpu_of(&dev).ok_or_else(|| Error::BurnTensor {
        param: found.first().map(|f| f.path.clone()).unwrap_or_default(),
        reason: format!("its wgpu device {dev:?} was not set up with wgpu_optim::burn::init"),
    })?;
    Ok((dev, gpu))
}

/// Zeroed f32 tensors named `names` for `found`'s parameters, in their shapes (what Adafactor
/// factors over, and what checkpoints record).
fn params_of(gpu: &Gpu, names: &[String], found: &[Found]) -> Result<Params> {
    let builder = Params::builder(gpu);
    let builder = names.iter().zip(found).fold(builder, |b, (name, f)| {
        b.tensor(name, &f.shape, crate::DType::F32)
    });
    builder.build()
}

fn slots_of(found: &[Found]) -> Vec<(ParamId, String, Vec<usize>)> {
    found
        .iter()
        .map(|f| (f.id, f.path.clone(), f.shape.clone()))
        .collect()
}

/// Unique slot names: the module paths, `#n` added to a repeated one.
fn slot_names(found: &[Found]) -> Vec<String> {
    let mut names = Vec::with_capacity(found.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for f in found {
        let base = if f.path.is_empty() {
            "param".to_string()
        } else {
            f.path.clone()
        };
        let n = seen.entry(base.clone()).or_insert(0);
        names.push(if *n == 0 { base } else { format!("{base}#{n}") });
        *n += 1;
    }
    names
}
