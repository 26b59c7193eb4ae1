//! The crate's one error type.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `wgpu-optim`.
///
/// Every variant but [`Error::DeviceLost`] and [`Error::Gpu`] is raised *before* any GPU work is
/// recorded, so such an `Err` never leaves parameters or optimizer state half-updated.
///
/// `Debug` prints the same readable message as `Display`, so `fn main() -> Result<(), Error>`
/// shows it (with the install hint of [`Error::NoAdapter`]).
#[derive(Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// No GPU adapter could be found.
    #[error(
        "no GPU adapter found ({0}). Install a Vulkan driver: on Debian/Ubuntu `apt-get install -y mesa-vulkan-drivers` \
         (CPU lavapipe), on Windows/macOS a DX12/Metal capable GPU driver; WGPU_BACKEND and WGPU_ADAPTER_NAME select one"
    )]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not create a device on adapter {adapter}: {reason}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// What wgpu said.
        reason: String,
    },
    /// A hyperparameter is out of its valid range.
    #[error("invalid {name} = {}: {rule}", shortest(*value))]
    InvalidHyperparameter {
        /// PyTorch's name of the option, e.g. `lr` or `betas[0]`.
        name: &'static str,
        /// The rejected value.
        value: f64,
        /// The rule it broke.
        rule: &'static str,
    },
    /// An invalid combination of options (e.g. nesterov without momentum).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A tensor name that the parameter set does not contain.
    #[error("unknown tensor `{0}`")]
    UnknownTensor(String),
    /// A state key the optimizer does not keep (with the keys it does keep).
    #[error("unknown state `{key}` for {optimizer}; it keeps {known:?}")]
    UnknownState {
        /// The requested key.
        key: String,
        /// Optimizer name.
        optimizer: &'static str,
        /// The keys that exist for this configuration.
        known: Vec<&'static str>,
    },
    /// A tensor shape no arena can hold: more elements than fit an address.
    #[error("invalid shape of tensor `{name}` {shape:?}: {reason}")]
    InvalidShape {
        /// The tensor.
        name: String,
        /// The shape given.
        shape: Vec<usize>,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A tensor's dtype cannot be used this way.
    #[error("tensor `{name}` is {dtype}: {reason}")]
    DTypeMismatch {
        /// The tensor.
        name: String,
        /// Its storage dtype.
        dtype: crate::DType,
        /// What cannot be done.
        reason: String,
    },

    /// A tensor name used twice.
    #[error("duplicate tensor name `{0}`")]
    DuplicateName(String),
    /// An empty tensor name, an empty tensor, or an empty parameter list.
    #[error("empty input: {0}")]
    Empty(String),
    /// Data of the wrong length for a tensor.
    #[error("tensor `{name}` has {}, got {got}", elements(*expected))]
    LengthMismatch {
        /// Tensor name.
        name: String,
        /// Its length.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A tensor split across arena chunks cannot be bound as one buffer range
    /// ([`crate::Params::binding`] / [`crate::Params::grad_binding`]).
    ///
    /// A tensor larger than the device's storage-binding limit
    /// ([`crate::Gpu::max_binding_bytes`]: 128 MiB on lavapipe, often 2-4 GiB on GPUs) is split
    /// across chunks; steps, reads, writes, clipping and checkpoints work on it as on any
    /// other, but your own kernels must bind its pieces ([`crate::Params::pieces`]). [`crate::Gpu::new`]
    /// asks for the adapter's own limits, so the limit is the adapter's real one; with
    /// [`crate::Gpu::from_device`], request `adapter.limits()` when you create the device.
    #[error("tensor `{0}` spans several arena chunks and cannot be bound as one buffer range")]
    SplitTensor(String),
    /// The parameter set is not the one this optimizer was built for, or lives on another device.
    #[error("parameters mismatch: {0}")]
    ParamsMismatch(String),
    /// A user's buffer lacks a usage flag the optimizer needs.
    #[error("wrong buffer usage: {0}")]
    BufferUsage(String),
    /// A user's buffer is too small for its tensor.
    #[error("wrong buffer size: {0}")]
    BufferSize(String),
    /// Parameter groups that do not partition the tensors, or an unknown group index.
    #[error("invalid parameter groups: {0}")]
    InvalidGroups(String),
    /// The request does not fit the device's limits.
    #[error("device limit exceeded: {0}")]
    DeviceLimit(String),
    /// Reading data back from the GPU failed.
    #[error("GPU read-back failed: {0}")]
    ReadBack(String),
    /// A call that waits for the GPU was made where nothing may block: in a browser
    /// (wasm32), where the page's thread must return to the event loop for the GPU to answer.
    /// Use the named `_async` form instead.
    #[error("`{call}` waits for the GPU, which a browser does not allow: use `{instead}`")]
    WouldBlock {
        /// The blocking call.
        call: &'static str,
        /// Its async form.
        instead: &'static str,
    },
    /// The device was lost (destroyed, reset or removed): every later call on it fails with
    /// this error. Build a new [`crate::Gpu`] and restore from a checkpoint.
    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),
    /// wgpu rejected a call inside this crate (a validation or out-of-memory error caught by an
    /// error scope instead of reaching wgpu's default handler, which panics).
    #[error("wgpu error: {0}")]
    Gpu(String),
    /// A learning-rate scheduler option is out of its valid range. Raised before the scheduler
    /// touches the optimizer.
    #[error("invalid scheduler option {name} = {}: {rule}", shortest(*value))]
    InvalidScheduler {
        /// PyTorch's name of the option, e.g. `step_size` or `T_max`.
        name: &'static str,
        /// The rejected value (a count or length for list options).
        value: f64,
        /// The rule it broke.
        rule: &'static str,
    },
    /// A scheduler was stepped past the end of its schedule (PyTorch's OneCycleLR raises the
    /// same way). The optimizer and the scheduler are left as they were.
    #[error("tried to step {scheduler} to step {step}; the schedule has {total_steps} steps")]
    ScheduleExhausted {
        /// The scheduler's name.
        scheduler: &'static str,
        /// The step that was asked for.
        step: i64,
        /// The schedule's `total_steps`.
        total_steps: u64,
    },
    /// A scheduler that cycles momentum (`cycle_momentum`) was given an optimizer group whose
    /// momentum cannot be cycled: it has none (Adagrad) or it is switched off (SGD built with
    /// `momentum = 0`, whose kernel keeps no momentum buffer).
    #[error(
        "{scheduler} cycles momentum but {optimizer} group {group} has none to cycle ({reason}); \
         set cycle_momentum to false"
    )]
    NoMomentum {
        /// The scheduler's name.
        scheduler: &'static str,
        /// The optimizer's name.
        optimizer: &'static str,
        /// The group index.
        group: usize,
        /// What the optimizer said.
        reason: String,
    },
    /// A saved scheduler state ([`crate::schedule::SchedulerState`],
    /// [`crate::schedule::PlateauState`]) that does not fit the scheduler it is loaded into
    /// (another kind, other groups, another chain of schedulers) or holds an impossible value.
    /// Raised before anything is changed.
    #[error("scheduler state does not fit: {what}: expected {expected}, the state has {got}")]
    SchedulerState {
        /// What differs, e.g. `kind` or `schedulers[1].last_lr[0]`.
        what: String,
        /// What the scheduler being loaded into has or accepts.
        expected: String,
        /// What the state has.
        got: String,
    },
    /// Writing a plot failed.
    #[error("plot failed: {0}")]
    Plot(String),
    /// A hyperparameter name the optimizer does not have (e.g. in a checkpoint).
    #[error("unknown hyperparameter `{name}` for {optimizer}")]
    UnknownHyperparameter {
        /// The name given.
        name: String,
        /// Optimizer name.
        optimizer: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("could not {op} `{path}`: {message}")]
    Io {
        /// What was being done: `open`, `read`, `write`, `rename`, ...
        op: &'static str,
        /// The file.
        path: String,
        /// The kind of I/O error.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
    /// A file that is not a valid checkpoint: not safetensors, truncated, a damaged header, a
    /// missing or malformed metadata entry, a tensor that is not F32.
    #[error("not a valid wgpu-optim checkpoint: {0}")]
    CheckpointFormat(String),
    /// A valid checkpoint that does not fit these parameters or this optimizer (another
    /// algorithm, other tensors or lengths, other groups, other boolean options, ...).
    #[error("checkpoint does not match: {what}: expected {expected}, the checkpoint has {got}")]
    CheckpointMismatch {
        /// What differs, e.g. `optimizer` or `length of fc.weight`.
        what: String,
        /// What the parameters / optimizer being loaded into have.
        expected: String,
        /// What the checkpoint has.
        got: String,
    },
    /// A damaged checkpoint: the CRC-32 of its header or of one of its tensors is not the one
    /// the file records (a bit flipped on disk or in transfer, a file edited by hand).
    #[error(
        "checkpoint is damaged: the CRC-32 of {what} is {got:08x}, the file records {expected:08x}"
    )]
    CheckpointChecksum {
        /// `header`, or the checkpoint's tensor name, e.g. `state.fc.weight.exp_avg`.
        what: String,
        /// What the file records.
        expected: u32,
        /// What its bytes give.
        got: u32,
    },
    /// The ranks of a distributed optimizer (`wgpu_optim::distributed`, feature `mpi`) disagree:
    /// other tensors or lengths, another optimizer, other options, or a call that not every
    /// rank made the same way. Raised on every rank before anything is changed.
    #[error("ranks disagree: rank {rank} has other {what} than rank 0")]
    RankMismatch {
        /// What differs, e.g. `tensors and lengths` or `optimizer settings`.
        what: String,
        /// The first rank that differs from rank 0.
        rank: usize,
    },
    /// Another rank of a distributed optimizer failed; that rank raises its own error, every
    /// other rank this one, so that none waits forever for it. A failure found before any work
    /// (bad input on that rank) changes nothing; a GPU failure in the middle of a distributed
    /// step is reported at the end of that step, and parameters may then differ between ranks.
    #[error("rank {rank} failed: {reason}")]
    RankFailed {
        /// The first rank that failed.
        rank: usize,
        /// Its error message.
        reason: String,
    },
    /// A checkpoint tensor holding an inf or NaN.
    #[error("checkpoint tensor `{tensor}` has the non-finite value {value} at element {index}")]
    CheckpointNonFinite {
        /// The checkpoint's tensor name, e.g. `state.fc.weight.exp_avg`.
        tensor: String,
        /// The first non-finite element.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// A Burn parameter or gradient that cannot be stepped here: on another backend or
    /// device, not set up with `wgpu_optim::burn::init`, or not a plain float tensor.
    #[error("Burn tensor `{param}`: {reason}")]
    BurnTensor {
        /// The parameter's module path, e.g. `fc1.weight`.
        param: String,
        /// Why it cannot be stepped.
        reason: String,
    },
    /// A Burn parameter whose element type the kernels do not step (they step f32).
    #[error(
        "Burn parameter `{param}` is {dtype}; only f32 parameters and gradients can be stepped"
    )]
    BurnDtype {
        /// The parameter's module path.
        param: String,
        /// Its element type, as Burn names it.
        dtype: String,
    },
    /// The model's parameters are not the ones of the first step (the optimizer's state is
    /// laid out for those).
    #[error("the model's parameters changed since the optimizer's first step: {0}")]
    ParamSetChanged(String),
    /// A Burn optimizer record that cannot be loaded: not a burnpack file, or state that does
    /// not fit the model's parameters or this optimizer.
    #[error("cannot load the Burn optimizer record {0}")]
    BurnRecord(String),
    /// Setting up Burn's wgpu device failed.
    #[error("Burn device setup failed: {0}")]
    BurnDevice(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// A value for an error message: the shortest decimal of the f32 it was given as (`-0.001`, not
/// `-0.0010000000474974513`) when it is one, else the f64.
fn shortest(v: f64) -> String {
    let f = v as f32;
    if f as f64 == v || v.is_nan() {
        f.to_string()
    } else {
        v.to_string()
    }
}

/// "1 element", "3 elements".
fn elements(n: usize) -> String {
    if n == 1 {
        "1 element".into()
    } else {
        format!("{n} elements")
    }
}

impl Error {
    /// An [`Error::Io`] from a `std::io::Error`.
    pub(crate) fn io(op: &'static str, path: &std::path::Path, e: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.display().to_string(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Check that a hyperparameter is finite and satisfies `ok`.
pub(crate) fn check(name: &'static str, value: f64, ok: bool, rule: &'static str) -> Result<()> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::InvalidHyperparameter { name, value, rule })
    }
}
