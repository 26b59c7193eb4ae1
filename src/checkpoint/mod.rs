//! Checkpoints: save and resume parameters and optimizer state exactly, as a `.safetensors`
//! file that PyTorch can use (see `tools/torch_checkpoint.py`), with checksums over every byte.
//!
//! ```no_run
//! use wgpu_optim::checkpoint::{self, SaveOptions};
//! use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params};
//! let gpu = Gpu::new()?;
//! let mut params = Params::new(&gpu, &[("fc.weight", &[0.5f32; 12][..]), ("fc.bias", &[0.0; 3])])?;
//! let mut opt = Adam::new(&params, AdamConfig::adamw())?;
//! params.write_grad("fc.weight", &[0.1; 12])?;
//! opt.step(&mut params)?;
//! checkpoint::save("run.safetensors", &params, &opt, SaveOptions::default())?;
//!
//! // Later, or in another process: the same tensors and options, then resume.
//! let mut params2 = Params::new(&gpu, &[("fc.weight", &[0.0f32; 12][..]), ("fc.bias", &[0.0; 3])])?;
//! let mut opt2 = Adam::new(&params2, AdamConfig::adamw())?;
//! let report = checkpoint::load("run.safetensors", &mut params2, &mut opt2)?;
//! assert!(report.verified);
//! assert_eq!(opt2.step_count(), 1);
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! Both take any optimizer as `&dyn Optimizer` / `&mut dyn Optimizer` (`&opt` for an
//! [`crate::Adam`], `&*boxed` / `&mut *boxed` for a `Box<dyn Optimizer>`), and a program that did not write a file can see what it holds
//! ([`open`], [`Checkpoint::optimizer_kind`]) and build the right optimizer for it
//! ([`Checkpoint::build_optimizer`]).
//!
//! # File format
//!
//! A standard safetensors file (8-byte little-endian header length, JSON header padded with
//! spaces to a multiple of 8 bytes, then the data), readable by any safetensors reader. Every
//! tensor is little-endian and keeps its storage dtype and shape: parameters in `F32`, `BF16` or
//! `F16` as the arena holds them, optimizer state in the optimizer's state dtype
//! ([`crate::Precision::state`], `F32` or `BF16`), master copies and step counts in `F32`. Tensor
//! names follow PyTorch's `state_dict`:
//!
//! | tensor | shape | what |
//! | --- | --- | --- |
//! | `param.<name>` | the tensor's shape | the parameter (any shape with its number of elements is accepted on load; the dtype must be the arena's) |
//! | `state.<name>.<key>` | the tensor's shape | optimizer state by PyTorch's key: `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `momentum_buffer`, `square_avg`, `grad_avg`, `sum`, ... |
//! | `state.<name>.<key>.codes` | `[len]`, `U8` | with 8-bit state ([`crate::StateFormat::Blockwise8`]), for a tensor of at least `min_size` elements in place of `state.<name>.<key>`: one code per element (bitsandbytes' `state1`/`state2`) |
//! | `state.<name>.<key>.absmax` | `[ceil(len / 256)]` | its absmax per block of 256 elements (bitsandbytes' `absmax1`/`absmax2`) |
//! | `state.<name>.<key>.qmap` | `[256]` | its map, one of bitsandbytes' two dynamic maps (`qmap1`/`qmap2`); loading sets it ([`crate::FusedOptimizer::set_quant_map`]) |
//! | `state.<name>.master` | the tensor's shape | with master weights, the f32 master copy of a 16-bit parameter ([`crate::optim::MASTER`]) |
//! | `state.<name>.step` | `[]` | the step count as an f32 scalar, as PyTorch keeps it (exact to 2^24; optional on load, checked against the metadata when present) |
//! | `__checksum__` | `[4]`, `U8` | version 2: the CRC-32 (little-endian) of the 8 length bytes and the header, padding included; always the last 4 bytes of the file |
//!
//! The header's `__metadata__` (string to string, JSON where the value is structured), one
//! serde type for writing and reading (`meta.rs`):
//!
//! | key | value |
//! | --- | --- |
//! | `format` | `wgpu-optim-checkpoint` |
//! | `format_version` | `2` (version `1` files, without checksums, still load) |
//! | `optimizer` | [`OptimizerConfig::NAME`]: `Adam` (AdamW is Adam with `decoupled_weight_decay` 1), `SGD`, `RMSprop`, `Adagrad`, `Lion`, `Adadelta`, `Rprop`, `ASGD`, `Adamax`, `RAdam`, `NAdam` |
//! | `step` | steps applied (skipped steps not counted), a decimal integer: the exact count |
//! | `tensors` | JSON list of the tensor names, in the parameter set's order (PyTorch's param ids 0..n) |
//! | `param_groups` | JSON list, one object per group: `params` (its tensor names) and every hyperparameter of [`OptimizerConfig::hyperparameters`] (booleans as 0/1, Adam's betas as `betas[0]`, `betas[1]`) |
//! | `max_grad_norm` | JSON number or `null` |
//! | `grad_norm_type` | `1`, `2` or `inf` |
//! | `skip_nonfinite` | `true` or `false` |
//! | `grad_scaler` | `null`, or JSON `{"scale", "growth_tracker", "init_scale", "growth_factor", "backoff_factor", "growth_interval"}` |
//! | `precision` | optional, written unless the state is f32 with neither master weights nor stochastic rounding: JSON `{"state", "master_weights", "stochastic_rounding", "rounding_seed", "rounding_counter"}`, the counter being the steps submitted (skipped ones included) that the rounding noise is drawn with |
//! | `state_format` | optional, with 8-bit state: JSON `{"kind": "blockwise8", "min_size": 4096}`; the optimizer loading it must have the same format ([`crate::FusedOptimizer::set_state_format`] first) |
//! | `l1` | optional, written when a group's L1 coefficient is not 0: JSON list, one number per group ([`crate::FusedOptimizer::set_l1`]) |
//! | `lr_schedulers` | optional ([`SaveOptions::schedulers`]): JSON list of [`SchedulerState`] / [`PlateauState`] objects, told apart by `kind` |
//! | `tensor_crc32` | version 2: the CRC-32 of every other tensor's bytes, in data order, 8 lowercase hex digits each, concatenated |
//! | `written_by` | `wgpu-optim <version>` (informational) |
//!
//! # Integrity
//!
//! Every byte of a version 2 file is covered by a CRC-32 (`crc32fast`; Python's `zlib.crc32`
//! computes the same): the header by the trailing `__checksum__`, each tensor by its entry in
//! `tensor_crc32`. CRC-32 detects every error of up to 32 consecutive bits, so any single bit
//! flip anywhere in the file is an [`Error::CheckpointChecksum`] (or, where it breaks the
//! framing first, an [`Error::CheckpointFormat`]); it guards against damage, not against a
//! deliberate forgery. The header is checked when the file is opened, the data before anything
//! is written to the GPU. [`LoadReport::verified`] and [`Checkpoint::verified`] are `false` for
//! version 1 files, which have no checksums and load as before.
//!
//! # Saving
//!
//! [`save`] writes to a temporary file in the destination's directory, syncs it and renames it
//! over the destination, so a crash leaves either the old checkpoint or the new one, never a
//! half-written file. It streams: tensors are read back from the GPU in batches of at most
//! [`BLOCK_BYTES`] (16 MiB), many small tensors per staging buffer and map, so the extra host
//! memory is one block (plus a 1 MiB write buffer and the header) whatever the size of the
//! state, and the cost does not grow with the number of tensors: `tests/checkpoint_memory.rs`
//! measures the heap, `cargo run --release --example checkpoint_bench` the time.
//!
//! # In memory
//!
//! [`save_to_bytes_async`] (and [`save_to_bytes`], blocking) give the same file as bytes, and
//! [`load_from_bytes`] / [`Checkpoint::from_bytes`] read them with every check below: what a web
//! page uses, where there is no filesystem (the path-taking functions exist on native targets
//! only). The bytes are the whole checkpoint in host memory, not a stream.
//!
//! # Loading
//!
//! [`load`] (or [`open`] then [`Checkpoint::restore`]) validates everything before it changes
//! anything: the header (sizes, offsets, dtypes, checksum), the optimizer kind, tensor names and
//! lengths, the groups and their tensors, every hyperparameter (PyTorch's rules), the boolean
//! options (they select the compiled kernel and must match the optimizer's), the clipping
//! settings, the loss scaler and the step count (at most
//! [`MAX_STEP_COUNT`](crate::optim::MAX_STEP_COUNT)), and then, in one pass over the data,
//! every tensor's checksum and that every value is finite. Only then are parameters, state, hyperparameters, clipping
//! settings, scaler and step count overwritten. Any problem is a typed [`Error`]
//! ([`Error::CheckpointFormat`], [`Error::CheckpointChecksum`], [`Error::CheckpointMismatch`],
//! [`Error::CheckpointNonFinite`], [`Error::Io`], [`Error::InvalidHyperparameter`], ...) and
//! leaves parameters and optimizer untouched. A damaged or truncated file never panics.
//! [`Checkpoint::check`] runs all of these checks without changing anything.
//!
//! Loading streams too: the data is read twice, block by block (the validation pass, then the
//! upload: each block into one staging buffer and copied from there to every tensor in it), so
//! the extra host memory is the header plus one block. The upload pass checks that each
//! tensor's bytes have the CRC of the validation pass; the file is held open, so a checkpoint
//! replaced by a later [`save`] (a rename) in between is not seen on Unix (on Windows that
//! rename fails while the file is open), but a file modified in place by another program during
//! the load is reported as an [`Error::CheckpointFormat`] after part of it was uploaded.
//!
//! Like `torch.optim.Optimizer.load_state_dict`, loading replaces every hyperparameter of every
//! group (lr included) with the checkpoint's, and also restores max_grad_norm, the norm type,
//! skip_nonfinite, every group's L1 coefficient and the rounding (stochastic or not, its seed and
//! counter). The state dtype and
//! master weights decide what buffers the optimizer has, so they must already be the file's
//! ([`Checkpoint::precision`]; [`Checkpoint::build_optimizer`] sets them), as must each tensor's
//! dtype ([`Checkpoint::params`] builds tensors of the saved dtypes and shapes).
//!
//! Resuming is exact, on every storage path: N steps, save, load into a fresh parameter set and
//! optimizer, M steps gives the same bits as N + M steps without the interruption.

mod io;
mod meta;
mod open;
mod restore;
mod save;
mod upload;

pub use open::{Checkpoint, LoadReport, OptimizerKind};

use crate::error::{Error, Result};
use crate::optim::Optimizer;
#[cfg(doc)]
use crate::optim::OptimizerConfig;
use crate::params::Params;
use crate::scaler::{GradScaler, ScalerConfig};
use crate::schedule::{PlateauState, SchedulerState};
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;

/// The `format` metadata value of every checkpoint.
///
/// ```
/// assert_eq!(wgpu_optim::checkpoint::FORMAT, "wgpu-optim-checkpoint");
/// ```
pub const FORMAT: &str = "wgpu-optim-checkpoint";
/// The `format_version` this crate writes (it reads 1 and 2).
///
/// ```
/// assert_eq!(wgpu_optim::checkpoint::FORMAT_VERSION, 2);
/// ```
pub const FORMAT_VERSION: u32 = 2;
/// Tensors move between GPU, host and file in blocks of at most this many bytes (16 MiB):
/// the host memory saving or loading needs, whatever the size of the state.
///
/// ```
/// assert_eq!(wgpu_optim::checkpoint::BLOCK_BYTES, 16 << 20);
/// ```
pub const BLOCK_BYTES: usize = 16 << 20;
/// The name of the tensor holding the header's CRC-32 in a version 2 file.
///
/// ```
/// assert_eq!(wgpu_optim::checkpoint::CHECKSUM_TENSOR, "__checksum__");
/// ```
pub const CHECKSUM_TENSOR: &str = "__checksum__";

/// Suffixes of the three tensors of one 8-bit state (`state.<name>.<key>.codes` (U8, one per
/// element), `.absmax` (F32, one per block of 256) and `.qmap` (F32, 256)), the names
/// bitsandbytes' `state1`/`absmax1`/`qmap1` take in a checkpoint.
pub(crate) const CODES: &str = "codes";
pub(crate) const ABSMAX: &str = "absmax";
pub(crate) const QMAP: &str = "qmap";

/// `(tensor, key, part)` of `state.<tensor>.<key>.<part>`, an 8-bit state's codes, absmax or
/// map (no optimizer names a state `codes`, `absmax` or `qmap`).
pub(crate) fn quant_part(name: &str) -> Option<(&str, &str, &str)> {
    let (rest, part) = name.strip_prefix("state.")?.rsplit_once('.')?;
    if ![CODES, ABSMAX, QMAP].contains(&part) {
        return None;
    }
    let (t, key) = rest.rsplit_once('.')?;
    Some((t, key, part))
}
/// Largest header accepted on load (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

fn format_err(msg: impl Into<String>) -> Error {
    Error::CheckpointFormat(msg.into())
}

fn mismatch(what: impl Into<String>, expected: impl ToString, got: impl ToString) -> Error {
    Error::CheckpointMismatch {
        what: what.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// Checkpoint name of a parameter tensor.
fn param_key(name: &str) -> String {
    format!("param.{name}")
}

/// Checkpoint name of a state tensor (`key` may be `step`).
fn state_key(name: &str, key: &str) -> String {
    format!("state.{name}.{key}")
}

/// What [`save`] writes besides parameters, optimizer state and settings. Built with
/// [`SaveOptions::default`] and its setters; more options may join them without breaking
/// callers.
///
/// ```no_run
/// use wgpu_optim::checkpoint::{self, SaveOptions};
/// use wgpu_optim::{Adam, AdamConfig, GradScaler, Gpu, Params, ScalerConfig};
/// let gpu = Gpu::new()?;
/// let params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])])?;
/// let opt = Adam::new(&params, AdamConfig::default())?;
/// let scaler = GradScaler::new(&gpu, ScalerConfig::default())?;
/// checkpoint::save("amp.safetensors", &params, &opt, SaveOptions::default().scaler(&scaler))?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveOptions<'a> {
    scaler: Option<&'a GradScaler>,
    schedulers: &'a [SchedulerRecord],
}

impl<'a> SaveOptions<'a> {
    /// Save the state of `scaler` (whether or not it is attached to the optimizer) in place of
    /// the attached one.
    ///
    /// ```no_run
    /// # let gpu = wgpu_optim::Gpu::new()?;
    /// let scaler = wgpu_optim::GradScaler::new(&gpu, Default::default())?;
    /// let options = wgpu_optim::checkpoint::SaveOptions::default().scaler(&scaler);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn scaler(mut self, scaler: &'a GradScaler) -> Self {
        self.scaler = Some(scaler);
        self
    }

    /// Also save the states of learning-rate schedulers (metadata entry `lr_schedulers`), so
    /// that one file resumes the whole run. [`load`] ignores them; read them back with
    /// [`Checkpoint::schedulers`] and hand each to its scheduler's `load_state`.
    ///
    /// ```no_run
    /// use wgpu_optim::checkpoint::{self, Checkpoint, SaveOptions, SchedulerRecord};
    /// use wgpu_optim::{
    ///     CosineAnnealingLR, Gpu, LrScheduler, Optimizer, Params, Scheduler, Sgd, SgdConfig,
    /// };
    ///
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::zeros(&gpu, &[("w", 10)])?;
    /// let config = SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() };
    /// let mut opt = Sgd::new(&params, config.clone())?;
    /// let mut sched = Scheduler::new(&mut opt, CosineAnnealingLR::new(100))?;
    /// for _ in 0..10 {
    ///     params.write_grad("w", &[0.1; 10])?;
    ///     opt.step(&mut params)?;
    ///     sched.step(&mut opt)?;
    /// }
    /// let records = [sched.state().into()];
    /// checkpoint::save("run.safetensors", &params, &opt, SaveOptions::default().schedulers(&records))?;
    ///
    /// // Resume: optimizer, then the scheduler built as before, then its state.
    /// let ck = Checkpoint::open("run.safetensors")?;
    /// let mut params = ck.params(&gpu)?;
    /// let mut opt = Sgd::new(&params, config)?;
    /// ck.restore(&mut params, &mut opt)?;
    /// let mut sched = Scheduler::new(&mut opt, CosineAnnealingLR::new(100))?;
    /// if let [SchedulerRecord::Epochs(state)] = ck.schedulers() {
    ///     sched.load_state(&mut opt, state)?;
    /// }
    /// assert_eq!(sched.last_epoch(), 10);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn schedulers(mut self, schedulers: &'a [SchedulerRecord]) -> Self {
        self.schedulers = schedulers;
        self
    }
}

/// Save parameters, optimizer state, every group's hyperparameters, the clipping settings and
/// the loss scaler (the attached one, or [`SaveOptions::scaler`]) to `path`, atomically, with
/// checksums (see the module documentation). `opt` is any optimizer: `&opt`, or `&*boxed` for a
/// `Box<dyn Optimizer>`.
///
/// ```no_run
/// use wgpu_optim::checkpoint::{self, SaveOptions};
/// use wgpu_optim::{Gpu, Optimizer, Params, Sgd, SgdConfig};
/// let gpu = Gpu::new()?;
/// let mut params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])])?;
/// let mut opt: Box<dyn Optimizer> =
///     Box::new(Sgd::new(&params, SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })?);
/// params.write_grad("w", &[0.5; 4])?;
/// opt.step(&mut params)?;
/// checkpoint::save("sgd.safetensors", &params, &*opt, SaveOptions::default())?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn save(
    path: impl AsRef<Path>,
    params: &Params,
    opt: &dyn Optimizer,
    options: SaveOptions<'_>,
) -> Result<()> {
    save::save_impl(path.as_ref(), params, opt, &options)
}

/// Open a checkpoint and check its header ([`Checkpoint::open`]).
///
/// ```no_run
/// let ck = wgpu_optim::checkpoint::open("run.safetensors")?;
/// println!("{:?}", ck.optimizer_kind());
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
    Checkpoint::open(path)
}

/// Restore parameters, optimizer state, hyperparameters, clipping settings, the attached loss
/// scaler's state and the step count from `path`. Everything is validated first: on `Err`
/// nothing was changed (see the module documentation). The report says whether the file's
/// checksums were verified (`false` only for old files that have none).
///
/// `params` and `opt` must have the checkpoint's tensors (names and lengths, in any order), its
/// groups (the same tensors in each) and its boolean options (amsgrad, nesterov, centered,
/// maximize, momentum on/off, ...); a checkpoint with a loss scaler needs one attached with the
/// same options, and one without needs none.
///
/// ```no_run
/// use wgpu_optim::{checkpoint, Error, Gpu, Optimizer, Params, RmsProp, RmsPropConfig};
/// let gpu = Gpu::new()?;
/// let mut params = Params::zeros(&gpu, &[("w", 4)])?;
/// let mut opt = RmsProp::new(&params, RmsPropConfig::default())?;
/// match checkpoint::load("rmsprop.safetensors", &mut params, &mut opt) {
///     Ok(_) => println!("resumed at step {}", opt.step_count()),
///     Err(Error::Io { kind: std::io::ErrorKind::NotFound, .. }) => println!("fresh start"),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn load(
    path: impl AsRef<Path>,
    params: &mut Params,
    opt: &mut dyn Optimizer,
) -> Result<LoadReport> {
    Checkpoint::open(path)?.restore(params, opt)
}

/// [`load`], restoring the loss scaler state into `scaler` (whether or not it is attached to
/// `opt`) in place of the attached one.
///
/// ```no_run
/// use wgpu_optim::{checkpoint, Adam, AdamConfig, GradScaler, Gpu, Params, ScalerConfig};
/// let gpu = Gpu::new()?;
/// let mut params = Params::zeros(&gpu, &[("w", 4)])?;
/// let mut opt = Adam::new(&params, AdamConfig::default())?;
/// let scaler = GradScaler::new(&gpu, ScalerConfig::default())?;
/// checkpoint::load_with_scaler("amp.safetensors", &mut params, &mut opt, &scaler)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn load_with_scaler(
    path: impl AsRef<Path>,
    params: &mut Params,
    opt: &mut dyn Optimizer,
    scaler: &GradScaler,
) -> Result<LoadReport> {
    Checkpoint::open(path)?.restore_with_scaler(params, opt, scaler)
}

/// The checkpoint [`save`] would write, as bytes in memory, on every target: what a web page
/// keeps (IndexedDB, a download) where there is no filesystem. The tensors are read back from
/// the GPU in blocks of at most [`BLOCK_BYTES`] (the result holds them all).
///
/// ```no_run
/// # async fn f(params: &wgpu_optim::Params, opt: &dyn wgpu_optim::Optimizer) -> wgpu_optim::Result<()> {
/// use wgpu_optim::checkpoint::{self, SaveOptions};
/// let bytes = checkpoint::save_to_bytes_async(params, opt, SaveOptions::default()).await?;
/// # Ok(()) }
/// ```
pub async fn save_to_bytes_async(
    params: &Params,
    opt: &dyn Optimizer,
    options: SaveOptions<'_>,
) -> Result<Vec<u8>> {
    save::save_to_bytes_impl(params, opt, &options).await
}

/// [`save_to_bytes_async`], blocking (native targets; in a browser an [`Error::WouldBlock`]).
///
/// ```no_run
/// use wgpu_optim::checkpoint::{self, SaveOptions};
/// use wgpu_optim::{Gpu, Params, Sgd, SgdConfig};
/// let gpu = Gpu::new()?;
/// let mut params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])])?;
/// let mut opt = Sgd::new(&params, SgdConfig::default())?;
/// let bytes = checkpoint::save_to_bytes(&params, &opt, SaveOptions::default())?;
/// checkpoint::load_from_bytes(&bytes, &mut params, &mut opt)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn save_to_bytes(
    params: &Params,
    opt: &dyn Optimizer,
    options: SaveOptions<'_>,
) -> Result<Vec<u8>> {
    crate::gpu::block_on(
        "checkpoint::save_to_bytes",
        "checkpoint::save_to_bytes_async",
        save_to_bytes_async(params, opt, options),
    )
}

/// [`load`] from bytes in memory ([`Checkpoint::from_bytes`] then [`Checkpoint::restore`]), on
/// every target, with the same checks: on `Err` nothing was changed. It needs no read-back, so
/// it is synchronous in a browser too (the uploads are queued; natively it waits for each
/// block's upload so that staging memory stays one block).
pub fn load_from_bytes(
    bytes: &[u8],
    params: &mut Params,
    opt: &mut dyn Optimizer,
) -> Result<LoadReport> {
    Checkpoint::from_bytes(bytes)?.restore(params, opt)
}

/// A learning-rate scheduler's state as a checkpoint records it ([`SaveOptions::schedulers`],
/// [`Checkpoint::schedulers`]).
///
/// ```
/// use wgpu_optim::checkpoint::SchedulerRecord;
/// fn epochs_state(r: &SchedulerRecord) -> Option<&wgpu_optim::SchedulerState> {
///     match r {
///         SchedulerRecord::Epochs(s) => Some(s),
///         SchedulerRecord::Plateau(_) => None,
///     }
/// }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum SchedulerRecord {
    /// A [`crate::Scheduler`]'s state.
    Epochs(SchedulerState),
    /// A [`crate::PlateauScheduler`]'s state.
    Plateau(PlateauState),
}

impl From<SchedulerState> for SchedulerRecord {
    fn from(s: SchedulerState) -> Self {
        SchedulerRecord::Epochs(s)
    }
}

impl From<PlateauState> for SchedulerRecord {
    fn from(s: PlateauState) -> Self {
        SchedulerRecord::Plateau(s)
    }
}

impl SchedulerRecord {
    /// A record from the JSON a checkpoint holds: a [`PlateauState`] when its `kind` is
    /// `ReduceLROnPlateau`, a [`SchedulerState`] otherwise.
    ///
    /// ```
    /// use wgpu_optim::checkpoint::SchedulerRecord;
    /// let v = serde_json::json!({"kind": "ReduceLROnPlateau"});
    /// assert!(SchedulerRecord::from_json(v).is_err()); // fields missing
    /// ```
    pub fn from_json(v: serde_json::Value) -> std::result::Result<Self, serde_json::Error> {
        Ok(if v["kind"] == "ReduceLROnPlateau" {
            SchedulerRecord::Plateau(serde_json::from_value(v)?)
        } else {
            SchedulerRecord::Epochs(serde_json::from_value(v)?)
        })
    }

    /// The JSON a checkpoint holds for this record.
    ///
    /// ```
    /// # use wgpu_optim::checkpoint::SchedulerRecord;
    /// # fn f(r: &SchedulerRecord) -> wgpu_optim::Result<()> {
    /// let v = r.to_json()?;
    /// assert_eq!(&SchedulerRecord::from_json(v).unwrap(), r);
    /// # Ok(()) }
    /// ```
    pub fn to_json(&self) -> Result<serde_json::Value> {
        match self {
            SchedulerRecord::Epochs(s) => serde_json::to_value(s),
            SchedulerRecord::Plateau(s) => serde_json::to_value(s),
        }
        .map_err(|e| format_err(format!("serializing a scheduler state: {e}")))
    }
}

/// One parameter group as a checkpoint records it ([`Checkpoint::groups`]).
///
/// ```no_run
/// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
/// let lr = ck.groups()[0].get("lr");
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GroupRecord {
    /// Its tensors.
    pub tensors: Vec<String>,
    /// Its hyperparameters by name, as [`OptimizerConfig::hyperparameters`] gives them (sorted
    /// by name).
    pub hyperparameters: Vec<(String, f64)>,
}

impl GroupRecord {
    /// One hyperparameter by name.
    ///
    /// ```
    /// use wgpu_optim::checkpoint::GroupRecord;
    /// let g = GroupRecord { tensors: vec![], hyperparameters: vec![("lr".into(), 0.1)] };
    /// assert_eq!((g.get("lr"), g.get("eps")), (Some(0.1), None));
    /// ```
    pub fn get(&self, name: &str) -> Option<f64> {
        self.hyperparameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

/// A loss scaler's state as a checkpoint records it ([`Checkpoint::grad_scaler`]).
///
/// ```no_run
/// use wgpu_optim::{checkpoint::Checkpoint, GradScaler, Gpu};
/// let gpu = Gpu::new()?;
/// let ck = Checkpoint::open("amp.safetensors")?;
/// if let Some(rec) = ck.grad_scaler() {
///     let scaler = GradScaler::new(&gpu, rec.config.clone())?;
///     scaler.set_state(rec.scale, rec.growth_tracker)?;
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerRecord {
    /// The current scale.
    pub scale: f32,
    /// Clean steps since the last growth or backoff.
    pub growth_tracker: u32,
    /// The scaler's options.
    pub config: ScalerConfig,
}
