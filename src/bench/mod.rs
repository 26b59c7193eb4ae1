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
use std::time::Duration;

mod copy;
mod timer;

pub use copy::CopyKernel;
pub use timer::{time_copy, time_steps, GpuTimer, TimerMode};

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
