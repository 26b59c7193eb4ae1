//! Shared test harness: a real adapter (or a loud failure), fresh random data, one comparison
//! helper and one GPU-vs-CPU-reference runner that every test file uses.
//!
//! The runner ([`Run`], driven step by step through [`Harness`]) builds a parameter set and an
//! optimizer (one group or several), feeds the GPU and [`wgpu_optim::reference`] the same fresh
//! random gradients, optionally clips by the global norm, plants inf/NaN in chosen steps
//! (which must be skipped and change nothing), and compares params and every state buffer at
//! the end: bit for bit on lavapipe/llvmpipe, within [`Bound::REFERENCE`] elsewhere.
#![allow(dead_code)]

use ndarray::Array1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;
use wgpu_optim::reference::{self, ScalerState, State, Stored};
use wgpu_optim::{
    DType, FusedOptimizer, Gpu, GradScaler, NormType, Optimizer, OptimizerConfig, ParamGroup,
    Params, Precision, ScalerConfig, StateFormat,
};

/// `(name, values)` pairs for `Params::new` from parallel lists of names and values.
pub fn named<'a>(
    names: impl IntoIterator<Item = &'a str>,
    values: &'a [Vec<f32>],
) -> Vec<(&'a str, &'a [f32])> {
    names
        .into_iter()
        .zip(values.iter().map(|v| &v[..]))
        .collect()
}

/// The adapter every test runs on. No adapter is a test failure that says how to get one.
pub fn gpu() -> Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = Gpu::new().unwrap_or_else(|e| {
            panic!(
                "these tests need a real GPU adapter and none was found: {e}\n\
                 On Linux without a GPU: `apt-get install -y mesa-vulkan-drivers` (lavapipe)."
            )
        });
        let i = gpu.info();
        eprintln!(
            "adapter: {} ({:?}, driver {} {}); vs the reference: {:?}",
            i.name,
            i.backend,
            i.driver,
            i.driver_info,
            reference_bound_for(&gpu)
        );
        gpu
    })
    .clone()
}

/// A fresh seed per run (printed, and overridable with TEST_SEED to reproduce a failure).
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Normal-ish random values (sum of uniforms), never all zero.
pub fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            (rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5) * 2.0 * scale
        })
        .collect()
}

/// Plain SGD (no momentum) at `lr` over `params`.
pub fn plain_sgd(params: &Params, lr: f32) -> wgpu_optim::Sgd {
    let cfg = wgpu_optim::SgdConfig {
        lr,
        ..Default::default()
    };
    wgpu_optim::Sgd::new(params, cfg).unwrap()
}

/// One step of a reference optimizer on one tensor (`wgpu_optim::reference::adam`, ...).
pub type RefFn<C> = reference::Step<C>;

// ------------------------------------------------------------------------------------------
// Comparison
// ------------------------------------------------------------------------------------------

/// How closely a GPU result must agree with what it is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// The same bits (NaN matches NaN).
    Bits,
    /// `|got - want| <= atol + rtol * |want|`, and both finite or both not.
    Within {
        /// Absolute part.
        atol: f32,
        /// Relative part.
        rtol: f32,
    },
}

impl Bound {
    /// Against the CPU reference on a driver whose rounding the reference does not know. The
    /// kernels use the same f32 operations in the same order as the reference (fused where
    /// the shader fuses); what may differ is the GPU's division (WGSL allows 2.5 ULP), sqrt
    /// (not promised correctly rounded) and whether `fma` is really fused: a few ULP per step
    /// that compound over the steps of a run, most on values near zero.
    pub const REFERENCE: Bound = Bound::Within {
        atol: 1e-6,
        rtol: 2e-5,
    };
    /// Against torch.optim's recorded trajectories (tests/data), on every driver: ATen takes
    /// sqrt from a vector library that is one ULP off in about 18% of cases, so not even
    /// lavapipe can match torch's bits (see tests/torch_parity.rs).
    pub const TORCH: Bound = Bound::Within {
        atol: 1e-6,
        rtol: 2e-5,
    };
}

/// Whether the adapter is Mesa's CPU driver (lavapipe, named `llvmpipe (LLVM ...)`): IEEE
/// division and sqrt, and `fma` split into a multiply and an add, which
/// [`wgpu_optim::Gpu::fused_multiply_add`] detects and the reference can be told about.
pub fn is_lavapipe(gpu: &Gpu) -> bool {
    let name = gpu.info().name.to_lowercase();
    name.contains("llvmpipe") || name.contains("lavapipe")
}

fn reference_bound_for(gpu: &Gpu) -> Bound {
    if is_lavapipe(gpu) {
        Bound::Bits
    } else {
        Bound::REFERENCE
    }
}

/// The bound against the CPU reference on this adapter: [`Bound::Bits`] on lavapipe (the
/// README's claim, asserted), [`Bound::REFERENCE`] elsewhere. Also tells the reference, for
/// this thread, how the driver rounds `fma`: call it before running the reference.
pub fn reference_bound() -> Bound {
    let gpu = gpu();
    reference::set_fused_multiply_add(gpu.fused_multiply_add());
    reference_bound_for(&gpu)
}

/// Compare `got` (from the GPU) with `want` element by element within `bound`; panics at the
/// first element outside it. Returns the worst error as a fraction of what was allowed (0
/// for [`Bound::Bits`]).
pub fn compare(what: &str, got: &[f32], want: &[f32], bound: Bound) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0.0f32;
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        match bound {
            Bound::Bits => assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{what}[{i}] of {}: gpu {a:e} ({:#010x}) vs {b:e} ({:#010x}), bit-exact expected",
                got.len(),
                a.to_bits(),
                b.to_bits()
            ),
            Bound::Within { atol, rtol } => {
                let err = (a - b).abs();
                let allowed = atol + rtol * b.abs();
                assert!(
                    (err <= allowed && a.is_finite() == b.is_finite())
                        || (a.is_nan() && b.is_nan()),
                    "{what}[{i}] of {}: gpu {a} vs {b} (err {err:e} > {allowed:e})",
                    got.len()
                );
                if err.is_finite() {
                    worst = worst.max(err / allowed);
                }
            }
        }
    }
    worst
}

/// [`compare`] against the CPU reference with [`reference_bound`].
pub fn assert_matches_reference(what: &str, got: &[f32], want: &[f32]) {
    let worst = compare(what, got, want, reference_bound());
    if worst > 0.5 {
        eprintln!("{what}: worst error {worst:.3} of the bound");
    }
}

/// Snapshot of params and every state tensor, as bits.
pub fn snapshot(params: &Params, opt: &dyn Optimizer) -> Vec<Vec<u32>> {
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect();
    let mut out = Vec::new();
    for n in params.names() {
        out.push(bits(params.read(n).unwrap()));
        for k in opt.state_keys_of(n).unwrap() {
            out.push(bits(opt.state(k, n).unwrap()));
        }
    }
    out
}

/// The stochastic-rounding seed of every [`Run`].
pub const ROUNDING_SEED: u64 = 0x5eed;

/// Fill every param and grad buffer with all-ones bytes, a NaN in every dtype (f32, bf16, f16),
/// before the tensors' values are written: padding stays NaN (but for the upper half of a
/// 16-bit tensor's last word when its length is odd, which writes set to zero).
pub fn poison_buffers(params: &Params) {
    let gpu = params.gpu();
    for c in 0..params.chunk_count() {
        for buf in [params.param_buffer(c), params.grad_buffer(c)] {
            let buf = buf.unwrap();
            gpu.queue()
                .write_buffer(buf, 0, &vec![0xff; buf.size() as usize]);
        }
    }
}

/// Write NaN (all-ones bytes, a NaN in every dtype) into every word of the param and grad
/// buffers that holds no tensor element: the padding after each tensor up to the next 256-byte
/// boundary, and each chunk's tail.
pub fn poison_padding(params: &Params) {
    let gpu = params.gpu();
    let mut used: Vec<Vec<bool>> = (0..params.chunk_count())
        .map(|c| vec![false; (params.param_buffer(c).unwrap().size() / 4) as usize])
        .collect();
    for name in params.names() {
        let es = params.dtype(name).unwrap().size();
        for p in params.pieces(name).unwrap() {
            let (lo, hi) = (p.offset * es / 4, (p.offset + p.len) * es);
            used[p.chunk][lo..hi.div_ceil(4)].fill(true);
        }
    }
    for (c, used) in used.iter().enumerate() {
        let mut i = 0;
        while i < used.len() {
            if used[i] {
                i += 1;
                continue;
            }
            let end = used[i..]
                .iter()
                .position(|&u| u)
                .map_or(used.len(), |k| i + k);
            let nan = vec![0xffu8; (end - i) * 4];
            for buf in [params.param_buffer(c), params.grad_buffer(c)] {
                gpu.queue().write_buffer(buf.unwrap(), (i * 4) as u64, &nan);
            }
            i = end;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Recorded trajectories (tools/*_trajectory.py)
// ------------------------------------------------------------------------------------------

/// A JSON list of numbers as f32.
pub fn json_floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Replay one recorded case: `base` with the case's `options` set by hyperparameter name (a
/// list value sets `name[0]`, `name[1]`, ...), tensors from `init` (name to values), one step
/// per entry of `grads`. Returns the tensor names, the parameters and the optimizer after the
/// last step.
pub fn replay_trajectory<C: OptimizerConfig>(
    gpu: &Gpu,
    case: &serde_json::Value,
    mut base: C,
) -> (Vec<String>, Params, FusedOptimizer<C>) {
    for (k, v) in case["options"].as_object().unwrap() {
        match v.as_array() {
            Some(list) => {
                for (i, x) in list.iter().enumerate() {
                    base.set_hyperparameter(&format!("{k}[{i}]"), x.as_f64().unwrap())
                        .unwrap();
                }
            }
            None => base.set_hyperparameter(k, v.as_f64().unwrap()).unwrap(),
        }
    }
    let init = case["init"].as_object().unwrap();
    let names: Vec<String> = init.keys().cloned().collect();
    let values: Vec<Vec<f32>> = init.values().map(json_floats).collect();
    let mut params = Params::new(gpu, &named(names.iter().map(|n| n.as_str()), &values)).unwrap();
    let mut opt = FusedOptimizer::new(&params, base).unwrap();
    for step in case["grads"].as_array().unwrap() {
        for (n, g) in step.as_object().unwrap() {
            params.write_grad(n, &json_floats(g)).unwrap();
        }
        opt.step(&mut params).unwrap();
    }
    (names, params, opt)
}

// ------------------------------------------------------------------------------------------
// The GPU-vs-reference runner
// ------------------------------------------------------------------------------------------

/// The sizes every option combination runs on: edge cases around vec4, 64 and 256.
pub const SIZES: &[usize] = &[1, 3, 4, 5, 63, 64, 65, 1000, (1 << 20) + 3];

/// A step in which one gradient element is set to a non-finite value: the step must be
/// skipped (with clipping or `skip_nonfinite` on) and change nothing.
#[derive(Clone, Copy, Debug)]
pub struct BadStep {
    /// Step index (0-based) of the run.
    pub step: usize,
    /// Tensor name.
    pub tensor: &'static str,
    /// Element index in that tensor.
    pub index: usize,
    /// inf, -inf or NaN.
    pub value: f32,
}

/// What a run against the reference is made of; build with [`Run::new`] and the setters, then
/// [`Run::run`] (one group), [`Run::run_groups`], or [`Run::harness`] to drive it step by step
/// (e.g. to save and resume in the middle).
///
/// # What is poisoned, and what that can prove
/// "Poisoned" means: set to NaN where the kernel must not read it, or must overwrite it before
/// reading it, so that an element it fails to write, or reads when it should not, shows up.
/// - **Padding** of the param and grad buffers (every element past a tensor's end up to the
///   next tensor or the chunk's end, [`poison_padding`]) is NaN before the first step. The
///   kernels run over whole vec4s and do compute on padding; none of it may reach a tensor's
///   values, the gradient norm (clipping) or the non-finite check (which would skip every
///   step).
/// - **State written before it is read** ([`Run::poison_state`], e.g. SGD's momentum buffer,
///   which torch creates as `buf = grad` on the first step) is NaN in every element before
///   the first step: an element the first step does not write stays NaN and fails.
/// - Everything else a kernel reads and writes (params, Adam's moments, Adagrad's sum) must
///   start at the values torch starts from, so it cannot be poisoned. There the final
///   comparison catches an element the kernel did not write, as long as the expected value
///   moved away from its start: the runner asserts that at most 1 in 1000 expected values
///   ended where they started, so at most that many could hide an unwritten element.
///
/// State padding is not poisoned: the tests cannot reach it through the public API, and
/// nothing reads it into a tensor's values.
#[derive(Clone)]
pub struct Run<C: OptimizerConfig> {
    name: String,
    reference: RefFn<C>,
    tensors: Vec<(String, usize)>,
    /// Each tensor's shape, where [`Run::shaped`] gave one (else a vector).
    shapes: Vec<Vec<usize>>,
    max_chunk_bytes: u64,
    steps: usize,
    grad_scales: Vec<f32>,
    clip: Option<(f32, f32)>,
    skip_nonfinite: bool,
    bad: Vec<BadStep>,
    poison_state: Vec<&'static str>,
    seed: Option<u64>,
    scaler: Option<ScalerConfig>,
    dtypes: Vec<DType>,
    precision: Precision,
    l1: Vec<f32>,
    format: StateFormat,
}

impl<C: OptimizerConfig> Run<C> {
    /// Defaults: tensors of [`SIZES`], one chunk, 8 steps, gradient scales 1, 0.1, 3, 1e-3 in
    /// turn, no clipping, no bad steps.
    pub fn new(name: impl Into<String>, reference: RefFn<C>) -> Self {
        Run {
            name: name.into(),
            reference,
            tensors: Vec::new(),
            shapes: Vec::new(),
            max_chunk_bytes: u64::MAX,
            steps: 8,
            grad_scales: vec![1.0, 0.1, 3.0, 1e-3],
            clip: None,
            skip_nonfinite: false,
            bad: Vec::new(),
            poison_state: Vec::new(),
            seed: None,
            scaler: None,
            dtypes: vec![DType::F32],
            precision: Precision::default(),
            l1: Vec::new(),
            format: StateFormat::Dense,
        }
        .sizes(SIZES)
    }

    /// Tensors named `t{i}_{n}` of these sizes.
    pub fn sizes(mut self, sizes: &[usize]) -> Self {
        self.tensors = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("t{i}_{n}"), n))
            .collect();
        self
    }

    /// Named tensors.
    pub fn tensors<S: AsRef<str>>(mut self, tensors: &[(S, usize)]) -> Self {
        self.tensors = tensors
            .iter()
            .map(|(n, l)| (n.as_ref().to_string(), *l))
            .collect();
        self
    }

    /// Named tensors of these shapes.
    pub fn shaped(mut self, tensors: &[(&str, &[usize])]) -> Self {
        self.tensors = tensors
            .iter()
            .map(|(n, s)| (n.to_string(), s.iter().product()))
            .collect();
        self.shapes = tensors.iter().map(|(_, s)| s.to_vec()).collect();
        self
    }

    fn shape_of(&self, t: usize) -> Vec<usize> {
        self.shapes
            .get(t)
            .cloned()
            .unwrap_or_else(|| vec![self.tensors[t].1])
    }

    /// Split the arena into chunks of at most this many bytes.
    pub fn max_chunk_bytes(mut self, bytes: u64) -> Self {
        self.max_chunk_bytes = bytes;
        self
    }

    /// Number of steps.
    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// Gradient scale of step `s`: `scales[s % scales.len()]`.
    pub fn grad_scales(mut self, scales: &[f32]) -> Self {
        self.grad_scales = scales.to_vec();
        self
    }

    /// Clip by the global `p`-norm to `max_norm` (the reference gets torch's coefficient from
    /// the GPU's norm, which is checked against an f64 norm first).
    pub fn clip(mut self, max_norm: f32, p: f32) -> Self {
        self.clip = Some((max_norm, p));
        self
    }

    /// Skip steps with a non-finite gradient (without clipping).
    pub fn skip_nonfinite(mut self) -> Self {
        self.skip_nonfinite = true;
        self
    }

    /// Plant `value` at `(tensor, index)` in each of these steps.
    pub fn bad_steps(mut self, steps: &[usize], value: f32, at: (&'static str, usize)) -> Self {
        self.bad.extend(steps.iter().map(|&step| BadStep {
            step,
            tensor: at.0,
            index: at.1,
            value,
        }));
        self
    }

    /// Poison state `key` with NaN before the first step: for state the first step writes
    /// without reading (see the type's documentation).
    pub fn poison_state(mut self, key: &'static str) -> Self {
        self.poison_state.push(key);
        self
    }

    /// Draw the initial values and gradients from this seed instead of a fresh one, so that
    /// two harnesses of the same run see the same numbers (e.g. an uninterrupted run and one
    /// resumed from a checkpoint).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Attach a loss scaler with this config (gradients are written unscaled, so the GPU
    /// divides them by the scale; steps with a non-finite gradient are skipped and back the
    /// scale off). The reference follows the scale with [`ScalerState`], and [`Harness::check`]
    /// compares the GPU scaler's scale and growth tracker with it.
    pub fn scaler(mut self, config: ScalerConfig) -> Self {
        self.scaler = Some(config);
        self
    }

    /// Store the tensors in these dtypes, in turn (tensor `i` gets `dtypes[i % len]`): one dtype
    /// for all, or a mixed arena.
    pub fn dtypes(mut self, dtypes: &[DType]) -> Self {
        self.dtypes = dtypes.to_vec();
        self
    }

    /// The optimizer's state dtype, master weights and rounding.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// L1 regularisation per group (`FusedOptimizer::set_group_l1`), in turn: group `g` gets
    /// `l1[g % len]`.
    pub fn l1(mut self, l1: &[f32]) -> Self {
        self.l1 = l1.to_vec();
        self
    }

    /// Keep the state in this format (`FusedOptimizer::set_state_format`): with 8-bit state,
    /// the reference requantizes after each step ([`reference::requantize`]) and the check
    /// compares codes and absmax (see [`compare_codes`]).
    pub fn state_format(mut self, format: StateFormat) -> Self {
        self.format = format;
        self
    }

    fn dtype_of(&self, t: usize) -> DType {
        self.dtypes[t % self.dtypes.len()]
    }

    /// Run with one group holding every tensor, and check.
    pub fn run(self, cfg: C) -> Outcome {
        self.run_groups(vec![ParamGroup::rest(cfg)], |_| 0)
    }

    /// Run with parameter groups, where `group_of(name)` says which group each tensor must
    /// land in (checked against the optimizer's own resolution), and check.
    pub fn run_groups(
        self,
        groups: Vec<ParamGroup<C>>,
        group_of: impl Fn(&str) -> usize,
    ) -> Outcome {
        self.harness(groups, group_of).finish()
    }

    /// Build the GPU and CPU sides without running a step.
    pub fn harness(
        self,
        groups: Vec<ParamGroup<C>>,
        group_of: impl Fn(&str) -> usize,
    ) -> Harness<C> {
        Harness::new(self, groups, group_of)
    }
}

/// Counts from a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Steps applied (not skipped).
    pub applied: usize,
    /// Steps whose clip coefficient was below 1.
    pub clipped: usize,
}

/// A [`Run`] in progress: the GPU side (params, optimizer) and the CPU side (reference params
/// and state per tensor), stepped together.
pub struct Harness<C: OptimizerConfig> {
    run: Run<C>,
    /// The GPU parameters.
    pub params: Params,
    /// The GPU optimizer.
    pub opt: FusedOptimizer<C>,
    /// The GPU loss scaler attached to `opt`, with [`Run::scaler`].
    pub scaler: Option<GradScaler>,
    /// Its reference twin.
    scaler_state: Option<ScalerState>,
    /// Each tensor's reference config (its group's) and L1 coefficient.
    configs: Vec<C>,
    l1_of: Vec<f32>,
    /// Reference params and state, per tensor.
    cpu: Vec<(Array1<f32>, State)>,
    /// With 8-bit state: per tensor (empty below min_size), the reference's codes per state and
    /// the values they were made from.
    quantized: Vec<Vec<(&'static str, wgpu_optim::QuantizedState, Vec<f32>)>>,
    /// Codes that differed by one at a midpoint, over all checks.
    pub midpoint_codes: std::cell::Cell<usize>,
    /// Reference master copies (16-bit tensors with master weights).
    master: Vec<Option<Array1<f32>>>,
    /// Each element's index inside its chunk, per tensor (for stochastic rounding).
    positions: Vec<Vec<u32>>,
    init: Vec<Vec<f32>>,
    rng: StdRng,
    bound: Bound,
    /// Steps taken so far.
    pub step: usize,
    /// Counts so far.
    pub outcome: Outcome,
}

impl<C: OptimizerConfig> Harness<C> {
    fn new(run: Run<C>, groups: Vec<ParamGroup<C>>, group_of: impl Fn(&str) -> usize) -> Self {
        let gpu = gpu();
        let bound = reference_bound();
        let mut rng = match run.seed {
            Some(seed) => {
                eprintln!("{}: seed {seed}", run.name);
                StdRng::seed_from_u64(seed)
            }
            None => rng(&run.name),
        };
        let init: Vec<Vec<f32>> = run
            .tensors
            .iter()
            .enumerate()
            .map(|(t, (_, n))| {
                let d = run.dtype_of(t);
                randn(&mut rng, *n, 1.0)
                    .into_iter()
                    .map(|x| d.round(x))
                    .collect()
            })
            .collect();
        let mut builder = Params::builder(&gpu).max_chunk_bytes(run.max_chunk_bytes);
        for (t, (name, _)) in run.tensors.iter().enumerate() {
            builder = builder.tensor(name, &run.shape_of(t), run.dtype_of(t));
        }
        let params = builder.build().unwrap();
        poison_buffers(&params);
        for ((name, _), v) in run.tensors.iter().zip(&init) {
            params.write(name, v).unwrap();
        }
        // The reference takes each tensor's config from the groups as given and the group
        // `group_of` names, not from the optimizer's own bookkeeping.
        let given: Vec<C> = groups.iter().map(|g| g.config.clone()).collect();
        let group_count = groups.len();
        let mut opt = FusedOptimizer::with_groups(&params, groups).unwrap();
        assert_eq!(opt.group_count(), group_count, "{}: groups", run.name);
        if let Some((max_norm, p)) = run.clip {
            opt.set_max_grad_norm(Some(max_norm)).unwrap();
            opt.set_grad_norm_type(wgpu_optim::NormType::from_p(p).unwrap())
                .unwrap();
        }
        if run.skip_nonfinite {
            opt.set_skip_nonfinite(true).unwrap();
        }
        opt.set_precision(run.precision).unwrap();
        opt.set_state_format(run.format).unwrap();
        opt.set_rounding_seed(ROUNDING_SEED);
        let scaler = run
            .scaler
            .clone()
            .map(|c| GradScaler::new(&gpu, c).unwrap());
        opt.set_grad_scaler(scaler.as_ref()).unwrap();
        let scaler_state = run.scaler.as_ref().map(ScalerState::new);
        if !run.l1.is_empty() {
            for g in 0..group_count {
                opt.set_group_l1(g, run.l1[g % run.l1.len()]).unwrap();
            }
        }
        let mut configs = Vec::new();
        let mut l1_of = Vec::new();
        for (name, len) in &run.tensors {
            let g = opt.group_of(name).unwrap();
            assert_eq!(g, group_of(name), "{}: group of {name}", run.name);
            configs.push(given[g].clone());
            l1_of.push(opt.group_l1(g).unwrap());
            for &key in &run.poison_state {
                opt.set_state(key, name, &vec![f32::NAN; *len]).unwrap();
            }
        }
        let state_dtype = run.precision.state;
        let cpu = init
            .iter()
            .zip(&configs)
            .enumerate()
            .map(|(t, (v, c))| {
                let pieces: Vec<usize> = params
                    .pieces(&run.tensors[t].0)
                    .unwrap()
                    .iter()
                    .map(|p| p.len)
                    .collect();
                let mut state = State::new(c, v.len()).with_layout(&run.shape_of(t), &pieces);
                for k in state.keys() {
                    let b = state.get_mut(k).unwrap();
                    b.mapv_inplace(|x| state_dtype.round(x));
                }
                (Array1::from(v.clone()), state)
            })
            .collect();
        let master = init
            .iter()
            .enumerate()
            .map(|(t, v)| {
                (run.precision.master_weights && run.dtype_of(t).is_half())
                    .then(|| Array1::from(v.clone()))
            })
            .collect();
        let positions = run
            .tensors
            .iter()
            .map(|(name, _)| {
                params
                    .pieces(name)
                    .unwrap()
                    .iter()
                    .flat_map(|p| (p.offset..p.offset + p.len).map(|e| e as u32))
                    .collect()
            })
            .collect();
        let quantized = vec![Vec::new(); run.tensors.len()];
        Harness {
            quantized,
            midpoint_codes: std::cell::Cell::new(0),
            master,
            positions,
            run,
            params,
            opt,
            scaler,
            scaler_state,
            configs,
            l1_of,
            cpu,
            init,
            rng,
            bound,
            step: 0,
            outcome: Outcome::default(),
        }
    }

    fn name(&self) -> &str {
        &self.run.name
    }

    /// One step on both sides with fresh random gradients (and the planted value, in a bad
    /// step), with the per-step checks: the norm against an f64 norm, skipped steps changing
    /// nothing, the step count.
    pub fn step(&mut self) {
        let s = self.step;
        let scale = self.run.grad_scales[s % self.run.grad_scales.len()];
        let mut grads: Vec<Vec<f32>> = self
            .run
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let d = self.run.dtype_of(i);
                randn(&mut self.rng, t.1, scale)
                    .into_iter()
                    .map(|x| d.round(x))
                    .collect()
            })
            .collect();
        let bad: Vec<BadStep> = self
            .run
            .bad
            .iter()
            .filter(|b| b.step == s)
            .copied()
            .collect();
        for b in &bad {
            let t = self
                .run
                .tensors
                .iter()
                .position(|t| t.0 == b.tensor)
                .unwrap();
            grads[t][b.index] = b.value;
        }
        for (t, g) in self.run.tensors.iter().zip(&grads) {
            self.params.write_grad(&t.0, g).unwrap();
        }
        let before = (!bad.is_empty()).then(|| snapshot(&self.params, &self.opt));
        self.opt.step(&mut self.params).unwrap();
        self.step += 1;
        let name = self.name().to_string();
        if let Some(before) = before {
            assert!(
                self.opt.last_step_skipped().unwrap(),
                "{name}: step {s} with {:?} must be skipped",
                bad[0]
            );
            assert_eq!(
                snapshot(&self.params, &self.opt),
                before,
                "{name}: a skipped step changed something"
            );
            assert!(!self.opt.last_grad_norm().unwrap().is_finite());
        } else {
            let mut coef = 1.0;
            // The GPU multiplies each gradient once, by `(1 / scale) * coef` in f32.
            let inv_scale = self.scaler_state.as_ref().map_or(1.0, |s| 1.0 / s.scale);
            if self.run.clip.is_some() || self.run.skip_nonfinite || self.scaler.is_some() {
                assert!(!self.opt.last_step_skipped().unwrap(), "{name}: step {s}");
                let gpu_norm = self.opt.last_grad_norm().unwrap();
                let norm = self.opt.grad_norm_type();
                let arrays: Vec<Array1<f32>> =
                    grads.iter().map(|g| Array1::from(g.clone())).collect();
                let refs: Vec<&Array1<f32>> = arrays.iter().collect();
                let want = reference::grad_norm(&refs, norm, inv_scale).unwrap();
                let tol = if norm == NormType::Inf { 0.0 } else { 1e-5 };
                assert!(
                    ((gpu_norm as f64 - want) / want).abs() <= tol,
                    "{name}: step {s} norm {gpu_norm} vs {want}"
                );
                if let Some((max_norm, _)) = self.run.clip {
                    coef = reference::clip_coef(gpu_norm, max_norm);
                    self.outcome.clipped += (coef < 1.0) as usize;
                }
            }
            let mul = inv_scale * coef;
            let key = wgpu_optim::dtype::step_key(ROUNDING_SEED, s as u64);
            for (i, g) in grads.iter().enumerate() {
                let mut g = Array1::from(g.iter().map(|x| x * mul).collect::<Vec<f32>>());
                let (p, state) = &mut self.cpu[i];
                if self.l1_of[i] != 0.0 {
                    let sign_of = self.master[i].as_ref().unwrap_or(&*p);
                    let maximize = self.configs[i].maximize();
                    g = reference::l1_grad(sign_of, &g, self.l1_of[i], maximize);
                }
                let stored = Stored {
                    param: self.run.dtype_of(i),
                    state: self.run.precision.state,
                    master: self.master[i].is_some(),
                    stochastic: self.run.precision.stochastic_rounding,
                };
                reference::stored_step(
                    self.run.reference,
                    &self.configs[i],
                    stored,
                    key,
                    &self.positions[i],
                    p,
                    self.master[i].as_mut(),
                    &g,
                    state,
                );
                if self.run.format.quantizes(p.len()) {
                    self.quantized[i] = reference::requantize(&self.configs[i], state)
                        .expect("a configuration with 8-bit state");
                }
            }
            self.outcome.applied += 1;
        }
        if let (Some(state), Some(config)) = (&mut self.scaler_state, &self.run.scaler) {
            state.update(!bad.is_empty(), config);
        }
        assert_eq!(
            self.opt.step_count(),
            self.outcome.applied as u64,
            "{name}: skipped steps must not advance the step count"
        );
    }

    /// Take the run's remaining steps, [`Harness::check`], and return the counts.
    pub fn finish(mut self) -> Outcome {
        while self.step < self.run.steps {
            self.step();
        }
        self.check();
        self.outcome
    }

    /// Compare params and every state buffer with the reference, and check that (nearly)
    /// every expected value moved away from its start (see [`Run`]).
    pub fn check(&self) {
        let name = self.name();
        let keys = self.opt.state_keys();
        let (mut unmoved, mut total) = (0usize, 0usize);
        for (i, (t, _)) in self.run.tensors.iter().enumerate() {
            let (p, state) = &self.cpu[i];
            let want = p.as_slice().unwrap();
            let got = self.params.read(t).unwrap();
            compare(&format!("{name} {t} param"), &got, want, self.bound);
            if let Some(m) = &self.master[i] {
                let got = self.opt.state(wgpu_optim::optim::MASTER, t).unwrap();
                compare(
                    &format!("{name} {t} master"),
                    &got,
                    m.as_slice().unwrap(),
                    self.bound,
                );
            }
            // A 16-bit parameter without a master copy may rightly stay where it started: an
            // update below half its spacing rounds away (the known stall of bf16 training).
            if !self.run.dtype_of(i).is_half() || self.master[i].is_some() {
                let start = &self.init[i];
                let moved_from = self.master[i]
                    .as_ref()
                    .map_or(want, |m| m.as_slice().unwrap());
                unmoved += moved_from
                    .iter()
                    .zip(start)
                    .filter(|(a, b)| a.to_bits() == b.to_bits())
                    .count();
                total += want.len();
            }
            let tensor_keys = self.opt.state_keys_of(t).unwrap();
            if C::FACTORED {
                // A factored second moment keeps row_var and col_var, or variance.
                assert!(tensor_keys.iter().all(|k| keys.contains(k)), "{name}");
            } else {
                assert_eq!(tensor_keys, keys, "{name}: state keys of {t}");
            }
            assert_eq!(tensor_keys, state.keys(), "{name}: state keys of {t}");
            for k in &tensor_keys {
                if self.run.format.quantizes(want.len()) {
                    let got = self
                        .opt
                        .quantized_state(k, t)
                        .unwrap()
                        .expect("8-bit state");
                    let what = format!("{name} {t} {k}");
                    let (_, q, before) = match self.quantized[i].iter().find(|q| q.0 == *k) {
                        Some(q) => q,
                        None => continue,
                    };
                    compare(
                        &format!("{what} absmax"),
                        &got.absmax,
                        &q.absmax,
                        self.bound,
                    );
                    let n = compare_codes(&what, &got.codes, q, before);
                    self.midpoint_codes.set(self.midpoint_codes.get() + n);
                    assert_eq!(
                        self.opt.state(k, t).unwrap(),
                        got.values().unwrap(),
                        "{what} values"
                    );
                    let start = q.map.iter().position(|&v| v == 0.0).unwrap() as u8;
                    unmoved += q.codes.iter().filter(|&&c| c == start).count();
                    total += q.codes.len();
                    continue;
                }
                let want = state.get(k).unwrap().as_slice().unwrap();
                let got = self.opt.state(k, t).unwrap();
                compare(&format!("{name} {t} {k}"), &got, want, self.bound);
                if self.run.poison_state.contains(k) {
                    // Started as NaN: an unwritten element already fails the comparison,
                    // and a value that legitimately ends at its start (Rprop's `prev` is 0
                    // after a sign change) is no weakness.
                    continue;
                }
                let start = self
                    .run
                    .precision
                    .state
                    .round(self.configs[i].state_init(k))
                    .to_bits();
                unmoved += want.iter().filter(|a| a.to_bits() == start).count();
                total += want.len();
            }
        }
        if let (Some(scaler), Some(state)) = (&self.scaler, &self.scaler_state) {
            let got = (scaler.scale().unwrap(), scaler.growth_tracker().unwrap());
            assert_eq!(
                got,
                (state.scale, state.growth_tracker),
                "{name}: grad scaler"
            );
        }
        if self.outcome.applied > 0 {
            assert!(
                unmoved * 1000 <= total,
                "{name}: {unmoved} of {total} expected values never moved: too weak a test \
                 to see unwritten elements"
            );
        }
    }
}

/// Compare the GPU's codes of one 8-bit state with the reference's (`want`, made from the f32
/// values `before`): equal, except that a code may differ by one where the value, scaled by
/// 1 / absmax, sits within f32 rounding of the midpoint between the two codes (the midpoint and
/// the scaling are computed in f32 on both sides, and a driver's division may round
/// differently). Returns how many codes differed that way; panics on any other difference.
pub fn compare_codes(
    what: &str,
    got: &[u8],
    want: &wgpu_optim::QuantizedState,
    before: &[f32],
) -> usize {
    assert_eq!(got.len(), want.codes.len(), "{what}: codes length");
    let mut midpoint = 0;
    for (i, (&a, &b)) in got.iter().zip(&want.codes).enumerate() {
        if a == b {
            continue;
        }
        let absmax = want.absmax[i / wgpu_optim::blockwise::BLOCK];
        let x = before[i] / absmax;
        let m = (want.map[a as usize] + want.map[b as usize]) / 2.0;
        assert!(
            a.abs_diff(b) == 1 && (x - m).abs() <= 4.0 * f32::EPSILON * m.abs().max(1e-30),
            "{what}: code {i} is {a}, the reference has {b} (value {} / absmax {absmax})",
            before[i]
        );
        midpoint += 1;
    }
    midpoint
}
