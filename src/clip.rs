//! Gradient norm, clipping, non-finite detection and loss scaling, all on the GPU with a
//! deterministic reduction (a fixed tree, no float atomics).

use crate::error::{check, Error, Result};
use crate::gpu::{Gpu, PipelineKey};
use crate::kernel::{self, Bind};
use crate::params::{chunk_binding, Layout, Params};
use std::sync::Mutex;

const SHADER: &str = include_str!("../shaders/norm.wgsl");

/// Gradient elements per workgroup of the first norm pass (256 threads x 32 vec4).
const NORM_BLOCK: usize = 32768;

/// Which norm of the gradients: PyTorch's `norm_type` 2, 1 or `inf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum NormType {
    /// Largest absolute value (`norm_type=inf`).
    Inf,
    /// Sum of absolute values (`norm_type=1`).
    L1,
    /// Euclidean norm (`norm_type=2`, the default).
    #[default]
    L2,
}

impl NormType {
    /// From PyTorch's float `norm_type`: 1.0, 2.0 or `f32::INFINITY`.
    pub fn from_p(p: f32) -> Result<NormType> {
        match p {
            1.0 => Ok(NormType::L1),
            2.0 => Ok(NormType::L2),
            f if f == f32::INFINITY => Ok(NormType::Inf),
            _ => Err(Error::InvalidOptions(format!(
                "unsupported norm_type {p}: use 1, 2 or inf"
            ))),
        }
    }

    fn code(self) -> u32 {
        match self {
            NormType::Inf => 0,
            NormType::L1 => 1,
            NormType::L2 => 2,
        }
    }
}

/// Options of a [`GradScaler`], with `torch.amp.GradScaler`'s names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerConfig {
    /// Starting scale (2^16).
    pub init_scale: f32,
    /// Multiplier after `growth_interval` steps without overflow (2).
    pub growth_factor: f32,
    /// Multiplier after an overflow (0.5).
    pub backoff_factor: f32,
    /// Clean steps before growing (2000).
    pub growth_interval: u32,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// Dynamic loss scaling with the scale in a GPU buffer.
///
/// Attach it with [`crate::Optimizer::set_grad_scaler`]: each step then divides gradients by
/// the scale as the kernel reads them, skips the step (params, state and step count untouched)
/// when a gradient is inf/NaN, and updates the scale on the GPU, as
/// `scaler.unscale_(opt); scaler.step(opt); scaler.update()` do in PyTorch. Your loss kernel
/// multiplies the loss by the f32 at the start of [`GradScaler::binding`].
///
/// ```no_run
/// use wgpu_optim::{Adam, AdamConfig, GradScaler, Gpu, Optimizer, Params, ScalerConfig};
/// let gpu = Gpu::new()?;
/// let mut params = Params::new(&gpu, &[("w", &[1.0f32; 8][..])])?;
/// let mut opt = Adam::new(&params, AdamConfig::default())?;
/// let scaler = GradScaler::new(&gpu, ScalerConfig::default())?;
/// opt.set_grad_scaler(Some(&scaler))?;
/// params.write_grad("w", &[65536.0; 8])?; // gradients of the scaled loss
/// opt.step(&mut params)?;
/// assert_eq!(scaler.scale()?, 65536.0);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct GradScaler {
    gpu: Gpu,
    buffer: wgpu::Buffer,
    config: ScalerConfig,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScalerData {
    scale: f32,
    growth_tracker: u32,
    growth_factor: f32,
    backoff_factor: f32,
    growth_interval: u32,
    found_inf: u32,
    _pad: [u32; 2],
}

impl GradScaler {
    /// A scaler on `gpu` (validated: growth_factor > 1, backoff_factor in (0, 1),
    /// growth_interval > 0, init_scale > 0 and finite).
    pub fn new(gpu: &Gpu, config: ScalerConfig) -> Result<GradScaler> {
        let c = &config;
        check(
            "init_scale",
            c.init_scale as f64,
            c.init_scale > 0.0,
            "must be > 0",
        )?;
        check(
            "growth_factor",
            c.growth_factor as f64,
            c.growth_factor > 1.0,
            "must be > 1",
        )?;
        let b = c.backoff_factor;
        check(
            "backoff_factor",
            b as f64,
            b > 0.0 && b < 1.0,
            "must be in (0, 1)",
        )?;
        check(
            "growth_interval",
            c.growth_interval as f64,
            c.growth_interval > 0,
            "must be > 0",
        )?;
        let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim grad scaler"),
            size: std::mem::size_of::<ScalerData>() as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let scaler = GradScaler {
            gpu: gpu.clone(),
            buffer,
            config,
        };
        scaler.set_state(scaler.config.init_scale, 0)?;
        Ok(scaler)
    }

    /// The options.
    pub fn config(&self) -> &ScalerConfig {
        &self.config
    }

    /// Overwrite the scale and growth tracker (e.g. when resuming). Scale must be finite > 0.
    pub fn set_state(&self, scale: f32, growth_tracker: u32) -> Result<()> {
        check("scale", scale as f64, scale > 0.0, "must be > 0")?;
        let data = ScalerData {
            scale,
            growth_tracker,
            growth_factor: self.config.growth_factor,
            backoff_factor: self.config.backoff_factor,
            growth_interval: self.config.growth_interval,
            found_inf: 0,
            _pad: [0; 2],
        };
        self.gpu
            .queue()
            .write_buffer(&self.buffer, 0, bytemuck::bytes_of(&data));
        Ok(())
    }

    fn read(&self) -> Result<Vec<f32>> {
        self.gpu.read_pieces(&[(&self.buffer, 0, 32)])
    }

    /// The current scale. Blocks (a small read-back).
    pub fn scale(&self) -> Result<f32> {
        Ok(self.read()?[0])
    }

    /// Clean steps since the last growth or backoff. Blocks.
    pub fn growth_tracker(&self) -> Result<u32> {
        Ok(self.read()?[1].to_bits())
    }

    /// Whether the last step found an inf/NaN gradient. Blocks.
    pub fn found_inf(&self) -> Result<bool> {
        Ok(self.read()?[5].to_bits() != 0)
    }

    /// The scaler's GPU buffer: the first f32 is the current scale (bind it as storage or
    /// uniform in your loss kernel).
    pub fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: 0,
            size: None,
        }
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub(crate) fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}

/// The norm's settings as the shader's `Config` uniform.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct NormConfig {
    pub max_norm: f32,
    pub clip: u32,
    pub skip_nonfinite: u32,
    pub _pad: u32,
}

fn uniform(gpu: &Gpu, data: &[u8]) -> wgpu::Buffer {
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("wgpu-optim norm level"),
        size: data.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue().write_buffer(&buf, 0, data);
    buf
}

pub(crate) fn storage(gpu: &Gpu, label: &str, bytes: u64) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// The norm passes over one parameter set, built once: first pass per chunk, reduction levels,
/// finalize. Writes the shared `ctrl` buffer read by the update kernel.
pub(crate) struct NormPlan {
    first: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    finalize: wgpu::ComputePipeline,
    chunk_groups: Vec<(wgpu::BindGroup, u32)>,
    levels: Vec<(wgpu::BindGroup, u32)>,
    final_group: wgpu::BindGroup,
    pub config: wgpu::Buffer,
    _keep: Vec<wgpu::Buffer>,
}

impl NormPlan {
    pub fn new(
        gpu: &Gpu,
        layout: &Layout,
        grad_bufs: &[wgpu::Buffer],
        borrowed: bool,
        norm: NormType,
        scaler: Option<&GradScaler>,
        ctrl: &wgpu::Buffer,
    ) -> Result<NormPlan> {
        if let Some(s) = scaler {
            if !s.gpu().same_device(gpu) {
                return Err(Error::ParamsMismatch(
                    "the grad scaler lives on another device".into(),
                ));
            }
        }
        let (bgl, pl) = kernel::layout(
            gpu,
            &[
                Some(Bind::Read),
                Some(Bind::ReadWrite),
                Some(Bind::ReadWrite),
                Some(Bind::Uniform),
                Some(Bind::ReadWrite),
                Some(Bind::Uniform),
                None,
                Some(Bind::Read),
            ],
        );
        let constants = vec![("NORM", norm.code()), ("SCALED", scaler.is_some() as u32)];
        let pipe = |entry| {
            gpu.pipeline(
                PipelineKey {
                    shader: "norm",
                    entry,
                    constants: constants.clone(),
                },
                SHADER,
                &pl,
                false,
            )
        };
        let (first, reduce, finalize) = (pipe("first"), pipe("reduce"), pipe("finalize"));
        // Level 0: one partial per block of up to NORM_BLOCK elements of a tensor, in tensor order.
        let mut segments: Vec<Vec<[u32; 2]>> = vec![Vec::new(); layout.chunk_lens.len()];
        for slot in &layout.slots {
            for p in &slot.pieces {
                for b in 0..p.len.div_ceil(NORM_BLOCK) {
                    let elems = (p.len - b * NORM_BLOCK).min(NORM_BLOCK);
                    segments[p.chunk]
                        .push([(p.offset / 4 + b * NORM_BLOCK / 4) as u32, elems as u32]);
                }
            }
        }
        let counts: Vec<u32> = segments.iter().map(|s| s.len() as u32).collect();
        let mut total: u32 = counts.iter().sum();
        let mut level_specs = Vec::new(); // (src, count, dst)
        let mut src = 0u32;
        let mut end = total;
        while total > 1 {
            let next = total.div_ceil(1024);
            level_specs.push((src, total, end));
            src = end;
            end += next;
            total = next;
        }
        let partials = storage(gpu, "wgpu-optim norm partials", end as u64 * 8);
        let dummy_scaler = storage(gpu, "wgpu-optim no scaler", 32);
        let scaler_buf = scaler.map(|s| s.buffer()).unwrap_or(&dummy_scaler);
        let config = uniform(
            gpu,
            bytemuck::bytes_of(&NormConfig {
                max_norm: 1.0,
                clip: 0,
                skip_nonfinite: 0,
                _pad: 0,
            }),
        );
        let dummy_grad = storage(gpu, "wgpu-optim no grad", 16);
        let mut keep = Vec::new();
        let group = |grad: wgpu::BufferBinding<'_>,
                     seg: &[[u32; 2]],
                     lv: [u32; 3],
                     keep: &mut Vec<wgpu::Buffer>| {
            let level = uniform(gpu, bytemuck::cast_slice(&[lv[0], lv[1], lv[2], 0]));
            let seg_bytes: &[u8] = if seg.is_empty() {
                &[0; 8]
            } else {
                bytemuck::cast_slice(seg)
            };
            let segs = storage(gpu, "wgpu-optim norm segments", seg_bytes.len() as u64);
            gpu.queue().write_buffer(&segs, 0, seg_bytes);
            let bg = kernel::bind(
                gpu,
                &bgl,
                &[
                    (0, grad),
                    (1, partials.as_entire_buffer_binding()),
                    (2, scaler_buf.as_entire_buffer_binding()),
                    (3, level.as_entire_buffer_binding()),
                    (4, ctrl.as_entire_buffer_binding()),
                    (5, config.as_entire_buffer_binding()),
                    (7, segs.as_entire_buffer_binding()),
                ],
            );
            keep.extend([level, segs]);
            bg
        };
        let mut base = 0;
        let mut chunk_groups = Vec::new();
        for (c, &n) in counts.iter().enumerate() {
            let bg = group(
                chunk_binding(layout, grad_bufs, c, borrowed),
                &segments[c],
                [0, n, base],
                &mut keep,
            );
            chunk_groups.push((bg, n));
            base += n;
        }
        let levels = level_specs
            .iter()
            .map(|&(s, n, d)| {
                (
                    group(
                        dummy_grad.as_entire_buffer_binding(),
                        &[],
                        [s, n, d],
                        &mut keep,
                    ),
                    n.div_ceil(1024),
                )
            })
            .collect();
        let final_group = group(
            dummy_grad.as_entire_buffer_binding(),
            &[],
            [src, 1, 0],
            &mut keep,
        );
        keep.extend([partials, dummy_scaler, dummy_grad]);
        Ok(NormPlan {
            first,
            reduce,
            finalize,
            chunk_groups,
            levels,
            final_group,
            config,
            _keep: keep,
        })
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, gpu: &Gpu) {
        pass.set_pipeline(&self.first);
        for (bg, n) in &self.chunk_groups {
            pass.set_bind_group(0, bg, &[]);
            kernel::dispatch(pass, gpu, *n);
        }
        pass.set_pipeline(&self.reduce);
        for (bg, n) in &self.levels {
            pass.set_bind_group(0, bg, &[]);
            kernel::dispatch(pass, gpu, *n);
        }
        pass.set_pipeline(&self.finalize);
        pass.set_bind_group(0, &self.final_group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
}

/// The total gradient norm of a [`Params::clip_grad_norm`] call, read back only on demand.
#[derive(Debug)]
pub struct GradNorm {
    gpu: Gpu,
    ctrl: wgpu::Buffer,
}

impl GradNorm {
    /// The total norm (NaN or inf when a gradient was). Blocks (one small read-back).
    pub fn value(&self) -> Result<f32> {
        Ok(self.gpu.read_pieces(&[(&self.ctrl, 0, 16)])?[2])
    }
}

/// Cached machinery of the standalone clipping functions of one [`Params`].
pub(crate) struct ClipCache {
    norm: NormType,
    plan: NormPlan,
    ctrl: wgpu::Buffer,
    scale_pipe: wgpu::ComputePipeline,
    clamp_pipe: wgpu::ComputePipeline,
    rewrite_groups: Vec<(wgpu::BindGroup, usize)>,
}

/// What a standalone gradient pass does after (or instead of) the norm passes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    /// Nothing: the norm alone.
    Keep,
    /// Scale by the clip coefficient the norm passes computed.
    Scale,
    /// Clamp to ±`max_norm` (no norm passes).
    Clamp,
}

impl Params {
    /// `torch.nn.utils.get_total_norm` over the gradients: the total norm of all of them
    /// together, computed on the GPU (the same passes as clipping), gradients untouched. Nothing
    /// is read back: the returned handle reads the norm when asked.
    ///
    /// `norm_type` is 1, 2 or `f32::INFINITY`; the norm is NaN or inf when a gradient is.
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, Params};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::zeros(&gpu, &[("w", 4)])?;
    /// params.write_grad("w", &[3.0, 0.0, 4.0, 0.0])?;
    /// assert_eq!(params.grad_norm(2.0)?.value()?, 5.0);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn grad_norm(&self, norm_type: f32) -> Result<GradNorm> {
        let norm = NormType::from_p(norm_type)?;
        let cfg = NormConfig {
            max_norm: 1.0,
            clip: 0,
            skip_nonfinite: 0,
            _pad: 0,
        };
        let ctrl = self.run_grad_pass(Some(norm), cfg, Rewrite::Keep)?;
        Ok(GradNorm {
            gpu: self.gpu.clone(),
            ctrl,
        })
    }

    /// `torch.nn.utils.clip_grad_norm_`: scale every gradient in place by
    /// `min(1, max_norm / (total_norm + 1e-6))`, with the total norm over all tensors computed on
    /// the GPU. Nothing is read back: the returned handle reads the norm when asked.
    ///
    /// `norm_type` is 1, 2 or `f32::INFINITY`. Unlike PyTorch (which multiplies by NaN), a
    /// non-finite norm leaves the gradients as they are; the handle reports it.
    pub fn clip_grad_norm(&mut self, max_norm: f32, norm_type: f32) -> Result<GradNorm> {
        check("max_norm", max_norm as f64, max_norm > 0.0, "must be > 0")?;
        let norm = NormType::from_p(norm_type)?;
        let cfg = NormConfig {
            max_norm,
            clip: 1,
            skip_nonfinite: 0,
            _pad: 0,
        };
        let ctrl = self.run_grad_pass(Some(norm), cfg, Rewrite::Scale)?;
        Ok(GradNorm {
            gpu: self.gpu.clone(),
            ctrl,
        })
    }

    /// `torch.nn.utils.clip_grad_value_`: clamp every gradient to `[-clip, clip]` in place.
    pub fn clip_grad_value(&mut self, clip: f32) -> Result<()> {
        check("clip_value", clip as f64, clip >= 0.0, "must be >= 0")?;
        let cfg = NormConfig {
            max_norm: clip,
            clip: 0,
            skip_nonfinite: 0,
            _pad: 0,
        };
        self.run_grad_pass(None, cfg, Rewrite::Clamp)?;
        Ok(())
    }

    /// One submit that writes `cfg`, runs the norm passes when `norm` is given, then does
    /// `rewrite` to every gradient chunk in place. Returns the ctrl buffer the norm lands in.
    fn run_grad_pass(
        &self,
        norm: Option<NormType>,
        cfg: NormConfig,
        rewrite: Rewrite,
    ) -> Result<wgpu::Buffer> {
        let guard = self.clip_cache(norm)?;
        let cache = guard.as_ref().expect("clip cache was just built");
        let gpu = &self.gpu;
        gpu.queue()
            .write_buffer(&cache.plan.config, 0, bytemuck::bytes_of(&cfg));
        let mut enc = gpu.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            if norm.is_some() {
                cache.plan.record(&mut pass, gpu);
            }
            match rewrite {
                Rewrite::Keep => {}
                Rewrite::Scale => {
                    kernel::record(&mut pass, gpu, &cache.scale_pipe, &cache.rewrite_groups)
                }
                Rewrite::Clamp => {
                    kernel::record(&mut pass, gpu, &cache.clamp_pipe, &cache.rewrite_groups)
                }
            }
        }
        gpu.queue().submit([enc.finish()]);
        Ok(cache.ctrl.clone())
    }

    /// The cached clipping machinery, (re)built for `norm`; `None` takes any cached norm type
    /// (clamping needs no norm) and builds L2 only when nothing is cached.
    fn clip_cache(
        &self,
        norm: Option<NormType>,
    ) -> Result<std::sync::MutexGuard<'_, Option<ClipCache>>> {
        let mut guard = self.clip.lock().unwrap_or_else(|e| e.into_inner());
        let cached = guard.as_ref().map(|c| c.norm);
        if cached.is_none() || norm.is_some_and(|n| Some(n) != cached) {
            let norm = norm.unwrap_or_default();
            let gpu = &self.gpu;
            let ctrl = storage(gpu, "wgpu-optim clip ctrl", 16);
            let plan = NormPlan::new(
                gpu,
                &self.layout,
                &self.grad_bufs,
                self.borrowed,
                norm,
                None,
                &ctrl,
            )?;
            let (bgl, pl) = kernel::layout(
                gpu,
                &[
                    None,
                    None,
                    None,
                    None,
                    Some(Bind::ReadWrite),
                    Some(Bind::Uniform),
                    Some(Bind::ReadWrite),
                ],
            );
            let pipe = |entry| {
                gpu.pipeline(
                    PipelineKey {
                        shader: "norm-rewrite",
                        entry,
                        constants: vec![],
                    },
                    SHADER,
                    &pl,
                    false,
                )
            };
            let rewrite_groups = (0..self.chunk_count())
                .map(|c| {
                    let bg = kernel::bind(
                        gpu,
                        &bgl,
                        &[
                            (4, ctrl.as_entire_buffer_binding()),
                            (5, plan.config.as_entire_buffer_binding()),
                            (
                                6,
                                chunk_binding(&self.layout, &self.grad_bufs, c, self.borrowed),
                            ),
                        ],
                    );
                    (bg, self.layout.chunk_lens[c])
                })
                .collect();
            *guard = Some(ClipCache {
                norm,
                scale_pipe: pipe("scale_grads"),
                clamp_pipe: pipe("clamp_grads"),
                plan,
                ctrl,
                rewrite_groups,
            });
        }
        Ok(guard)
    }
}

/// A mutex-guarded slot for the clip cache inside [`Params`].
pub(crate) type ClipSlot = Mutex<Option<ClipCache>>;
