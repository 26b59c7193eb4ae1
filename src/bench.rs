//! Benchmark helpers shared by `benches/step.rs` and `examples/throughput.rs`: the bytes each
//! kernel moves per element, a copy kernel as the bandwidth baseline, and a GPU timer.
//!
//! An optimizer step is bound by memory bandwidth, so its best possible time is
//! `bytes moved / copy bandwidth`. [`Workload::bytes_per_element`] says how many bytes a step
//! moves, [`CopyKernel`] measures what a plain vec4 copy reaches on the same device, and
//! [`GpuTimer`] times one submission with timestamp queries where the device has them.
//!
//! ```no_run
//! use wgpu_optim::bench::{self, CopyKernel, GpuTimer, Workload};
//! use wgpu_optim::{AdamConfig, Gpu, Params};
//!
//! let gpu = Gpu::new()?;
//! let n = 1 << 22;
//! let mut params = Params::zeros(&gpu, &[("w", n)])?;
//! params.write_grad("w", &bench::pattern(n, 1))?;
//! let adam = Workload::new(AdamConfig::default());
//! let mut opt = adam.optimizer(&params)?.expect("an optimizer");
//! let mut timer = GpuTimer::new(&gpu);
//! let step = bench::time_steps(&mut timer, opt.as_mut(), &mut params, 20)?;
//! let copy = bench::time_copy(&mut timer, &CopyKernel::new(&gpu, n)?, 20)?;
//! let gbps = bench::gb_per_s(adam.bytes_per_element() * n as u64, step);
//! let fraction = gbps / bench::gb_per_s(8 * n as u64, copy);
//! # Ok::<(), wgpu_optim::Error>(())
//! ```

use crate::arena::CHUNK_ALIGN;
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, PipelineKey};
use crate::kernel::{self, Bind};
use crate::optim::{
    AdagradConfig, AdamConfig, FusedOptimizer, Optimizer, OptimizerConfig, RmsPropConfig, SgdConfig,
};
use crate::params::Params;
use crate::reference;
use crate::StateFormat;
use ndarray::Array1;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes one f32 element costs a plain copy: one read and one write.
pub const COPY_BYTES_PER_ELEMENT: u64 = 8;

/// One step of a CPU reference on one tensor (param, grad), with its state inside; see
/// [`Workload::reference_step`].
pub type ReferenceStep = Box<dyn FnMut(&mut Array1<f32>, &Array1<f32>)>;

type Build = Arc<dyn Fn(&Params) -> Result<Box<dyn Optimizer>> + Send + Sync>;
type MakeReference = Arc<dyn Fn(usize) -> ReferenceStep + Send + Sync>;

/// One kernel to benchmark: the copy baseline or an optimizer with its options. Everything
/// but the options comes from the optimizer's own description ([`OptimizerConfig`]): the
/// label from [`OptimizerConfig::NAME`] and its shader options, the bytes per element from the
/// state slots the options use, so an optimizer defined outside this crate is benchmarked
/// like the built-in ones.
///
/// ```
/// use wgpu_optim::bench::Workload;
/// use wgpu_optim::{reference, AdamConfig};
/// let w = Workload::with_reference(AdamConfig { amsgrad: true, ..Default::default() }, reference::adam);
/// assert_eq!((w.label(), w.bytes_per_element()), ("Adam amsgrad", 36));
/// ```
#[derive(Clone)]
pub struct Workload {
    label: String,
    bytes_per_element: u64,
    factored: bool,
    build: Option<Build>,
    reference: Option<MakeReference>,
}

impl std::fmt::Debug for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("label", &self.label)
            .field("bytes_per_element", &self.bytes_per_element)
            .finish()
    }
}

impl Workload {
    /// The copy kernel ([`CopyKernel`]).
    pub fn copy() -> Self {
        Workload {
            label: "copy".into(),
            bytes_per_element: COPY_BYTES_PER_ELEMENT,
            factored: false,
            build: None,
            reference: Some(Arc::new(|_| {
                Box::new(|dst: &mut Array1<f32>, src: &Array1<f32>| dst.assign(src))
            })),
        }
    }

    /// An optimizer with these options ([`FusedOptimizer<C>`]), with no CPU reference.
    pub fn new<C: OptimizerConfig>(config: C) -> Self {
        Workload {
            label: label(&config),
            bytes_per_element: bytes_per_element(&config),
            factored: C::FACTORED,
            build: Some(Arc::new(move |params: &Params| {
                Ok(Box::new(FusedOptimizer::new(params, config.clone())?) as Box<dyn Optimizer>)
            })),
            reference: None,
        }
    }

    /// [`Workload::new`] with the optimizer's CPU reference (`reference::adam`, ...), which
    /// [`Workload::reference_step`] runs.
    pub fn with_reference<C: OptimizerConfig>(config: C, step: reference::Step<C>) -> Self {
        let cfg = config.clone();
        Workload {
            reference: Some(Arc::new(move |n| {
                let mut state = reference::State::new(&cfg, n);
                if C::FACTORED {
                    state = state.with_layout(&matrix_shape(n), &[n]);
                }
                let cfg = cfg.clone();
                Box::new(move |p: &mut Array1<f32>, g: &Array1<f32>| step(&cfg, p, g, &mut state))
            })),
            ..Workload::new(config)
        }
    }

    /// The optimizers and costly options worth benchmarking, after the copy baseline: Adam,
    /// Adam amsgrad, AdamW, SGD, SGD momentum, SGD Nesterov, RMSprop, RMSprop centered with
    /// momentum, Adagrad, Lion, Adadelta, Rprop, ASGD, Adamax, RAdam, NAdam, Schedule-Free
    /// AdamW, LAMB (its bytes per element count one pass; its two passes and the reduction
    /// move more), Adafactor (on a matrix: see [`Workload::shape`]).
    pub fn standard() -> Vec<Workload> {
        let momentum = SgdConfig {
            lr: 1e-2,
            momentum: 0.9,
            ..Default::default()
        };
        let adam = |c| Workload::with_reference(c, reference::adam);
        let sgd = |c| Workload::with_reference(c, reference::sgd);
        let rmsprop = |c| Workload::with_reference(c, reference::rmsprop);
        vec![
            Workload::copy(),
            adam(AdamConfig::default()),
            adam(AdamConfig {
                amsgrad: true,
                ..Default::default()
            }),
            adam(AdamConfig::adamw()),
            sgd(SgdConfig {
                lr: 1e-2,
                ..Default::default()
            }),
            sgd(momentum.clone()),
            sgd(SgdConfig {
                nesterov: true,
                ..momentum
            }),
            rmsprop(RmsPropConfig::default()),
            rmsprop(RmsPropConfig {
                centered: true,
                momentum: 0.9,
                ..Default::default()
            }),
            Workload::with_reference(AdagradConfig::default(), reference::adagrad),
            Workload::with_reference(crate::LionConfig::default(), reference::lion),
            Workload::with_reference(crate::AdadeltaConfig::default(), reference::adadelta),
            Workload::with_reference(crate::RpropConfig::default(), reference::rprop),
            Workload::with_reference(crate::AsgdConfig::default(), reference::asgd),
            Workload::with_reference(crate::AdamaxConfig::default(), reference::adamax),
            Workload::with_reference(crate::RAdamConfig::default(), reference::radam),
            Workload::with_reference(crate::NAdamConfig::default(), reference::nadam),
            Workload::with_reference(
                crate::ScheduleFreeAdamWConfig::default(),
                reference::schedule_free_adamw,
            ),
            Workload::with_reference(crate::LambConfig::default(), reference::lamb),
            Workload::with_reference(crate::AdafactorConfig::default(), reference::adafactor),
        ]
    }

    /// The shape of the one tensor of `n` elements the workload is measured on: `[n]`, or for
    /// a factored second moment ([`OptimizerConfig::FACTORED`], Adafactor) the matrix
    /// [`matrix_shape`]`(n)`, where its row and column passes do their work (a vector would
    /// keep a value per element instead).
    ///
    /// ```
    /// use wgpu_optim::bench::Workload;
    /// use wgpu_optim::{reference, AdafactorConfig, AdamConfig};
    /// let adafactor = Workload::with_reference(AdafactorConfig::default(), reference::adafactor);
    /// assert_eq!(adafactor.shape(1 << 24), [4096, 4096]);
    /// assert_eq!(Workload::new(AdamConfig::default()).shape(1000), [1000]);
    /// ```
    pub fn shape(&self, n: usize) -> Vec<usize> {
        if self.factored {
            matrix_shape(n).to_vec()
        } else {
            vec![n]
        }
    }

    /// A short name with the options that change the kernel, e.g. `"Adam amsgrad"`,
    /// `"SGD momentum+nesterov"` (see [`label`]).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether this is the copy baseline.
    pub fn is_copy(&self) -> bool {
        self.build.is_none()
    }

    /// Bytes of device memory one step reads and writes per f32 element (see
    /// [`bytes_per_element`]); the copy moves [`COPY_BYTES_PER_ELEMENT`].
    pub fn bytes_per_element(&self) -> u64 {
        self.bytes_per_element
    }

    /// Build the optimizer over `params` (`None` for the copy).
    pub fn optimizer(&self, params: &Params) -> Result<Option<Box<dyn Optimizer>>> {
        self.build.as_ref().map(|b| b(params)).transpose()
    }

    /// The CPU reference's step on a tensor of `n` elements, with fresh state (for the copy,
    /// `param.assign(grad)`); `None` when the workload was made without one.
    pub fn reference_step(&self, n: usize) -> Option<ReferenceStep> {
        self.reference.as_ref().map(|r| r(n))
    }
}

/// One way to store an Adam step's tensors: the parameters' (and gradients') dtype, the
/// optimizer's [`Precision`] and its [`StateFormat`] (8-bit state). [`StoragePath::all`] lists those the throughput example and the
/// criterion benches measure.
///
/// ```
/// use wgpu_optim::bench::StoragePath;
/// let all = StoragePath::all();
/// assert_eq!(all[0].bytes_per_element(), 28); // f32 Adam
/// assert_eq!(all[2].bytes_per_element(), 14); // bf16 params, grads and state
/// assert_eq!(all[6].bytes_per_element(), 16); // f32 params, 8-bit state
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoragePath {
    /// A description, e.g. `"bf16 params, bf16 state"`.
    pub label: &'static str,
    /// The parameters' and gradients' dtype.
    pub dtype: DType,
    /// State dtype, master weights, rounding.
    pub precision: Precision,
    /// Dense or 8-bit blockwise state.
    pub format: StateFormat,
}

impl StoragePath {
    /// f32; bf16 params with f32 state; bf16 params and state (round to nearest, then
    /// stochastic); bf16 params with f32 state and master weights; f16 params and state; 8-bit
    /// state with f32 and with bf16 params.
    pub fn all() -> Vec<StoragePath> {
        let p = |state, master_weights, stochastic_rounding| Precision {
            state,
            master_weights,
            stochastic_rounding,
        };
        let path = |label, dtype, precision| StoragePath {
            label,
            dtype,
            precision,
            format: StateFormat::Dense,
        };
        let q8 = |label, dtype| StoragePath {
            label,
            dtype,
            precision: Precision::default(),
            format: StateFormat::blockwise8(),
        };
        use DType::{Bf16, F16, F32};
        vec![
            path("f32 params, f32 state", F32, p(F32, false, false)),
            path("bf16 params, f32 state", Bf16, p(F32, false, false)),
            path("bf16 params, bf16 state", Bf16, p(Bf16, false, false)),
            path(
                "bf16 params, bf16 state, stochastic rounding",
                Bf16,
                p(Bf16, false, true),
            ),
            path(
                "bf16 params, f32 state, f32 master weights",
                Bf16,
                p(F32, true, false),
            ),
            path("f16 params, f16 state", F16, p(F16, false, false)),
            q8("f32 params, 8-bit state", F32),
            q8("bf16 params, 8-bit state", Bf16),
        ]
    }

    /// Bytes of device memory an Adam step moves per element on this path: the parameter read
    /// and written, the gradient read, two state buffers read and written, and the f32 master
    /// copy read and written where there is one. With 8-bit state, one byte per state element
    /// each way (the absmax and block table add 3/64 of a byte per element, left out).
    pub fn bytes_per_element(&self) -> u64 {
        let p = self.dtype.size() as u64;
        let s = match self.format {
            StateFormat::Dense => self.precision.state.size() as u64,
            StateFormat::Blockwise8 { .. } => 1,
        };
        let master = if self.precision.master_weights { 8 } else { 0 };
        3 * p + 4 * s + master
    }
}

/// The squarest matrix of `n` elements: `[rows, n / rows]` with `rows` the largest divisor of
/// `n` that is at most `sqrt(n)` (`[1, n]` for a prime).
///
/// ```
/// use wgpu_optim::bench::matrix_shape;
/// assert_eq!(matrix_shape(1 << 24), [4096, 4096]);
/// assert_eq!(matrix_shape(1 << 21), [1024, 2048]);
/// assert_eq!(matrix_shape(1000), [25, 40]);
/// assert_eq!(matrix_shape(7), [1, 7]);
/// ```
pub fn matrix_shape(n: usize) -> [usize; 2] {
    let mut rows = ((n as f64).sqrt() as usize).max(1);
    while !n.is_multiple_of(rows) {
        rows -= 1;
    }
    [rows, n / rows]
}

/// The benchmark label of an optimizer configuration: [`OptimizerConfig::NAME`] and the shader
/// options it turns on ([`OptimizerConfig::constants`], in lower case, joined by `+`), e.g.
/// `"Adam"`, `"Adam amsgrad+decoupled"`, `"RMSprop centered+momentum"`.
pub fn label<C: OptimizerConfig>(config: &C) -> String {
    let on: Vec<String> = config
        .constants()
        .into_iter()
        .filter(|&(_, v)| v != 0)
        .map(|(k, _)| k.to_lowercase())
        .collect();
    if on.is_empty() {
        C::NAME.to_string()
    } else {
        format!("{} {}", C::NAME, on.join("+"))
    }
}

/// Bytes of device memory one step of `config` must read and write per f32 element: 4 to read
/// the param, 4 to write it, 4 to read the gradient, and 8 (a read and a write) per state slot
/// the configuration uses ([`OptimizerConfig::SLOTS`], [`OptimizerConfig::uses_state`]). So
/// SGD 12, SGD with momentum 20, Adam/AdamW 28 (+8 amsgrad), RMSprop 20 (+8 centered, +8
/// momentum), Adagrad 20, Lion 20, Adadelta 28, Rprop 28, ASGD 20, Adamax / RAdam / NAdam 28.
/// A factored second moment ([`OptimizerConfig::FACTORED`]) counts every pass over a matrix:
/// its row sums and its column sums each read `g` (4 + 4), the first update pass reads `p`
/// and `g` (8), the second the 12 above, so Adafactor 28 (its `rows + cols` state values per
/// matrix are not counted). The optional gradient-norm pass (clipping) is not counted.
pub fn bytes_per_element<C: OptimizerConfig>(config: &C) -> u64 {
    let slots = C::SLOTS.iter().filter(|k| config.uses_state(k)).count() as u64;
    // A factored second moment on a matrix: the row sums and the column sums each read g, and
    // the first of the update's two passes reads p and g, before the pass counted above.
    let factored = if C::FACTORED { 16 } else { 0 };
    12 + 8 * slots + factored
}

/// `bytes` moved in `time`, in GB/s (10^9 bytes per second).
pub fn gb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64().max(1e-12) / 1e9
}

/// `n` deterministic values in [-1, 1) from `seed` (cheap to make; for gradients in benchmarks,
/// so that no kernel runs on zeros).
pub fn pattern(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            r as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The median of `times` (zero when empty).
pub fn median(times: &[Duration]) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let mut t = times.to_vec();
    t.sort();
    let k = t.len() / 2;
    if t.len() % 2 == 1 {
        t[k]
    } else {
        (t[k - 1] + t[k]) / 2
    }
}

const COPY_SHADER: &str = "\
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i < arrayLength(&dst)) {
        dst[i] = src[i];
    }
}
";

/// The bandwidth baseline: a WGSL kernel copying one buffer of `vec4<f32>` into another, 256
/// threads per workgroup, one vec4 per thread, a 2-D grid beyond the per-dimension workgroup
/// limit, exactly as the update kernels are dispatched. It moves
/// [`COPY_BYTES_PER_ELEMENT`] bytes per element.
///
/// The shader is compiled like any user shader, with wgpu's runtime bounds checks
/// ([`CopyKernel::new`]); [`CopyKernel::unchecked`] leaves them out as the update kernels do.
pub struct CopyKernel {
    gpu: Gpu,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    elems: usize,
    _bufs: [wgpu::Buffer; 2],
}

impl std::fmt::Debug for CopyKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyKernel")
            .field("elems", &self.elems)
            .finish()
    }
}

impl CopyKernel {
    /// Two buffers of `elems` f32 (rounded up to a multiple of 1024) and the copy pipeline.
    pub fn new(gpu: &Gpu, elems: usize) -> Result<Self> {
        Self::build(gpu, elems, false)
    }

    /// Like [`CopyKernel::new`], compiled without wgpu's runtime bounds checks (the same
    /// treatment as the update kernels; the kernel only indexes below `arrayLength`).
    pub fn unchecked(gpu: &Gpu, elems: usize) -> Result<Self> {
        Self::build(gpu, elems, true)
    }

    fn build(gpu: &Gpu, elems: usize, trusted: bool) -> Result<Self> {
        let elems = elems.max(1).div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
        let bytes = (elems * 4) as u64;
        if bytes > gpu.max_binding_bytes() {
            return Err(Error::DeviceLimit(format!(
                "a copy of {elems} f32 ({bytes} bytes) exceeds one storage binding ({} bytes)",
                gpu.max_binding_bytes()
            )));
        }
        let (bgl, layout) = kernel::layout(gpu, &[Some(Bind::Read), Some(Bind::ReadWrite)]);
        let pipeline = gpu.pipeline(
            PipelineKey {
                shader: if trusted {
                    "bench copy (unchecked)"
                } else {
                    "bench copy"
                },
                entry: "main",
                variant: 0,
                constants: Vec::new(),
            },
            || COPY_SHADER.to_string(),
            &layout,
            trusted,
        );
        let make = |label| {
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let bufs = [make("wgpu-optim bench src"), make("wgpu-optim bench dst")];
        gpu.queue()
            .write_buffer(&bufs[0], 0, bytemuck::cast_slice(&pattern(elems, 7)));
        let bind_group = kernel::bind(
            gpu,
            &bgl,
            &[
                (0, bufs[0].as_entire_buffer_binding()),
                (1, bufs[1].as_entire_buffer_binding()),
            ],
        );
        Ok(CopyKernel {
            gpu: gpu.clone(),
            pipeline,
            bind_group,
            elems,
            _bufs: bufs,
        })
    }

    /// Elements copied per run (a multiple of 1024).
    pub fn elems(&self) -> usize {
        self.elems
    }

    /// Bytes moved per run.
    pub fn bytes(&self) -> u64 {
        COPY_BYTES_PER_ELEMENT * self.elems as u64
    }

    /// Record the copy into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        kernel::dispatch(pass, &self.gpu, (self.elems / CHUNK_ALIGN) as u32);
    }

    /// Record one compute pass with the copy and submit it, like a step: does not wait.
    pub fn submit(&self) {
        let mut enc = self
            .gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim bench copy"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wgpu-optim bench copy"),
                timestamp_writes: None,
            });
            self.record(&mut pass);
        }
        self.gpu.queue().submit([enc.finish()]);
    }
}

/// How a [`GpuTimer`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// Timestamps written on command encoders around the timed submission
    /// (`TIMESTAMP_QUERY_INSIDE_ENCODERS`).
    EncoderTimestamps,
    /// Timestamps of an empty compute pass before and one after the timed submission
    /// (`TIMESTAMP_QUERY` only).
    PassTimestamps,
    /// Host wall time from the submission to the end of a blocking `device.poll`, with the
    /// queue drained first (no timestamp queries on this device).
    WallClock,
}

impl TimerMode {
    /// Whether the times are GPU timestamps (not host wall time).
    pub fn is_gpu(self) -> bool {
        self != TimerMode::WallClock
    }
}

/// Queries per query set (two per timed submission).
const QUERIES: u32 = 512;

/// Times one queue submission at a time on the GPU: a timestamp is written in a submission of
/// its own before and after the timed work, so the time covers exactly what the work's
/// submission does (on Vulkan a timestamp is taken once all earlier commands are done).
///
/// The queue is drained before each timed submission, so every run starts on an idle device.
pub struct GpuTimer {
    gpu: Gpu,
    mode: TimerMode,
    queries: Option<Queries>,
}

struct Queries {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

impl std::fmt::Debug for GpuTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTimer")
            .field("mode", &self.mode)
            .finish()
    }
}

impl GpuTimer {
    /// The best mode the device allows: encoder timestamps, else pass timestamps, else wall
    /// time.
    pub fn new(gpu: &Gpu) -> Self {
        let f = gpu.device().features();
        let mode = if f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS) {
            TimerMode::EncoderTimestamps
        } else if f.contains(wgpu::Features::TIMESTAMP_QUERY) {
            TimerMode::PassTimestamps
        } else {
            TimerMode::WallClock
        };
        Self::build(gpu, mode)
    }

    /// A timer in a given mode (to compare modes); an error when the device lacks the feature.
    pub fn with_mode(gpu: &Gpu, mode: TimerMode) -> Result<Self> {
        let f = gpu.device().features();
        let ok = match mode {
            TimerMode::EncoderTimestamps => {
                f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
            }
            TimerMode::PassTimestamps => f.contains(wgpu::Features::TIMESTAMP_QUERY),
            TimerMode::WallClock => true,
        };
        if !ok {
            return Err(Error::DeviceLimit(format!(
                "{mode:?} needs timestamp query features this device lacks"
            )));
        }
        Ok(Self::build(gpu, mode))
    }

    fn build(gpu: &Gpu, mode: TimerMode) -> Self {
        let queries = mode.is_gpu().then(|| {
            let bytes = QUERIES as u64 * 8;
            Queries {
                set: gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("wgpu-optim bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES,
                }),
                resolve: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim bench timestamps"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                readback: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim bench timestamps read-back"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                period_ns: gpu.queue().get_timestamp_period() as f64,
            }
        });
        GpuTimer {
            gpu: gpu.clone(),
            mode,
            queries,
        }
    }

    /// How this timer measures.
    pub fn mode(&self) -> TimerMode {
        self.mode
    }

    /// Run `work` `runs` times (each call must make exactly the submission to time, e.g. one
    /// `step()`), and return the time of each run.
    pub fn time<F: FnMut() -> Result<()>>(
        &mut self,
        runs: usize,
        mut work: F,
    ) -> Result<Vec<Duration>> {
        let mut times = self.time_interleaved(runs, &mut [&mut work])?;
        Ok(times.pop().unwrap_or_default())
    }

    /// Like [`GpuTimer::time`] for several pieces of work, run in turn (`a b c a b c ...`), so
    /// that a change of load on a shared machine hits them alike. Returns the times of each.
    pub fn time_interleaved(
        &mut self,
        runs: usize,
        work: &mut [&mut dyn FnMut() -> Result<()>],
    ) -> Result<Vec<Vec<Duration>>> {
        let k = work.len();
        let mut out = vec![Vec::with_capacity(runs); k];
        if k == 0 {
            return Ok(out);
        }
        if 2 * k > QUERIES as usize {
            return Err(Error::DeviceLimit(format!(
                "at most {} pieces of work can be interleaved",
                QUERIES / 2
            )));
        }
        let per_batch = (QUERIES as usize / 2 / k).max(1);
        let mut done = 0;
        while done < runs {
            let batch = per_batch.min(runs - done);
            match &self.queries {
                None => {
                    for _ in 0..batch {
                        for (w, times) in work.iter_mut().zip(&mut out) {
                            self.wait()?;
                            let t0 = Instant::now();
                            w()?;
                            self.wait()?;
                            times.push(t0.elapsed());
                        }
                    }
                }
                Some(q) => {
                    let mut at = 0;
                    for _ in 0..batch {
                        for w in work.iter_mut() {
                            self.wait()?;
                            self.mark(q, at, true);
                            w()?;
                            self.mark(q, at + 1, false);
                            at += 2;
                        }
                    }
                    let ticks = self.resolve(q, at)?;
                    for (j, t) in ticks.chunks_exact(2).enumerate() {
                        let ns = t[1].saturating_sub(t[0]) as f64 * q.period_ns;
                        out[j % k].push(Duration::from_nanos(ns as u64));
                    }
                }
            }
            done += batch;
        }
        Ok(out)
    }

    /// Submit a timestamp write at `index`.
    fn mark(&self, q: &Queries, index: u32, begin: bool) {
        let mut enc = self
            .gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim bench timestamp"),
            });
        if self.mode == TimerMode::EncoderTimestamps {
            enc.write_timestamp(&q.set, index);
        } else {
            let (b, e) = if begin {
                (Some(index), None)
            } else {
                (None, Some(index))
            };
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wgpu-optim bench timestamp"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &q.set,
                    beginning_of_pass_write_index: b,
                    end_of_pass_write_index: e,
                }),
            });
        }
        self.gpu.queue().submit([enc.finish()]);
    }

    /// Resolve and read back the first `count` timestamps. Blocks.
    fn resolve(&self, q: &Queries, count: u32) -> Result<Vec<u64>> {
        let bytes = count as u64 * 8;
        let mut enc = self
            .gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim bench resolve"),
            });
        enc.resolve_query_set(&q.set, 0..count, &q.resolve, 0);
        enc.copy_buffer_to_buffer(&q.resolve, 0, &q.readback, 0, bytes);
        self.gpu.queue().submit([enc.finish()]);
        let slice = q.readback.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| Error::ReadBack(e.to_string()))?
            .map_err(|e| Error::ReadBack(e.to_string()))?;
        let ticks = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::ReadBack(e.to_string()))?;
            bytemuck::pod_collect_to_vec::<u8, u64>(&view)
        };
        q.readback.unmap();
        Ok(ticks)
    }

    /// Block until the queue is empty.
    fn wait(&self) -> Result<()> {
        self.gpu
            .device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::ReadBack(e.to_string()))
    }
}

/// Median time per step of `steps` steps of `opt` on `params`, after two untimed warm-up steps
/// (pipeline compilation, first-step rules). Each step is timed on its own by `timer`.
pub fn time_steps(
    timer: &mut GpuTimer,
    opt: &mut dyn Optimizer,
    params: &mut Params,
    steps: usize,
) -> Result<Duration> {
    for _ in 0..2 {
        opt.step(params)?;
    }
    let times = timer.time(steps.max(1), || opt.step(params))?;
    Ok(median(&times))
}

/// Median time of `runs` runs of the copy kernel, after two untimed warm-up runs.
pub fn time_copy(timer: &mut GpuTimer, copy: &CopyKernel, runs: usize) -> Result<Duration> {
    for _ in 0..2 {
        copy.submit();
    }
    let times = timer.time(runs.max(1), || {
        copy.submit();
        Ok(())
    })?;
    Ok(median(&times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_element_table() {
        let got: Vec<(String, u64)> = Workload::standard()
            .iter()
            .map(|w| (w.label().to_string(), w.bytes_per_element()))
            .collect();
        let want = [
            ("copy", 8),
            ("Adam", 28),
            ("Adam amsgrad", 36),
            ("Adam decoupled", 28),
            ("SGD", 12),
            ("SGD momentum", 20),
            ("SGD momentum+nesterov", 20),
            ("RMSprop", 20),
            ("RMSprop centered+momentum", 36),
            ("Adagrad", 20),
            ("Lion", 20),
            ("Adadelta", 28),
            ("Rprop", 28),
            ("ASGD", 20),
            ("Adamax", 28),
            ("RAdam", 28),
            ("NAdam", 28),
            ("ScheduleFreeAdamW", 28),
            ("LAMB", 28),
            ("Adafactor", 28),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(l, b)| (l.to_string(), *b))
                .collect::<Vec<_>>()
        );
        let centered = RmsPropConfig {
            centered: true,
            ..Default::default()
        };
        assert_eq!(bytes_per_element(&centered), 28);
        assert_eq!(label(&centered), "RMSprop centered");
        assert!(Workload::standard()
            .iter()
            .all(|w| w.reference_step(4).is_some()));
    }

    #[test]
    fn median_and_pattern() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
        let p = pattern(10_000, 3);
        assert!(p.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(p.iter().any(|&x| x > 0.5) && p.iter().any(|&x| x < -0.5));
        assert_eq!(p, pattern(10_000, 3));
    }
}
