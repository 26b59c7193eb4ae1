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

use crate::error::{Error, Result};
use crate::gpu::{Gpu, PipelineKey};
use crate::kernel;
use crate::params::{self, Layout, Params};
use std::sync::Arc;

/// Number of f32 scalars per parameter group passed to a kernel each step (64 bytes).
pub const SCALARS: usize = 16;

/// What every optimizer can do; object safe, so `Box<dyn Optimizer>` works.
pub trait Optimizer {
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
    /// Boolean specialisation constants (`override`s) of the shader.
    fn constants(&self) -> Vec<(&'static str, bool)>;
    /// Whether gradients are negated (`maximize`).
    fn maximize(&self) -> bool;
    /// The scalars for step `t` (1-based, the step about to be taken), computed in f64 as
    /// PyTorch's single-tensor path does and rounded to f32 once.
    fn scalars(&self, t: u64) -> [f32; SCALARS];
    /// The learning rate.
    fn lr(&self) -> f32;
    /// Set the learning rate.
    fn set_lr(&mut self, lr: f32);
}

/// A hyperparameter given as f32, widened to the f64 a Python user would have written
/// (0.9f32 becomes 0.9, not 0.8999999761581421): the shortest decimal that round-trips.
pub fn widen(x: f32) -> f64 {
    if !x.is_finite() {
        return x as f64;
    }
    x.to_string().parse().unwrap_or(x as f64)
}

/// A fused optimizer over a [`Params`] arena. Use the aliases [`Adam`], [`Sgd`], [`RmsProp`]
/// and [`Adagrad`].
pub struct Optim<C: OptimizerConfig> {
    gpu: Gpu,
    params_id: u64,
    layout: Arc<Layout>,
    config: C,
    step: u64,
    pipeline: wgpu::ComputePipeline,
    chunks: Vec<(wgpu::BindGroup, usize)>,
    states: Vec<(&'static str, Vec<wgpu::Buffer>)>,
    scalars: wgpu::Buffer,
    _ctrl: wgpu::Buffer,
    _groups: wgpu::Buffer,
}

impl<C: OptimizerConfig> std::fmt::Debug for Optim<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(C::NAME)
            .field("config", &self.config)
            .field("step", &self.step)
            .finish()
    }
}

fn small_buffer(gpu: &Gpu, label: &str, data: &[u8]) -> wgpu::Buffer {
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: data.len().max(16) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    gpu.queue().write_buffer(&buf, 0, data);
    buf
}

impl<C: OptimizerConfig> Optim<C> {
    /// Build the optimizer for `params`: validates `config`, allocates its state in the arena
    /// layout, compiles (or reuses) the specialised pipeline and builds every bind group.
    pub fn new(params: &Params, config: C) -> Result<Self> {
        config.validate()?;
        let gpu = params.gpu.clone();
        let layout = params.layout.clone();
        let slots = C::SLOTS.len();
        let limit = gpu.limits().max_storage_buffers_per_shader_stage as usize;
        if 5 + slots > limit {
            return Err(Error::DeviceLimit(format!(
                "{} needs {} storage buffers per shader stage, the device allows {limit}",
                C::NAME,
                5 + slots
            )));
        }
        let states: Vec<(&'static str, Vec<wgpu::Buffer>)> = C::SLOTS
            .iter()
            .filter(|k| config.uses_state(k))
            .map(|&k| {
                let init = config.state_init(k);
                let bufs = layout
                    .chunk_lens
                    .iter()
                    .map(|&n| state_buffer(&gpu, k, n, init))
                    .collect();
                (k, bufs)
            })
            .collect();
        let dummy = small_buffer(&gpu, "wgpu-optim unused state", &[0u8; 16]);
        let scalars = small_buffer(&gpu, "wgpu-optim scalars", &[0u8; SCALARS * 4]);
        let ctrl = small_buffer(
            &gpu,
            "wgpu-optim ctrl",
            bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 0.0]),
        );
        let groups = small_buffer(&gpu, "wgpu-optim groups", &[0u8; 16]);
        let (bgl, pl) = kernel::update_layout(&gpu, slots);
        let mut constants = vec![
            ("MAXIMIZE", config.maximize()),
            ("GRAD_MUL", false),
            ("SKIP", false),
            ("GROUPED", false),
        ];
        constants.extend(config.constants());
        let pipeline = gpu.pipeline(
            PipelineKey {
                shader: C::NAME,
                entry: "main",
                constants,
            },
            C::SHADER,
            &pl,
            true,
        );
        let chunks = (0..layout.chunk_lens.len())
            .map(|c| {
                let mut bufs = vec![
                    &scalars,
                    &ctrl,
                    &groups,
                    &params.param_bufs[c],
                    &params.grad_bufs[c],
                ];
                for slot in C::SLOTS {
                    match states.iter().find(|(k, _)| k == slot) {
                        Some((_, b)) => bufs.push(&b[c]),
                        None => bufs.push(&dummy),
                    }
                }
                (kernel::bind_all(&gpu, &bgl, &bufs), layout.chunk_lens[c])
            })
            .collect();
        Ok(Optim {
            gpu,
            params_id: params.id,
            layout,
            config,
            step: 0,
            pipeline,
            chunks,
            states,
            scalars,
            _ctrl: ctrl,
            _groups: groups,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// Change the configuration's numbers (lr, betas, weight decay, ...) from the next step.
    ///
    /// Boolean options select a specialised pipeline and are fixed at construction: changing one
    /// here is an [`Error::InvalidOptions`].
    pub fn set_config(&mut self, config: C) -> Result<()> {
        config.validate()?;
        if config.constants() != self.config.constants()
            || config.maximize() != self.config.maximize()
        {
            return Err(Error::InvalidOptions(
                "boolean options are fixed when the optimizer is built; build a new one".into(),
            ));
        }
        self.config = config;
        Ok(())
    }

    /// Overwrite one state tensor (e.g. when resuming). Validated before any GPU work.
    pub fn set_state(&mut self, key: &str, tensor: &str, data: &[f32]) -> Result<()> {
        let bufs = self.state_buffers(key)?;
        let slot = self.layout.slot(tensor)?;
        if data.len() != slot.len {
            return Err(Error::LengthMismatch {
                name: tensor.to_string(),
                expected: slot.len,
                got: data.len(),
            });
        }
        let mut at = 0;
        for p in &slot.pieces {
            self.gpu.queue().write_buffer(
                &bufs[p.chunk],
                (p.offset * 4) as u64,
                bytemuck::cast_slice(&data[at..at + p.len]),
            );
            at += p.len;
        }
        Ok(())
    }

    /// Set the number of steps already taken (e.g. when resuming).
    pub fn set_step_count(&mut self, steps: u64) {
        self.step = steps;
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
}

fn state_buffer(gpu: &Gpu, key: &str, elems: usize, init: f32) -> wgpu::Buffer {
    if init == 0.0 {
        return params::arena_buffer(gpu, key, elems);
    }
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(key),
        size: (elems * 4) as u64,
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
        words.fill(init.to_le_bytes());
    }
    buf.unmap();
    buf
}

impl<C: OptimizerConfig> Optimizer for Optim<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn step(&mut self, params: &mut Params) -> Result<()> {
        self.config.validate()?;
        if params.id != self.params_id {
            let why = if params.gpu.same_device(&self.gpu) {
                "this is not the parameter set the optimizer was built for"
            } else {
                "these parameters live on another device"
            };
            return Err(Error::ParamsMismatch(why.into()));
        }
        let scalars = self.config.scalars(self.step + 1);
        let gpu = &self.gpu;
        gpu.queue()
            .write_buffer(&self.scalars, 0, bytemuck::cast_slice(&scalars));
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
            kernel::record(&mut pass, gpu, &self.pipeline, &self.chunks);
        }
        gpu.queue().submit([enc.finish()]);
        self.step += 1;
        Ok(())
    }

    fn lr(&self) -> f32 {
        self.config.lr()
    }

    fn set_lr(&mut self, lr: f32) {
        self.config.set_lr(lr);
    }

    fn step_count(&self) -> u64 {
        self.step
    }

    fn state_keys(&self) -> Vec<&'static str> {
        self.states.iter().map(|(k, _)| *k).collect()
    }

    fn state(&self, key: &str, tensor: &str) -> Result<Vec<f32>> {
        let bufs = self.state_buffers(key)?;
        let slot = self.layout.slot(tensor)?;
        params::read_slot(&self.gpu, bufs, slot)
    }
}
