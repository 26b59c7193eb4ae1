//! [`FusedOptimizer`]: the part of every optimizer that is not its own algorithm.

use super::groups::{self, ParamGroup};
use super::window::ScalarWindow;
use super::{Optimizer, OptimizerConfig};
use crate::arena::{self, Layout};
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, PipelineKey};
use crate::kernel;
use crate::norm::{NormPlan, NormSettings, NormType};
use crate::params::Params;
use crate::scaler::GradScaler;
use crate::shader::{self, Ctrl, StepRng, Storage, OPTIMIZER_SCALAR_BYTES};
use std::sync::Arc;

mod blockwise;
mod factored;
pub(crate) use blockwise::BlockwiseView;
pub(crate) use factored::{
    state_shape as factored_state_shape, StateHome, KEYS as FACTORED_KEYS,
    TASK_LEN as FACTORED_TASK_LEN,
};
#[cfg(feature = "burn")]
pub(crate) use step::RecordedStep;
mod l1;
mod optimizer;
mod precision;
mod state_format;
mod step;
mod tensor_sums;

/// The state key of the f32 master copy of 16-bit parameters ([`Precision::master_weights`]).
pub const MASTER: &str = "master";

/// A fused optimizer over a [`Params`] set: the engine every algorithm shares (state buffers,
/// pipelines, one dispatch per chunk, one submit per step), specialised by an
/// [`OptimizerConfig`]. It implements the [`Optimizer`] trait; use the aliases [`crate::Adam`],
/// [`crate::Sgd`], [`crate::RmsProp`] and [`crate::Adagrad`], or `FusedOptimizer<YourConfig>`
/// for an optimizer of your own.
pub struct FusedOptimizer<C: OptimizerConfig> {
    gpu: Gpu,
    params_id: u64,
    layout: Arc<Layout>,
    groups: Vec<C>,
    /// Each group's L1 coefficient ([`FusedOptimizer::set_l1`]).
    l1: Vec<f32>,
    /// The group of every tensor, in layout order.
    group_of: Vec<u32>,
    /// Steps submitted (skipped ones included).
    submitted: u64,
    pipeline_layout: wgpu::PipelineLayout,
    /// The update kernel of each chunk (specialised for its dtypes).
    pipelines: Vec<wgpu::ComputePipeline>,
    chunks: Vec<(wgpu::BindGroup, usize)>,
    param_bufs: Vec<wgpu::Buffer>,
    grad_bufs: Vec<wgpu::Buffer>,
    borrowed: bool,
    states: Vec<(&'static str, Vec<wgpu::Buffer>)>,
    /// State dtype, master weights, rounding.
    precision: Precision,
    /// Per chunk, the f32 master copy of 16-bit parameters (a placeholder for f32 chunks);
    /// empty without master weights.
    master: Vec<wgpu::Buffer>,
    /// Seed of the stochastic-rounding stream.
    seed: u64,
    /// What the stochastic-rounding counter is ahead of `submitted` by (a resumed run's skipped
    /// steps before the checkpoint).
    rng_offset: u64,
    /// The step's random key.
    rng: wgpu::Buffer,
    /// Bound where the master copy is not used (f32 chunks).
    dummy: wgpu::Buffer,
    /// Bound where a state slot is not used, one per slot: WebGPU forbids binding one buffer
    /// range to two writable bindings of a dispatch (wgpu's native validation lets it pass).
    unused_states: Vec<wgpu::Buffer>,
    tables: Vec<wgpu::Buffer>,
    /// The step's scalars (and, once steps can be skipped, their window and select pass).
    scalars: ScalarWindow,
    /// Written by the norm passes, read by the update kernel and the select pass.
    ctrl: wgpu::Buffer,
    max_grad_norm: Option<f32>,
    norm_type: NormType,
    skip_nonfinite: bool,
    scaler: Option<GradScaler>,
    norm: Option<NormPlan>,
    norm_ran: bool,
    /// With [`OptimizerConfig::TENSOR_SUMS`]: the per-tensor sums' buffers and reduce pass, and
    /// the first pass's pipelines (`pipelines` are then the second pass's).
    tensor_sums: Option<tensor_sums::TensorSums>,
    pipelines_sums: Vec<wgpu::ComputePipeline>,
    /// With [`OptimizerConfig::FACTORED`]: where each tensor's factored state lies in the sums
    /// buffer, and the passes that update it (per chunk: partials, factor, row means).
    factored: Option<factored::Factored>,
    pipelines_factored: Vec<[wgpu::ComputePipeline; 3]>,
    /// With 8-bit blockwise state ([`crate::StateFormat::Blockwise8`]): the block tables.
    blockwise: Option<blockwise::Blockwise>,
}

impl<C: OptimizerConfig> std::fmt::Debug for FusedOptimizer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(C::NAME)
            .field("groups", &self.groups)
            .field("submitted_steps", &self.submitted)
            .field("max_grad_norm", &self.max_grad_norm)
            .finish()
    }
}

impl<C: OptimizerConfig> FusedOptimizer<C> {
    /// One group holding every tensor.
    pub fn new(params: &Params, config: C) -> Result<Self> {
        Self::with_groups(params, vec![ParamGroup::rest(config)])
    }

    /// Parameter groups with their own hyperparameters, still one dispatch per chunk: the
    /// kernel finds each element's group in a table of one u32 per 64 elements.
    pub fn with_groups(params: &Params, groups: Vec<ParamGroup<C>>) -> Result<Self> {
        params.gpu.scoped(|| Self::build(params, groups))
    }

    fn build(params: &Params, groups: Vec<ParamGroup<C>>) -> Result<Self> {
        let owner = groups::resolve(&params.layout, &groups)?;
        let configs: Vec<C> = groups.into_iter().map(|g| g.config).collect();
        for c in &configs {
            c.validate()?;
            if c.constants() != configs[0].constants() || c.maximize() != configs[0].maximize() {
                return Err(Error::InvalidGroups(
                    "boolean options (amsgrad, nesterov, centered, maximize, momentum on/off, ...) must be the same in every group".into(),
                ));
            }
        }
        let scalar_bytes = std::mem::size_of::<C::Scalars>();
        if scalar_bytes > OPTIMIZER_SCALAR_BYTES {
            return Err(Error::InvalidOptions(format!(
                "{}'s scalars take {scalar_bytes} bytes; at most {OPTIMIZER_SCALAR_BYTES} fit a \
                 slot",
                C::NAME
            )));
        }
        let gpu = params.gpu.clone();
        let layout = params.layout.clone();
        let slots = C::SLOTS.len();
        let sums = C::TENSOR_SUMS;
        check_bindings::<C>(&gpu, "", false, false)?;
        if sums > 4 {
            return Err(Error::InvalidOptions(format!(
                "{} asks for {sums} sums per tensor; at most 4 are supported",
                C::NAME
            )));
        }
        if C::FACTORED && sums < 2 {
            return Err(Error::InvalidOptions(format!(
                "{} has a factored second moment, which needs TENSOR_SUMS >= 2",
                C::NAME
            )));
        }
        let factored = C::FACTORED.then(|| {
            factored::Factored::new(
                &layout,
                &owner,
                tensor_sums::TensorSums::floats(&layout, sums),
            )
        });
        let tensor_sums = (sums > 0).then(|| {
            let ext = factored.as_ref().map(|f| (f.tails.as_slice(), f.floats));
            tensor_sums::TensorSums::new(&gpu, &layout, sums, ext)
        });
        let first = &configs[0];
        let mut states = Vec::new();
        for &key in C::SLOTS.iter().filter(|k| first.uses_state(k)) {
            states.push((key, Vec::new()));
        }
        let dummy = arena::storage(&gpu, "wgpu-optim unused buffer", 16);
        let unused_states = C::SLOTS
            .iter()
            .map(|_| arena::storage(&gpu, "wgpu-optim unused state", 16))
            .collect();
        let ctrl = arena::storage_with(&gpu, "wgpu-optim ctrl", bytemuck::bytes_of(&Ctrl::INITIAL));
        let scalars = ScalarWindow::new(&gpu, configs.len(), &ctrl);
        let tables: Vec<wgpu::Buffer> = if configs.len() > 1 {
            groups::granule_table(&layout, &owner)
                .iter()
                .map(|t| {
                    arena::storage_with(&gpu, "wgpu-optim group table", bytemuck::cast_slice(t))
                })
                .collect()
        } else {
            vec![arena::storage(&gpu, "wgpu-optim no groups", 16)]
        };
        let rng = arena::uniform_with(
            &gpu,
            "wgpu-optim rounding key",
            bytemuck::bytes_of(&StepRng::default()),
        );
        let (_, pipeline_layout) = kernel::update_layout(&gpu, slots, false, sums > 0, false);
        let mut opt = FusedOptimizer {
            pipelines: Vec::new(),
            param_bufs: params.param_bufs.clone(),
            grad_bufs: params.grad_bufs.clone(),
            borrowed: params.borrowed,
            gpu,
            params_id: params.id,
            layout,
            l1: vec![0.0; configs.len()],
            groups: configs,
            group_of: owner,
            submitted: 0,
            pipeline_layout,
            chunks: Vec::new(),
            states,
            precision: Precision::default(),
            master: Vec::new(),
            seed: 0,
            rng_offset: 0,
            rng,
            dummy,
            unused_states,
            tables,
            scalars,
            ctrl,
            max_grad_norm: None,
            norm_type: NormType::L2,
            skip_nonfinite: false,
            scaler: None,
            norm: None,
            norm_ran: false,
            tensor_sums,
            pipelines_sums: Vec::new(),
            factored,
            pipelines_factored: Vec::new(),
            blockwise: None,
        };
        opt.fill_states()?;
        opt.bind();
        Ok(opt)
    }

    /// Fresh state buffers in the state dtype (or 8-bit), holding each state's initial value.
    fn fill_states(&mut self) -> Result<()> {
        let dtype = self.precision.state;
        let layout = self.layout.clone();
        if let Some(q) = &self.blockwise {
            for k in 0..self.states.len() {
                let key = self.states[k].0;
                let bufs: Vec<wgpu::Buffer> = (0..layout.chunk_lens.len())
                    .map(|c| arena::arena_buffer(&self.gpu, key, q.buffer_bytes(c)))
                    .collect();
                self.states[k].1 = bufs;
                for (t, slot) in layout.slots.iter().enumerate() {
                    let v = self.groups[self.group_of[t] as usize].state_init(key);
                    if v != 0.0 {
                        self.write_state_values(k, t, &vec![v; slot.len]);
                    }
                }
            }
            return Ok(());
        }
        for (key, bufs) in &mut self.states {
            let inits: Vec<f32> = self.groups.iter().map(|c| c.state_init(key)).collect();
            let uniform = inits.iter().all(|&v| v == inits[0]);
            let init = if uniform { inits[0] } else { 0.0 };
            *bufs = (0..layout.chunk_lens.len())
                .map(|c| state_buffer(&self.gpu, key, layout.chunk_bytes(c, dtype), init, dtype))
                .collect();
            if !uniform {
                for (t, slot) in layout.slots.iter().enumerate() {
                    let v = inits[self.group_of[t] as usize];
                    if v != 0.0 {
                        arena::write_slot(&self.gpu, bufs, slot, dtype, &vec![v; slot.len]);
                    }
                }
            }
        }
        Ok(())
    }

    /// The bind groups of every chunk and the pipelines, for the current buffers and precision.
    fn bind(&mut self) {
        let gpu = &self.gpu;
        let layout = &self.layout;
        let master = self.precision.master_weights;
        let (bgl, pipeline_layout) = kernel::update_layout(
            gpu,
            C::SLOTS.len(),
            master,
            self.tensor_sums.is_some(),
            self.blockwise_active().is_some(),
        );
        self.chunks = (0..layout.chunk_lens.len())
            .map(|c| {
                let mut entries = vec![
                    (0, self.scalars.live().as_entire_buffer_binding()),
                    (1, self.ctrl.as_entire_buffer_binding()),
                    (
                        2,
                        self.tables[c.min(self.tables.len() - 1)].as_entire_buffer_binding(),
                    ),
                    (
                        3,
                        arena::chunk_binding(layout, &self.param_bufs, c, self.borrowed),
                    ),
                    (
                        4,
                        arena::chunk_binding(layout, &self.grad_bufs, c, self.borrowed),
                    ),
                ];
                for (k, slot) in C::SLOTS.iter().enumerate() {
                    let b = match self.states.iter().find(|(key, _)| key == slot) {
                        Some((_, b)) => &b[c],
                        None => &self.unused_states[k],
                    };
                    entries.push((5 + k as u32, b.as_entire_buffer_binding()));
                }
                let mut next = 5 + C::SLOTS.len() as u32;
                if master {
                    entries.push((next, self.master[c].as_entire_buffer_binding()));
                    next += 1;
                }
                entries.push((next, self.rng.as_entire_buffer_binding()));
                if let Some(ts) = &self.tensor_sums {
                    entries.push((next + 1, ts.tables[c].as_entire_buffer_binding()));
                    entries.push((next + 2, ts.sums.as_entire_buffer_binding()));
                }
                let mut elems = layout.chunk_lens[c];
                if let Some(q) = self.blockwise_active() {
                    entries.push((next + 1, q.tables[c].as_entire_buffer_binding()));
                    elems = q.grid_elems(c);
                }
                (kernel::bind(gpu, &bgl, &entries), elems)
            })
            .collect();
        self.pipeline_layout = pipeline_layout;
        self.rebuild_pipeline();
    }

    /// The 8-bit block tables, when the state is 8-bit and there is state at all (SGD without
    /// momentum keeps none, and runs the plain kernel).
    fn blockwise_active(&self) -> Option<&blockwise::Blockwise> {
        self.blockwise.as_ref().filter(|_| !self.states.is_empty())
    }

    fn norm_active(&self) -> bool {
        self.max_grad_norm.is_some() || self.skip_nonfinite || self.scaler.is_some()
    }

    fn rebuild_pipeline(&mut self) {
        let flags = [
            self.max_grad_norm.is_some() || self.scaler.is_some(),
            self.norm_active(),
            self.l1.iter().any(|&l| l != 0.0),
        ];
        // With per-tensor sums: the first pass (MODE 0, `main_sums`), then the second (MODE 2).
        let sums = self.tensor_sums.is_some();
        let build = |entry: &'static str, mode: Option<u32>| -> Vec<wgpu::ComputePipeline> {
            let extra: Vec<(&'static str, u32)> = mode.map(|m| ("MODE", m)).into_iter().collect();
            self.layout
                .chunk_dtypes
                .iter()
                .map(|&param| {
                    update_pipeline(
                        &self.gpu,
                        &self.pipeline_layout,
                        &self.groups,
                        flags,
                        self.storage(param),
                        entry,
                        &extra,
                    )
                })
                .collect()
        };
        let entry = if self.blockwise_active().is_some() {
            "main_q8"
        } else {
            "main"
        };
        let pipelines = build(entry, sums.then_some(2));
        let pipelines_sums = if sums {
            build("main_sums", Some(0))
        } else {
            Vec::new()
        };
        let factored = if self.factored.is_some() {
            let [a, b, c] =
                ["main_partials", "main_factor", "main_rowmean"].map(|e| build(e, None));
            a.into_iter()
                .zip(b)
                .zip(c)
                .map(|((a, b), c)| [a, b, c])
                .collect()
        } else {
            Vec::new()
        };
        (self.pipelines, self.pipelines_sums) = (pipelines, pipelines_sums);
        self.pipelines_factored = factored;
    }

    /// The storage of a chunk of `param` dtype under the current precision.
    fn storage(&self, param: DType) -> Storage {
        let p = self.precision;
        Storage {
            param,
            state: p.state,
            master_binding: p.master_weights,
            stochastic: p.stochastic_rounding,
            q8: match self.blockwise_active() {
                Some(_) => self.states.iter().fold(0u8, |m, (key, _)| {
                    m | 1 << C::SLOTS.iter().position(|s| s == key).expect("a slot")
                }),
                None => 0,
            },
        }
    }

    /// Run the update kernel once in another of its modes (its `MODE` override set to `mode`),
    /// outside the sequence of steps: no norm pass, no gradient scaling or skipping, no L1,
    /// `scalars(group)` for every group; not a step (the step count and the rounding stream do
    /// not move). For an optimizer's own passes over parameters and state, such as
    /// Schedule-Free's switch between its sequences. Submits; does not wait.
    pub(crate) fn run_mode(
        &mut self,
        mode: u32,
        scalars: impl Fn(usize) -> C::Scalars,
    ) -> Result<()> {
        let pipelines: Vec<wgpu::ComputePipeline> = self
            .layout
            .chunk_dtypes
            .iter()
            .map(|&param| {
                update_pipeline(
                    &self.gpu,
                    &self.pipeline_layout,
                    &self.groups,
                    [false, false, false],
                    self.storage(param),
                    "main",
                    &[("MODE", mode)],
                )
            })
            .collect();
        let mut bytes = vec![0u8; self.groups.len() * shader::SCALAR_SLOT_BYTES];
        for g in 0..self.groups.len() {
            let s = scalars(g);
            let b = bytemuck::bytes_of(&s);
            let at = g * shader::SCALAR_SLOT_BYTES;
            bytes[at..at + b.len()].copy_from_slice(b);
        }
        let gpu = self.gpu.clone();
        gpu.scoped(|| {
            gpu.queue().write_buffer(self.scalars.live(), 0, &bytes);
            let mut enc = gpu
                .device()
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some(C::NAME),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(C::NAME),
                    timestamp_writes: None,
                });
                kernel::record(&mut pass, &gpu, &pipelines, &self.chunks);
            }
            gpu.queue().submit([enc.finish()]);
            Ok(())
        })
    }

    /// Build the norm passes for the current norm type and scaler. The first time, the update
    /// kernel switches to the windowed scalars (steps can be skipped from now on).
    fn build_norm(&mut self) -> Result<()> {
        let plan = NormPlan::new(
            &self.gpu,
            &self.layout,
            &self.grad_bufs,
            self.borrowed,
            self.norm_type,
            self.scaler.as_ref(),
            &self.ctrl,
        )?;
        plan.set_settings(
            &self.gpu,
            &NormSettings::step(self.max_grad_norm, self.skip_nonfinite),
        );
        self.norm = Some(plan);
        self.scalars.enable(self.submitted);
        Ok(())
    }

    /// After a change of clipping, skipping, norm type or scaler: the passes and the kernel.
    fn reconfigure(&mut self, rebuild_norm: bool) -> Result<()> {
        self.gpu
            .clone()
            .scoped(|| self.reconfigure_unscoped(rebuild_norm))
    }

    fn reconfigure_unscoped(&mut self, rebuild_norm: bool) -> Result<()> {
        if self.norm_active() && (rebuild_norm || self.norm.is_none()) {
            self.build_norm()?;
        }
        if let Some(plan) = &self.norm {
            plan.set_settings(
                &self.gpu,
                &NormSettings::step(self.max_grad_norm, self.skip_nonfinite),
            );
        }
        self.rebuild_pipeline();
        Ok(())
    }

    /// The configuration of group 0 (the only one unless built with groups).
    pub fn config(&self) -> &C {
        &self.groups[0]
    }

    /// The configuration of one group.
    pub fn group_config(&self, group: usize) -> Result<&C> {
        self.groups
            .get(group)
            .ok_or_else(|| bad_group(group, self.groups.len()))
    }

    /// Change every number of group 0's configuration (see [`FusedOptimizer::set_group_config`]).
    pub fn set_config(&mut self, config: C) -> Result<()> {
        self.set_group_config(0, config)
    }

    /// Change a group's numbers (lr, betas, weight decay, ...) from the next step on.
    ///
    /// Boolean options select a specialised pipeline and are fixed at construction: changing one
    /// here is an [`Error::InvalidOptions`].
    pub fn set_group_config(&mut self, group: usize, config: C) -> Result<()> {
        let current = self.group_config(group)?;
        config.validate()?;
        if config.constants() != current.constants() || config.maximize() != current.maximize() {
            return Err(Error::InvalidOptions(
                "boolean options are fixed when the optimizer is built; build a new one".into(),
            ));
        }
        self.groups[group] = config;
        Ok(())
    }

    /// Overwrite one state tensor (e.g. when resuming), rounded to nearest even into a 16-bit
    /// state dtype. `"master"` is the f32 master copy of a 16-bit parameter. Validated before any
    /// GPU work.
    pub fn set_state(&mut self, key: &str, tensor: &str, data: &[f32]) -> Result<()> {
        if let Some((at, len, _)) = self.factored_state(key, tensor)? {
            if data.len() != len {
                return Err(Error::LengthMismatch {
                    name: format!("{key} of {tensor}"),
                    expected: len,
                    got: data.len(),
                });
            }
            let gpu = self.gpu.clone();
            return gpu.scoped(|| {
                gpu.queue()
                    .write_buffer(self.factored_buffer(), at, bytemuck::cast_slice(data));
                Ok(())
            });
        }
        if self.blockwise.is_some() && key != MASTER {
            let (k, t) = self.state_index(key, tensor)?;
            let len = self.layout.slots[t].len;
            if data.len() != len {
                return Err(Error::LengthMismatch {
                    name: tensor.to_string(),
                    expected: len,
                    got: data.len(),
                });
            }
            let gpu = self.gpu.clone();
            return gpu.scoped(|| {
                self.write_state_values(k, t, data);
                Ok(())
            });
        }
        let (bufs, dtype) = self.state_buffers_of(key, tensor)?;
        arena::write_checked(&self.gpu, bufs, &self.layout, Some(dtype), tensor, data)
    }

    /// Set the number of steps already taken (e.g. when resuming): the next step is `steps + 1`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] for more than [`MAX_STEP_COUNT`](crate::optim::MAX_STEP_COUNT)
    /// steps; nothing changes.
    ///
    /// ```no_run
    /// # use wgpu_optim::{Adam, AdamConfig, Gpu, Params};
    /// # let gpu = Gpu::new()?;
    /// # let params = Params::new(&gpu, &[("w", &[0.0; 4])])?;
    /// let mut opt = Adam::new(&params, AdamConfig::default())?;
    /// opt.set_step_count(1000)?; // the next step is step 1001
    /// assert!(opt.set_step_count(u64::MAX).is_err());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn set_step_count(&mut self, steps: u64) -> Result<()> {
        crate::optim::check_step_count(steps)?;
        self.submitted = steps;
        self.rng_offset = 0;
        let ctrl = Ctrl {
            skipped: 0,
            ..Ctrl::INITIAL
        };
        let at = std::mem::offset_of!(Ctrl, skipped);
        self.gpu.queue().write_buffer(
            &self.ctrl,
            at as u64,
            &bytemuck::bytes_of(&ctrl)[at..at + 4],
        );
        self.scalars.reset(steps);
        Ok(())
    }

    fn state_buffers(&self, key: &str) -> Result<&[wgpu::Buffer]> {
        self.states
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| Error::UnknownState {
                key: key.to_string(),
                optimizer: C::NAME,
                known: self.state_keys(),
            })
    }

    /// The buffers holding state `key` of `tensor` and their dtype; `"master"` is the master
    /// copy (f32), which only 16-bit tensors have.
    fn state_buffers_of(&self, key: &str, tensor: &str) -> Result<(&[wgpu::Buffer], DType)> {
        if key == MASTER && self.precision.master_weights {
            let slot = self.layout.slot(tensor)?;
            if !slot.dtype.is_half() {
                return Err(Error::DTypeMismatch {
                    name: tensor.to_string(),
                    dtype: slot.dtype,
                    reason: "f32 parameters have no master copy".into(),
                });
            }
            return Ok((&self.master, DType::F32));
        }
        Ok((self.state_buffers(key)?, self.precision.state))
    }

    pub(crate) fn check_params(&self, params: &Params) -> Result<()> {
        if params.id == self.params_id {
            return Ok(());
        }
        let why = if params.gpu.same_device(&self.gpu) {
            "this is not the parameter set the optimizer was built for"
        } else {
            "these parameters live on another device"
        };
        Err(Error::ParamsMismatch(why.into()))
    }

    fn read_ctrl(&self) -> Result<Ctrl> {
        self.gpu.read_struct(&self.ctrl)
    }

    async fn read_ctrl_async(&self) -> Result<Ctrl> {
        self.gpu.read_struct_async(&self.ctrl).await
    }

    fn no_norm() -> Error {
        Error::InvalidOptions(
            "no gradient norm was computed in the last step: enable clipping, skip_nonfinite or a grad scaler".into(),
        )
    }
}

/// The update kernel specialised for these groups and `[grad_mul, skip, l1]`.
fn update_pipeline<C: OptimizerConfig>(
    gpu: &Gpu,
    layout: &wgpu::PipelineLayout,
    groups: &[C],
    [grad_mul, skip, l1]: [bool; 3],
    storage: Storage,
    entry: &'static str,
    extra: &[(&'static str, u32)],
) -> wgpu::ComputePipeline {
    let mut constants = vec![
        ("MAXIMIZE", groups[0].maximize() as u32),
        ("GRAD_MUL", grad_mul as u32),
        ("SKIP", skip as u32),
        ("L1", l1 as u32),
        ("GROUPED", (groups.len() > 1) as u32),
        ("GROUPS", groups.len() as u32),
    ];
    constants.extend(groups[0].constants());
    constants.extend_from_slice(extra);
    gpu.pipeline(
        PipelineKey {
            shader: C::NAME,
            entry,
            variant: storage.code(),
            constants,
        },
        || shader::update_kernel::<C::Scalars>(C::SLOTS, C::SHADER, storage, C::TENSOR_SUMS),
        layout,
        true,
    )
}

/// [`Error::DeviceLimit`] unless the device binds the storage buffers of `C`'s update kernel,
/// with master weights and 8-bit state as given (`with` names them in the message).
fn check_bindings<C: OptimizerConfig>(
    gpu: &Gpu,
    with: &str,
    master: bool,
    blockwise: bool,
) -> Result<()> {
    let sums = C::TENSOR_SUMS > 0;
    let need = kernel::update_storage_buffers(C::SLOTS.len(), master, sums, blockwise);
    let limit = gpu.limits().max_storage_buffers_per_shader_stage as usize;
    if need > limit {
        return Err(Error::DeviceLimit(format!(
            "{}{with} needs {need} storage buffers per shader stage, the device allows {limit}",
            C::NAME,
        )));
    }
    Ok(())
}

fn bad_group(group: usize, n: usize) -> Error {
    Error::InvalidGroups(format!("group {group} does not exist ({n} groups)"))
}

/// A state buffer of `bytes`, every element `init` in `dtype`.
fn state_buffer(gpu: &Gpu, key: &str, bytes: u64, init: f32, dtype: DType) -> wgpu::Buffer {
    if init == 0.0 {
        return arena::arena_buffer(gpu, key, bytes);
    }
    let word: [u8; 4] = dtype.encode(&[init, init])[..4]
        .try_into()
        .expect("4 bytes");
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(key),
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: true,
    });
    {
        let mut view = buf
            .slice(..)
            .get_mapped_range_mut()
            .expect("fresh mapped buffer");
        let (mut words, _) = view.slice(..).into_chunks::<4>();
        words.fill(word);
    }
    buf.unmap();
    buf
}
