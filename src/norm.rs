//! The gradient norm on the GPU: PyTorch's `clip_grad_norm_` / `get_total_norm` for 1, 2 and
//! inf norms, non-finite detection, and the loss scaler's update, with a deterministic reduction
//! (a fixed order, no float atomics). The passes write `ctrl` ([`crate::shader::Ctrl`]), which
//! the update kernels read; nothing is read back unless asked.
//!
//! Used by the optimizers (fused into their step) and by [`crate::Params`]'s standalone
//! [`grad_norm`](crate::Params::grad_norm), [`clip_grad_norm`](crate::Params::clip_grad_norm)
//! and [`clip_grad_value`](crate::Params::clip_grad_value) ([`Clipper`]).

use crate::arena::{self, chunk_binding, Layout};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, PipelineKey};
use crate::kernel::{self, Bind};
use crate::scaler::{GradScaler, ScalerState};
use crate::shader::{self, Ctrl, ShaderStruct};

const SHADER: &str = include_str!("../shaders/norm.wgsl");

/// Gradient elements per workgroup of the first norm pass (256 threads x 32 vec4).
const NORM_BLOCK: usize = 32768;
/// Tensors (pieces) up to this many elements go to the small-tensor pass, a team of 8 lanes
/// each (`first_small` in shaders/norm.wgsl).
const SMALL_MAX: usize = 1024;
/// Small tensors per workgroup of that pass.
const SMALL_PER_WORKGROUP: u32 = 32;

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

    /// PyTorch's float `norm_type`: 1, 2 or inf.
    pub fn p(self) -> f32 {
        match self {
            NormType::Inf => f32::INFINITY,
            NormType::L1 => 1.0,
            NormType::L2 => 2.0,
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

impl TryFrom<f32> for NormType {
    type Error = Error;

    fn try_from(p: f32) -> Result<NormType> {
        NormType::from_p(p)
    }
}

crate::shader_struct! {
    /// What the norm pass does with the norm (the shader's `cfg` uniform).
    pub(crate) struct NormSettings {
        /// Clip threshold (or the clamp bound of `clip_grad_value`).
        pub max_norm: f32,
        /// 1: multiply gradients by the clip coefficient.
        pub clip: u32,
        /// 1: skip the step on a non-finite gradient.
        pub skip_nonfinite: u32,
        pub pad: u32,
    }
}

impl NormSettings {
    /// Settings of an optimizer step: clip to `max_norm` when given, skip on inf/NaN when asked.
    pub fn step(max_norm: Option<f32>, skip_nonfinite: bool) -> NormSettings {
        NormSettings {
            max_norm: max_norm.unwrap_or(1.0),
            clip: max_norm.is_some() as u32,
            skip_nonfinite: skip_nonfinite as u32,
            pad: 0,
        }
    }
}

crate::shader_struct! {
    /// Which partials one dispatch of the norm pass reads and writes (the shader's `level`).
    pub(crate) struct NormLevel {
        /// First partial read (reduce / finalize).
        pub src: u32,
        /// Workgroups' worth of input: segments (first pass) or partials (reduce).
        pub count: u32,
        /// First partial written.
        pub dst: u32,
        pub pad: u32,
    }
}

/// The norm shader with the structs it shares with the host, reading gradients of `dtype`.
pub(crate) fn norm_source(dtype: DType) -> String {
    shader::with_structs(
        &[
            Ctrl::wgsl(),
            ScalerState::wgsl(),
            NormLevel::wgsl(),
            NormSettings::wgsl(),
            shader::DTYPE.to_string(),
            shader::storage_binding(0, "grad", dtype, false, false, 0),
            shader::storage_binding(6, "grad_rw", dtype, true, false, 0),
        ],
        SHADER,
    )
}

/// The norm passes over one parameter set, built once: first pass per chunk, reduction levels,
/// finalize. Writes the shared `ctrl` buffer read by the update kernel.
pub(crate) struct NormPlan {
    /// Per chunk, the big-tensor and the small-tensor pass: (pipeline, bind group, workgroups).
    first_pass: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, u32)>,
    reduce: wgpu::ComputePipeline,
    finalize: wgpu::ComputePipeline,
    levels: Vec<(wgpu::BindGroup, u32)>,
    final_group: wgpu::BindGroup,
    settings: wgpu::Buffer,
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
        let pipe = |entry, dtype: DType| {
            gpu.pipeline(
                PipelineKey {
                    shader: "norm",
                    entry,
                    variant: dtype.code(),
                    constants: constants.clone(),
                },
                || norm_source(dtype),
                &pl,
                false,
            )
        };
        let (reduce, finalize) = (pipe("reduce", DType::F32), pipe("finalize", DType::F32));
        // Level 0: one partial per block of up to NORM_BLOCK elements of a tensor, in tensor
        // order; pieces of at most SMALL_MAX elements go to the small-tensor pass (one team of
        // lanes each instead of one workgroup each). Each segment names its partial.
        let chunks = layout.chunk_lens.len();
        let mut big: Vec<Vec<[u32; 4]>> = vec![Vec::new(); chunks];
        let mut small: Vec<Vec<[u32; 4]>> = vec![Vec::new(); chunks];
        let mut total = 0u32;
        for slot in &layout.slots {
            for p in &slot.pieces {
                let first = p.offset / 4;
                if p.len <= SMALL_MAX {
                    small[p.chunk].push([first as u32, p.len as u32, total, 0]);
                    total += 1;
                    continue;
                }
                for b in 0..p.len.div_ceil(NORM_BLOCK) {
                    let elems = (p.len - b * NORM_BLOCK).min(NORM_BLOCK);
                    let at = first + b * NORM_BLOCK / 4;
                    big[p.chunk].push([at as u32, elems as u32, total, 0]);
                    total += 1;
                }
            }
        }
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
        let partials = arena::storage(gpu, "wgpu-optim norm partials", end as u64 * 8);
        let dummy_scaler = arena::storage(
            gpu,
            "wgpu-optim no scaler",
            std::mem::size_of::<ScalerState>() as u64,
        );
        let scaler_buf = scaler.map(|s| s.buffer()).unwrap_or(&dummy_scaler);
        let settings = arena::uniform_with(
            gpu,
            "wgpu-optim norm settings",
            bytemuck::bytes_of(&NormSettings::step(None, false)),
        );
        let dummy_grad = arena::storage(gpu, "wgpu-optim no grad", 16);
        let mut keep = Vec::new();
        let group = |grad: wgpu::BufferBinding<'_>,
                     seg: &[[u32; 4]],
                     lv: [u32; 3],
                     keep: &mut Vec<wgpu::Buffer>| {
            let level = NormLevel {
                src: lv[0],
                count: lv[1],
                dst: lv[2],
                pad: 0,
            };
            let level =
                arena::uniform_with(gpu, "wgpu-optim norm level", bytemuck::bytes_of(&level));
            let seg_bytes: &[u8] = if seg.is_empty() {
                &[0; 16]
            } else {
                bytemuck::cast_slice(seg)
            };
            let segs = arena::storage_with(gpu, "wgpu-optim norm segments", seg_bytes);
            let bg = kernel::bind(
                gpu,
                &bgl,
                &[
                    (0, grad),
                    (1, partials.as_entire_buffer_binding()),
                    (2, scaler_buf.as_entire_buffer_binding()),
                    (3, level.as_entire_buffer_binding()),
                    (4, ctrl.as_entire_buffer_binding()),
                    (5, settings.as_entire_buffer_binding()),
                    (7, segs.as_entire_buffer_binding()),
                ],
            );
            keep.extend([level, segs]);
            bg
        };
        // (pipeline, bind group, workgroups) of the first pass, per chunk.
        let mut first_pass = Vec::new();
        for c in 0..chunks {
            let dtype = layout.chunk_dtypes[c];
            let (first, first_small) = (pipe("first", dtype), pipe("first_small", dtype));
            let grad = || chunk_binding(layout, grad_bufs, c, borrowed);
            if !big[c].is_empty() {
                let n = big[c].len() as u32;
                let bg = group(grad(), &big[c], [0, n, 0], &mut keep);
                first_pass.push((first.clone(), bg, n));
            }
            if !small[c].is_empty() {
                let n = small[c].len() as u32;
                let bg = group(grad(), &small[c], [0, n, 0], &mut keep);
                first_pass.push((first_small.clone(), bg, n.div_ceil(SMALL_PER_WORKGROUP)));
            }
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
            first_pass,
            reduce,
            finalize,
            levels,
            final_group,
            settings,
            _keep: keep,
        })
    }

    /// Write the settings the next recorded passes use (ordered with the queue's submits).
    pub fn set_settings(&self, gpu: &Gpu, settings: &NormSettings) {
        gpu.queue()
            .write_buffer(&self.settings, 0, bytemuck::bytes_of(settings));
    }

    /// Record the passes: first pass per chunk, reduction levels, finalize into `ctrl`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, gpu: &Gpu) {
        for (pipeline, bg, n) in &self.first_pass {
            pass.set_pipeline(pipeline);
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

/// The total gradient norm of a [`crate::Params::clip_grad_norm`] or
/// [`crate::Params::grad_norm`] call, read back only on demand.
#[derive(Debug)]
pub struct GradNorm {
    gpu: Gpu,
    ctrl: wgpu::Buffer,
}

impl GradNorm {
    /// The total norm (NaN or inf when a gradient was). Blocks (one small read-back;
    /// [`GradNorm::value_async`] without the wait).
    pub fn value(&self) -> Result<f32> {
        crate::gpu::block_on(
            "GradNorm::value",
            "GradNorm::value_async",
            self.value_async(),
        )
    }

    /// Async form of [`GradNorm::value`], on every target.
    pub async fn value_async(&self) -> Result<f32> {
        Ok(self.gpu.read_struct_async::<Ctrl>(&self.ctrl).await?.norm)
    }
}

/// The standalone gradient passes of one parameter set ([`crate::Params::grad_norm`],
/// `clip_grad_norm`, `clip_grad_value`), built once per norm type and cached by the caller.
pub(crate) struct Clipper {
    norm: NormType,
    plan: NormPlan,
    ctrl: wgpu::Buffer,
    /// Per chunk (for its gradients' dtype).
    scale_pipes: Vec<wgpu::ComputePipeline>,
    clamp_pipes: Vec<wgpu::ComputePipeline>,
    rewrite_groups: Vec<(wgpu::BindGroup, usize)>,
}

/// What a standalone gradient pass does after (or instead of) the norm passes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rewrite {
    /// Nothing: the norm alone.
    Keep,
    /// Scale by the clip coefficient the norm passes computed.
    Scale,
    /// Clamp to ±`max_norm` (no norm passes).
    Clamp,
}

impl Clipper {
    /// The passes over the gradient chunks `grad_bufs` of `layout`, for `norm`.
    pub fn new(
        gpu: &Gpu,
        layout: &Layout,
        grad_bufs: &[wgpu::Buffer],
        borrowed: bool,
        norm: NormType,
    ) -> Result<Clipper> {
        let ctrl = arena::storage_with(
            gpu,
            "wgpu-optim clip ctrl",
            bytemuck::bytes_of(&Ctrl::INITIAL),
        );
        let plan = NormPlan::new(gpu, layout, grad_bufs, borrowed, norm, None, &ctrl)?;
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
        let pipe = |entry, dtype: DType| {
            gpu.pipeline(
                PipelineKey {
                    shader: "norm-rewrite",
                    entry,
                    variant: dtype.code(),
                    constants: vec![],
                },
                || norm_source(dtype),
                &pl,
                false,
            )
        };
        let per_chunk = |entry| -> Vec<wgpu::ComputePipeline> {
            layout
                .chunk_dtypes
                .iter()
                .map(|&d| pipe(entry, d))
                .collect()
        };
        let rewrite_groups = (0..layout.chunk_lens.len())
            .map(|c| {
                let bg = kernel::bind(
                    gpu,
                    &bgl,
                    &[
                        (4, ctrl.as_entire_buffer_binding()),
                        (5, plan.settings.as_entire_buffer_binding()),
                        (6, chunk_binding(layout, grad_bufs, c, borrowed)),
                    ],
                );
                (bg, layout.chunk_lens[c])
            })
            .collect();
        Ok(Clipper {
            norm,
            scale_pipes: per_chunk("scale_grads"),
            clamp_pipes: per_chunk("clamp_grads"),
            plan,
            ctrl,
            rewrite_groups,
        })
    }

    /// The norm type the passes were built for.
    pub fn norm(&self) -> NormType {
        self.norm
    }

    /// One submit that writes `settings`, runs the norm passes when `with_norm`, then does
    /// `rewrite` to every gradient chunk in place. The handle reads the norm on demand.
    pub fn run(
        &self,
        gpu: &Gpu,
        with_norm: bool,
        settings: NormSettings,
        rewrite: Rewrite,
    ) -> GradNorm {
        self.plan.set_settings(gpu, &settings);
        let mut enc = gpu.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            if with_norm {
                self.plan.record(&mut pass, gpu);
            }
            let pipe = match rewrite {
                Rewrite::Keep => None,
                Rewrite::Scale => Some(&self.scale_pipes),
                Rewrite::Clamp => Some(&self.clamp_pipes),
            };
            if let Some(pipe) = pipe {
                kernel::record(&mut pass, gpu, pipe, &self.rewrite_groups);
            }
        }
        gpu.queue().submit([enc.finish()]);
        GradNorm {
            gpu: gpu.clone(),
            ctrl: self.ctrl.clone(),
        }
    }
}
