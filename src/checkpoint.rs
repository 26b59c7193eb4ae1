//! Checkpoints: save and resume parameters and optimizer state exactly, as a `.safetensors`
//! file that PyTorch can use (see `tools/torch_checkpoint.py`).
//!
//! ```no_run
//! use wgpu_optim::{checkpoint, Adam, AdamConfig, Gpu, Optimizer, Params};
//! let gpu = Gpu::new()?;
//! let mut params = Params::new(&gpu, &[("fc.weight", &[0.5f32; 12][..]), ("fc.bias", &[0.0; 3])])?;
//! let mut opt = Adam::new(&params, AdamConfig::adamw())?;
//! params.write_grad("fc.weight", &[0.1; 12])?;
//! opt.step(&mut params)?;
//! checkpoint::save("run.safetensors", &params, &opt)?;
//!
//! // Later, or in another process: the same tensors and options, then resume.
//! let mut params2 = Params::new(&gpu, &[("fc.weight", &[0.0f32; 12][..]), ("fc.bias", &[0.0; 3])])?;
//! let mut opt2 = Adam::new(&params2, AdamConfig::adamw())?;
//! checkpoint::load("run.safetensors", &mut params2, &mut opt2)?;
//! assert_eq!(opt2.step_count(), 1);
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! # File format
//!
//! A standard safetensors file (8-byte little-endian header length, JSON header padded with
//! spaces to a multiple of 8 bytes, then the data), readable by any safetensors reader. Every
//! tensor is `F32`, little-endian. Tensor names follow PyTorch's `state_dict`:
//!
//! | tensor | shape | what |
//! | --- | --- | --- |
//! | `param.<name>` | `[len]` | the parameter (any shape with `len` elements is accepted on load) |
//! | `state.<name>.<key>` | `[len]` | optimizer state by PyTorch's key: `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `momentum_buffer`, `square_avg`, `grad_avg`, `sum` |
//! | `state.<name>.step` | `[]` | the step count as an f32 scalar, as PyTorch keeps it (exact to 2^24; optional on load, checked against the metadata when present) |
//!
//! The header's `__metadata__` (string to string, JSON where the value is structured):
//!
//! | key | value |
//! | --- | --- |
//! | `format` | `wgpu-optim-checkpoint` |
//! | `format_version` | `1` |
//! | `optimizer` | [`OptimizerConfig::NAME`]: `Adam` (AdamW is Adam with `decoupled_weight_decay` 1), `SGD`, `RMSprop`, `Adagrad` |
//! | `step` | steps applied (skipped steps not counted), a decimal integer: the exact count |
//! | `tensors` | JSON list of the tensor names, in the parameter set's order (PyTorch's param ids 0..n) |
//! | `param_groups` | JSON list, one object per group: `params` (its tensor names) and every hyperparameter of [`OptimizerConfig::hyperparameters`] (booleans as 0/1, Adam's betas as `betas[0]`, `betas[1]`) |
//! | `max_grad_norm` | JSON number or `null` |
//! | `grad_norm_type` | `1`, `2` or `inf` |
//! | `skip_nonfinite` | `true` or `false` |
//! | `grad_scaler` | `null`, or JSON `{"scale", "growth_tracker", "init_scale", "growth_factor", "backoff_factor", "growth_interval"}` |
//! | `lr_schedulers` | optional ([`save_with_schedulers`]): JSON list of [`SchedulerState`] / [`PlateauState`] objects, told apart by `kind` |
//! | `written_by` | `wgpu-optim <version>` (informational) |
//!
//! # Saving
//!
//! [`save`] writes to a temporary file in the destination's directory, syncs it and renames it
//! over the destination, so a crash leaves either the old checkpoint or the new one, never a
//! half-written file. It streams: each tensor is read back from the GPU and written in blocks of
//! at most [`BLOCK_BYTES`] (16 MiB), so the extra host memory is one block (plus wgpu's staging
//! buffer of the same size and a 1 MiB write buffer), whatever the size of the state:
//! `tests/checkpoint_memory.rs` measures 17 MiB of heap growth to save a 72 MiB state and
//! 16 MiB to load it.
//!
//! # Loading
//!
//! [`load`] (or [`Checkpoint::open`] then [`Checkpoint::restore`]) validates everything before
//! it changes anything: the header (sizes, offsets, dtypes), the optimizer kind, tensor names and
//! lengths, the groups and their tensors, every hyperparameter (PyTorch's rules), the boolean
//! options (they select the compiled kernel and must match the optimizer's), the clipping
//! settings and the loss scaler, and that every value is finite. Only then are parameters, state,
//! hyperparameters, clipping settings, scaler and step count overwritten. Any problem is a typed
//! [`Error`] ([`Error::CheckpointFormat`], [`Error::CheckpointMismatch`],
//! [`Error::CheckpointNonFinite`], [`Error::Io`], [`Error::InvalidHyperparameter`], ...) and
//! leaves parameters and optimizer untouched. A damaged or truncated file never panics.
//!
//! Loading streams too: the file is read twice, block by block (a validation pass, then the
//! upload), so the extra host memory is the header plus one block. The upload pass checks
//! that each tensor's bytes hash as in the validation pass; the file is held open, so a
//! checkpoint replaced by a later [`save`] (a rename) in between is not seen on Unix (on
//! Windows that rename fails while the file is open), but a file modified in place by another
//! program during the load is reported as an [`Error::CheckpointFormat`] after part of it was
//! uploaded.
//!
//! Like `torch.optim.Optimizer.load_state_dict`, loading replaces every hyperparameter of every
//! group (lr included) with the checkpoint's, and also restores max_grad_norm, the norm type and
//! skip_nonfinite. Resuming is exact: N steps, save, load into a fresh parameter set and
//! optimizer, M steps gives the same bits as N + M steps without the interruption.

use crate::arena::Slot;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::norm::NormType;
use crate::optim::{Optim, Optimizer, OptimizerConfig, ParamGroup};
use crate::params::Params;
use crate::scaler::{GradScaler, ScalerConfig};
use crate::schedule::{PlateauState, SchedulerState};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The `format` metadata value of every checkpoint.
///
/// ```
/// assert_eq!(wgpu_optim::checkpoint::FORMAT, "wgpu-optim-checkpoint");
/// ```
pub const FORMAT: &str = "wgpu-optim-checkpoint";
/// The `format_version` this crate writes and reads.
///
/// ```
/// assert_eq!(wgpu_optim::checkpoint::FORMAT_VERSION, 1);
/// ```
pub const FORMAT_VERSION: u32 = 1;
/// Tensors move between GPU, host and file in blocks of at most this many bytes (16 MiB):
/// the host memory saving or loading needs, whatever the size of the state.
///
/// ```
/// assert_eq!(wgpu_optim::checkpoint::BLOCK_BYTES, 16 << 20);
/// ```
pub const BLOCK_BYTES: usize = 16 << 20;
const BLOCK_ELEMS: usize = BLOCK_BYTES / 4;
/// Largest header accepted on load (the safetensors crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Metadata keys (see the module documentation).
const K_FORMAT: &str = "format";
const K_VERSION: &str = "format_version";
const K_OPTIMIZER: &str = "optimizer";
const K_STEP: &str = "step";
const K_TENSORS: &str = "tensors";
const K_GROUPS: &str = "param_groups";
const K_MAX_NORM: &str = "max_grad_norm";
const K_NORM_TYPE: &str = "grad_norm_type";
const K_SKIP: &str = "skip_nonfinite";
const K_SCALER: &str = "grad_scaler";
const K_WRITTEN_BY: &str = "written_by";
const K_SCHEDULERS: &str = "lr_schedulers";

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

// ------------------------------------------------------------------------------------------
// Saving
// ------------------------------------------------------------------------------------------

/// Save parameters, optimizer state, every group's hyperparameters, the clipping settings and
/// the attached loss scaler (if any) to `path`, atomically (see the module documentation).
///
/// ```no_run
/// use wgpu_optim::{checkpoint, Gpu, Optimizer, Params, Sgd, SgdConfig};
/// let gpu = Gpu::new()?;
/// let mut params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])])?;
/// let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })?;
/// params.write_grad("w", &[0.5; 4])?;
/// opt.step(&mut params)?;
/// checkpoint::save("sgd.safetensors", &params, &opt)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn save<C: OptimizerConfig>(
    path: impl AsRef<Path>,
    params: &Params,
    opt: &Optim<C>,
) -> Result<()> {
    save_impl(path.as_ref(), params, opt, opt.grad_scaler(), &[])
}

/// [`save`] with the state of `scaler` (whether or not it is attached to `opt`) in place of the
/// attached one.
///
/// ```no_run
/// use wgpu_optim::{checkpoint, Adam, AdamConfig, GradScaler, Gpu, Params, ScalerConfig};
/// let gpu = Gpu::new()?;
/// let params = Params::new(&gpu, &[("w", &[1.0f32; 4][..])])?;
/// let opt = Adam::new(&params, AdamConfig::default())?;
/// let scaler = GradScaler::new(&gpu, ScalerConfig::default())?;
/// checkpoint::save_with_scaler("amp.safetensors", &params, &opt, &scaler)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn save_with_scaler<C: OptimizerConfig>(
    path: impl AsRef<Path>,
    params: &Params,
    opt: &Optim<C>,
    scaler: &GradScaler,
) -> Result<()> {
    save_impl(path.as_ref(), params, opt, Some(scaler), &[])
}

/// A learning-rate scheduler's state as a checkpoint records it ([`save_with_schedulers`],
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

/// [`save`], plus the states of learning-rate schedulers (in the metadata entry
/// `lr_schedulers`), so that one file resumes the whole run. [`load`] ignores them; read them
/// back with [`Checkpoint::schedulers`] and hand each to its scheduler's `load_state`.
///
/// ```no_run
/// use wgpu_optim::checkpoint::{self, Checkpoint, SchedulerRecord};
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
/// checkpoint::save_with_schedulers("run.safetensors", &params, &opt, &[sched.state().into()])?;
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
pub fn save_with_schedulers<C: OptimizerConfig>(
    path: impl AsRef<Path>,
    params: &Params,
    opt: &Optim<C>,
    schedulers: &[SchedulerRecord],
) -> Result<()> {
    save_impl(path.as_ref(), params, opt, opt.grad_scaler(), schedulers)
}

/// One tensor of a checkpoint being written.
enum Source<'a> {
    Param(&'a Slot),
    State(&'static str, &'a Slot),
    Step,
}

fn save_impl<C: OptimizerConfig>(
    path: &Path,
    params: &Params,
    opt: &Optim<C>,
    scaler: Option<&GradScaler>,
    schedulers: &[SchedulerRecord],
) -> Result<()> {
    opt.ensure_params(params)?;
    for g in 0..opt.group_count() {
        opt.group_config(g)?.validate()?;
    }
    let steps = opt.step_count();
    let layout = opt.layout();
    let keys = opt.state_keys();

    let mut plan: Vec<(String, Source<'_>)> = Vec::new();
    for slot in &layout.slots {
        plan.push((param_key(&slot.name), Source::Param(slot)));
    }
    for slot in &layout.slots {
        for &k in &keys {
            plan.push((state_key(&slot.name, k), Source::State(k, slot)));
        }
        plan.push((state_key(&slot.name, "step"), Source::Step));
    }
    let mut infos = Vec::with_capacity(plan.len());
    let mut offset = 0usize;
    for (name, src) in &plan {
        let (shape, len) = match src {
            Source::Param(s) | Source::State(_, s) => (vec![s.len], s.len),
            Source::Step => (vec![], 1),
        };
        infos.push((
            name.clone(),
            TensorInfo {
                dtype: Dtype::F32,
                shape,
                data_offsets: (offset, offset + len * 4),
            },
        ));
        offset += len * 4;
    }
    let metadata = Metadata::new(Some(save_metadata(opt, steps, scaler, schedulers)?), infos)
        .map_err(|e| format_err(format!("building the header: {e}")))?;
    let mut header = serde_json::to_vec(&metadata)
        .map_err(|e| format_err(format!("serializing the header: {e}")))?;
    // Pad so the data starts 8-byte aligned, as the safetensors crate does.
    header.resize(header.len().next_multiple_of(8), b' ');

    let gpu = opt.device();
    write_atomic(path, |w, at| {
        let io = |e| Error::io("write", at, e);
        w.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (_, src) in &plan {
            match src {
                Source::Param(slot) => stream_out(gpu, &params.param_bufs, slot, w, at)?,
                Source::State(k, slot) => stream_out(gpu, opt.state_chunks(k)?, slot, w, at)?,
                Source::Step => w.write_all(&(steps as f32).to_le_bytes()).map_err(io)?,
            }
        }
        Ok(())
    })
}

/// The `__metadata__` map of a checkpoint.
fn save_metadata<C: OptimizerConfig>(
    opt: &Optim<C>,
    steps: u64,
    scaler: Option<&GradScaler>,
    schedulers: &[SchedulerRecord],
) -> Result<HashMap<String, String>> {
    let tensors: Vec<&str> = opt.layout().slots.iter().map(|s| s.name.as_str()).collect();
    let mut groups = Vec::new();
    for g in 0..opt.group_count() {
        let mut obj = Map::new();
        obj.insert("params".into(), json!(opt.group_tensors(g)?));
        for (k, v) in opt.group_config(g)?.hyperparameters() {
            obj.insert(k.into(), json!(v));
        }
        groups.push(Value::Object(obj));
    }
    let scaler = match scaler {
        None => Value::Null,
        Some(s) => {
            let c = s.config();
            json!({
                "scale": s.scale()? as f64,
                "growth_tracker": s.growth_tracker()?,
                "init_scale": c.init_scale as f64,
                "growth_factor": c.growth_factor as f64,
                "backoff_factor": c.backoff_factor as f64,
                "growth_interval": c.growth_interval,
            })
        }
    };
    let norm_type = match opt.grad_norm_type() {
        NormType::L1 => "1",
        NormType::L2 => "2",
        NormType::Inf => "inf",
    };
    let entries = [
        (K_FORMAT, FORMAT.to_string()),
        (K_VERSION, FORMAT_VERSION.to_string()),
        (K_OPTIMIZER, C::NAME.to_string()),
        (K_STEP, steps.to_string()),
        (K_TENSORS, json!(tensors).to_string()),
        (K_GROUPS, Value::Array(groups).to_string()),
        (
            K_MAX_NORM,
            json!(opt.max_grad_norm().map(|m| m as f64)).to_string(),
        ),
        (K_NORM_TYPE, norm_type.to_string()),
        (K_SKIP, opt.skip_nonfinite().to_string()),
        (K_SCALER, scaler.to_string()),
        (
            K_WRITTEN_BY,
            format!("wgpu-optim {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    let mut map: HashMap<String, String> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if !schedulers.is_empty() {
        let states = schedulers
            .iter()
            .map(|r| match r {
                SchedulerRecord::Epochs(s) => serde_json::to_value(s),
                SchedulerRecord::Plateau(s) => serde_json::to_value(s),
            })
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| format_err(format!("serializing a scheduler state: {e}")))?;
        map.insert(K_SCHEDULERS.into(), Value::Array(states).to_string());
    }
    Ok(map)
}

/// Read one tensor back from per-chunk GPU buffers and write it, block by block.
fn stream_out(
    gpu: &Gpu,
    bufs: &[wgpu::Buffer],
    slot: &Slot,
    w: &mut impl Write,
    path: &Path,
) -> Result<()> {
    for p in &slot.pieces {
        let mut done = 0;
        while done < p.len {
            let n = (p.len - done).min(BLOCK_ELEMS);
            let offset = ((p.offset + done) * 4) as u64;
            let block = gpu.read_pieces(&[(&bufs[p.chunk], offset, (n * 4) as u64)])?;
            write_f32s(w, &block).map_err(|e| Error::io("write", path, e))?;
            done += n;
        }
    }
    Ok(())
}

fn write_f32s(w: &mut impl Write, data: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(data))
    } else {
        for chunk in data.chunks(1 << 14) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        }
        Ok(())
    }
}

/// Removes a temporary file unless disarmed (also when the writer panics).
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Write a file through `write` into a temporary file next to `path`, sync it, and rename it
/// over `path`. On any error (or panic) the temporary file is removed and `path` is untouched.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>, &Path) -> Result<()>,
) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path.file_name().ok_or_else(|| Error::Io {
        op: "save to",
        path: path.display().to_string(),
        kind: std::io::ErrorKind::InvalidInput,
        message: "not a file path".into(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, e))?;
    let mut guard = TempFile(Some(tmp.clone()));
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w, &tmp)?;
    let file = w
        .into_inner()
        .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| Error::io("rename a checkpoint onto", path, e))?;
    guard.0 = None;
    // Make the rename itself durable where a directory can be synced (best effort).
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Loading
// ------------------------------------------------------------------------------------------

/// Restore parameters, optimizer state, hyperparameters, clipping settings, the attached loss
/// scaler's state and the step count from `path`. Everything is validated first: on `Err`
/// nothing was changed (see the module documentation).
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
///     Ok(()) => println!("resumed at step {}", opt.step_count()),
///     Err(Error::Io { kind: std::io::ErrorKind::NotFound, .. }) => println!("fresh start"),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn load<C: OptimizerConfig>(
    path: impl AsRef<Path>,
    params: &mut Params,
    opt: &mut Optim<C>,
) -> Result<()> {
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
pub fn load_with_scaler<C: OptimizerConfig>(
    path: impl AsRef<Path>,
    params: &mut Params,
    opt: &mut Optim<C>,
    scaler: &GradScaler,
) -> Result<()> {
    Checkpoint::open(path)?.restore_with_scaler(params, opt, scaler)
}

/// One parameter group as a checkpoint records it ([`Checkpoint::groups`]).
///
/// ```no_run
/// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
/// let lr = ck.groups()[0].hyperparameters.iter().find(|(k, _)| k == "lr").map(|(_, v)| *v);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GroupRecord {
    /// Its tensors.
    pub tensors: Vec<String>,
    /// Its hyperparameters by name, as [`OptimizerConfig::hyperparameters`] gives them.
    pub hyperparameters: Vec<(String, f64)>,
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

/// An open checkpoint file whose header has been read and checked (its data has not been read
/// yet). Use it to see what a checkpoint holds, to build matching parameters and optimizer, and
/// to restore them.
///
/// ```no_run
/// use wgpu_optim::{checkpoint::Checkpoint, Adam, AdamConfig, Gpu, Optim};
/// let gpu = Gpu::new()?;
/// let ck = Checkpoint::open("run.safetensors")?;
/// println!("{} at step {}, {} tensors", ck.optimizer(), ck.step_count(), ck.tensors().len());
/// let mut params = ck.params(&gpu)?;                 // the saved parameter values
/// let mut opt: Adam = Optim::with_groups(&params, ck.param_groups::<AdamConfig>()?)?;
/// ck.restore(&mut params, &mut opt)?;               // state, step count, settings
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    file: Mutex<File>,
    data_start: u64,
    infos: HashMap<String, TensorInfo>,
    header: Header,
}

/// What the metadata says.
#[derive(Debug)]
struct Header {
    optimizer: String,
    step: u64,
    tensors: Vec<(String, usize)>,
    groups: Vec<GroupRecord>,
    max_grad_norm: Option<f32>,
    norm_type: NormType,
    skip_nonfinite: bool,
    scaler: Option<ScalerRecord>,
    schedulers: Vec<SchedulerRecord>,
}

/// Where a validated checkpoint tensor goes.
enum Target {
    Param(usize),
    State(&'static str, usize),
    Step,
}

fn elements(info: &TensorInfo) -> Option<usize> {
    info.shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b))
}

fn json_f32(v: &Value, what: &str) -> Result<f32> {
    let x = v
        .as_f64()
        .ok_or_else(|| format_err(format!("{what} is not a number: {v}")))?;
    let f = x as f32;
    if !f.is_finite() {
        return Err(format_err(format!("{what} = {x} is not a finite f32")));
    }
    Ok(f)
}

fn json_u32(v: &Value, what: &str) -> Result<u32> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| format_err(format!("{what} is not an integer in 0..2^32: {v}")))
}

impl Checkpoint {
    /// Open a checkpoint and check its header: the safetensors framing, offsets, dtypes (all
    /// F32), lengths, and the metadata's structure. Reads only the header.
    ///
    /// ```no_run
    /// use wgpu_optim::checkpoint::Checkpoint;
    /// let ck = Checkpoint::open("run.safetensors")?;
    /// for (name, len) in ck.tensors() {
    ///     println!("{name}: {len} elements");
    /// }
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        if file_len < 8 {
            return Err(format_err(format!(
                "the file has {file_len} bytes, fewer than a safetensors header length"
            )));
        }
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|e| Error::io("read", path, e))?;
        let n = u64::from_le_bytes(len_bytes);
        if n > MAX_HEADER_BYTES || n > file_len - 8 {
            return Err(format_err(format!(
                "header length {n} exceeds the file ({file_len} bytes) or the {MAX_HEADER_BYTES}-byte limit"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| Error::io("read", path, e))?;
        let meta: Metadata = serde_json::from_slice(&header)
            .map_err(|e| format_err(format!("bad safetensors header: {e}")))?;
        let data_len = meta.data_len() as u64;
        if 8 + n + data_len != file_len {
            return Err(format_err(format!(
                "the header describes {data_len} bytes of data, the file holds {} (truncated or padded?)",
                file_len - 8 - n
            )));
        }
        let infos: HashMap<String, TensorInfo> = meta
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        let md = meta
            .metadata()
            .as_ref()
            .ok_or_else(|| format_err("the header has no __metadata__"))?;
        let header = Header::parse(md, &infos)?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            data_start: 8 + n,
            infos,
            header,
        })
    }
}

impl Header {
    fn parse(md: &HashMap<String, String>, infos: &HashMap<String, TensorInfo>) -> Result<Header> {
        let get = |key: &str| -> Result<&str> {
            md.get(key)
                .map(|s| s.as_str())
                .ok_or_else(|| format_err(format!("the metadata lacks `{key}`")))
        };
        let get_json = |key: &str| -> Result<Value> {
            serde_json::from_str(get(key)?)
                .map_err(|e| format_err(format!("metadata `{key}` is not valid JSON: {e}")))
        };
        if get(K_FORMAT)? != FORMAT {
            return Err(format_err(format!(
                "metadata `{K_FORMAT}` is {:?}, not {FORMAT:?}",
                get(K_FORMAT)?
            )));
        }
        if get(K_VERSION)? != FORMAT_VERSION.to_string() {
            return Err(format_err(format!(
                "format version {:?} is not supported (this is version {FORMAT_VERSION})",
                get(K_VERSION)?
            )));
        }
        let optimizer = get(K_OPTIMIZER)?.to_string();
        let step_text = get(K_STEP)?;
        let step: u64 = step_text
            .parse()
            .map_err(|_| format_err(format!("step {step_text:?} is not an integer")))?;

        // Tensors: names in order, each with its parameter tensor; all F32.
        let names = get_json(K_TENSORS)?;
        let names = names
            .as_array()
            .ok_or_else(|| format_err("`tensors` is not a list"))?;
        if names.is_empty() {
            return Err(format_err("`tensors` is empty"));
        }
        let mut tensors = Vec::with_capacity(names.len());
        let mut index = HashMap::with_capacity(names.len());
        for v in names {
            let name = v
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format_err(format!("bad tensor name {v} in `tensors`")))?;
            let info = infos
                .get(&param_key(name))
                .ok_or_else(|| format_err(format!("tensor `{}` is missing", param_key(name))))?;
            let len = elements(info).filter(|&l| l > 0).ok_or_else(|| {
                format_err(format!("`{}` has shape {:?}", param_key(name), info.shape))
            })?;
            if index.insert(name.to_string(), tensors.len()).is_some() {
                return Err(format_err(format!("tensor `{name}` is listed twice")));
            }
            tensors.push((name.to_string(), len));
        }
        for (tname, info) in infos {
            if info.dtype != Dtype::F32 {
                return Err(mismatch(
                    format!("dtype of `{tname}`"),
                    "F32",
                    format!("{:?}", info.dtype),
                ));
            }
            let want = if let Some(name) = tname.strip_prefix("param.") {
                index.get(name).map(|&t| tensors[t].1)
            } else if let Some((name, key)) = tname
                .strip_prefix("state.")
                .and_then(|rest| rest.rsplit_once('.'))
            {
                index.get(name).filter(|_| !key.is_empty()).map(|&t| {
                    if key == "step" {
                        1
                    } else {
                        tensors[t].1
                    }
                })
            } else {
                None
            };
            let want = want.ok_or_else(|| {
                format_err(format!(
                    "tensor `{tname}` is neither param.<name> nor state.<name>.<key> of a listed tensor"
                ))
            })?;
            if elements(info) != Some(want) {
                return Err(format_err(format!(
                    "`{tname}` has shape {:?}, expected {want} elements",
                    info.shape
                )));
            }
        }

        // Groups: a partition of the tensors, each with its hyperparameters.
        let groups_json = get_json(K_GROUPS)?;
        let groups_json = groups_json
            .as_array()
            .filter(|g| !g.is_empty())
            .ok_or_else(|| format_err("`param_groups` is not a non-empty list"))?;
        let mut seen = HashSet::new();
        let mut groups = Vec::with_capacity(groups_json.len());
        for (g, obj) in groups_json.iter().enumerate() {
            let obj = obj
                .as_object()
                .ok_or_else(|| format_err(format!("group {g} is not an object")))?;
            let members = obj
                .get("params")
                .and_then(|p| p.as_array())
                .ok_or_else(|| format_err(format!("group {g} has no `params` list")))?;
            let mut group_tensors = Vec::with_capacity(members.len());
            for m in members {
                let name = m
                    .as_str()
                    .filter(|n| index.contains_key(*n))
                    .ok_or_else(|| {
                        format_err(format!("group {g} lists {m}, which is not in `tensors`"))
                    })?;
                if !seen.insert(name.to_string()) {
                    return Err(format_err(format!("tensor `{name}` is in two groups")));
                }
                group_tensors.push(name.to_string());
            }
            let mut hyperparameters = Vec::new();
            for (k, v) in obj.iter().filter(|(k, _)| k.as_str() != "params") {
                let x = match v {
                    Value::Bool(b) => *b as u8 as f64,
                    _ => v.as_f64().ok_or_else(|| {
                        format_err(format!("hyperparameter `{k}` of group {g} is {v}"))
                    })?,
                };
                hyperparameters.push((k.clone(), x));
            }
            groups.push(GroupRecord {
                tensors: group_tensors,
                hyperparameters,
            });
        }
        if seen.len() != tensors.len() {
            let lost = tensors.iter().find(|(n, _)| !seen.contains(n));
            return Err(format_err(format!(
                "tensor `{}` is in no group",
                lost.map(|t| t.0.as_str()).unwrap_or("?")
            )));
        }

        // Clipping, skipping, loss scaling.
        let max_grad_norm = match get_json(K_MAX_NORM)? {
            Value::Null => None,
            v => {
                let m = json_f32(&v, "max_grad_norm")?;
                if m <= 0.0 {
                    return Err(Error::InvalidHyperparameter {
                        name: "max_norm",
                        value: m as f64,
                        rule: "must be > 0",
                    });
                }
                Some(m)
            }
        };
        let norm_type = match get(K_NORM_TYPE)? {
            "1" | "1.0" => NormType::L1,
            "2" | "2.0" => NormType::L2,
            "inf" => NormType::Inf,
            other => return Err(format_err(format!("grad_norm_type {other:?}"))),
        };
        let skip_nonfinite = match get(K_SKIP)? {
            "true" => true,
            "false" => false,
            other => return Err(format_err(format!("skip_nonfinite {other:?}"))),
        };
        let scaler = match get_json(K_SCALER)? {
            Value::Null => None,
            v => {
                let f = |k: &str| json_f32(&v[k], &format!("grad_scaler.{k}"));
                let u = |k: &str| json_u32(&v[k], &format!("grad_scaler.{k}"));
                let record = ScalerRecord {
                    scale: f("scale")?,
                    growth_tracker: u("growth_tracker")?,
                    config: ScalerConfig {
                        init_scale: f("init_scale")?,
                        growth_factor: f("growth_factor")?,
                        backoff_factor: f("backoff_factor")?,
                        growth_interval: u("growth_interval")?,
                    },
                };
                if record.scale <= 0.0 {
                    return Err(Error::InvalidHyperparameter {
                        name: "scale",
                        value: record.scale as f64,
                        rule: "must be > 0",
                    });
                }
                Some(record)
            }
        };
        let schedulers = match md.get(K_SCHEDULERS) {
            None => Vec::new(),
            Some(_) => {
                let list = get_json(K_SCHEDULERS)?;
                let list = list
                    .as_array()
                    .ok_or_else(|| format_err(format!("`{K_SCHEDULERS}` is not a list")))?;
                let bad = |i: usize, e: serde_json::Error| {
                    format_err(format!(
                        "`{K_SCHEDULERS}`[{i}] is not a scheduler state: {e}"
                    ))
                };
                list.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Ok(if v["kind"] == "ReduceLROnPlateau" {
                            SchedulerRecord::Plateau(
                                serde_json::from_value(v.clone()).map_err(|e| bad(i, e))?,
                            )
                        } else {
                            SchedulerRecord::Epochs(
                                serde_json::from_value(v.clone()).map_err(|e| bad(i, e))?,
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(Header {
            schedulers,
            optimizer,
            step,
            tensors,
            groups,
            max_grad_norm,
            norm_type,
            skip_nonfinite,
            scaler,
        })
    }
}

impl Checkpoint {
    /// The optimizer's name ([`OptimizerConfig::NAME`]): `Adam`, `SGD`, `RMSprop`, `Adagrad`.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// if ck.optimizer() != "Adam" {
    ///     println!("not an Adam checkpoint");
    /// }
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn optimizer(&self) -> &str {
        &self.header.optimizer
    }

    /// Steps applied when the checkpoint was written.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// println!("saved at step {}", ck.step_count());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn step_count(&self) -> u64 {
        self.header.step
    }

    /// Tensor names and lengths, in the saved parameter set's order.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// let total: usize = ck.tensors().iter().map(|(_, len)| len).sum();
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn tensors(&self) -> &[(String, usize)] {
        &self.header.tensors
    }

    /// The parameter groups: their tensors and hyperparameters.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// for (g, group) in ck.groups().iter().enumerate() {
    ///     println!("group {g}: {:?} {:?}", group.tensors, group.hyperparameters);
    /// }
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn groups(&self) -> &[GroupRecord] {
        &self.header.groups
    }

    /// The saved gradient clipping threshold.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// if let Some(max) = ck.max_grad_norm() {
    ///     println!("clipped at {max} ({:?} norm)", ck.grad_norm_type());
    /// }
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn max_grad_norm(&self) -> Option<f32> {
        self.header.max_grad_norm
    }

    /// The saved norm type of clipping.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// assert_eq!(ck.grad_norm_type(), wgpu_optim::NormType::L2);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn grad_norm_type(&self) -> NormType {
        self.header.norm_type
    }

    /// Whether steps with non-finite gradients were skipped.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// println!("skip_nonfinite: {}", ck.skip_nonfinite());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn skip_nonfinite(&self) -> bool {
        self.header.skip_nonfinite
    }

    /// The saved loss scaler state, if one was saved.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// if let Some(s) = ck.grad_scaler() {
    ///     println!("scale {} after {} clean steps", s.scale, s.growth_tracker);
    /// }
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn grad_scaler(&self) -> Option<&ScalerRecord> {
        self.header.scaler.as_ref()
    }

    /// The learning-rate scheduler states saved with [`save_with_schedulers`], in the order
    /// given (empty for a checkpoint written by [`save`]). Their structure was checked when the
    /// checkpoint was opened; whether one fits a scheduler is checked by its `load_state`.
    ///
    /// ```no_run
    /// use wgpu_optim::checkpoint::{Checkpoint, SchedulerRecord};
    /// let ck = Checkpoint::open("run.safetensors")?;
    /// for r in ck.schedulers() {
    ///     match r {
    ///         SchedulerRecord::Epochs(s) => println!("{} at epoch {}", s.kind, s.last_epoch),
    ///         SchedulerRecord::Plateau(p) => println!("plateau, best {}", p.best),
    ///     }
    /// }
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn schedulers(&self) -> &[SchedulerRecord] {
        &self.header.schedulers
    }

    /// The configuration of every group, built from its saved hyperparameters and validated:
    /// what [`Optim::with_groups`] needs to build an optimizer this checkpoint restores into.
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint::Checkpoint, Gpu, Optim, Sgd, SgdConfig};
    /// let gpu = Gpu::new()?;
    /// let ck = Checkpoint::open("sgd.safetensors")?;
    /// let params = ck.params(&gpu)?;
    /// let opt: Sgd = Optim::with_groups(&params, ck.param_groups::<SgdConfig>()?)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn param_groups<C: OptimizerConfig + Default>(&self) -> Result<Vec<ParamGroup<C>>> {
        self.check_kind::<C>()?;
        self.header
            .groups
            .iter()
            .enumerate()
            .map(|(g, rec)| {
                let cfg = self.group_config(g, C::default())?;
                Ok(ParamGroup::new(rec.tensors.clone(), cfg))
            })
            .collect()
    }

    fn check_kind<C: OptimizerConfig>(&self) -> Result<()> {
        if self.header.optimizer != C::NAME {
            return Err(mismatch("optimizer", C::NAME, &self.header.optimizer));
        }
        Ok(())
    }

    /// Group `g`'s saved hyperparameters applied over `base`, all present, validated.
    fn group_config<C: OptimizerConfig>(&self, g: usize, mut base: C) -> Result<C> {
        let rec = &self.header.groups[g];
        for (name, _) in base.hyperparameters() {
            if !rec.hyperparameters.iter().any(|(k, _)| k == name) {
                return Err(format_err(format!(
                    "group {g} lacks the hyperparameter `{name}`"
                )));
            }
        }
        for (name, value) in &rec.hyperparameters {
            base.set_hyperparameter(name, *value)?;
        }
        base.validate()?;
        Ok(base)
    }

    /// Read one tensor of the file by its checkpoint name (`param.w`, `state.w.exp_avg`,
    /// `state.w.step`). Reads the whole tensor into memory.
    ///
    /// ```no_run
    /// use wgpu_optim::checkpoint::Checkpoint;
    /// let ck = Checkpoint::open("run.safetensors")?;
    /// let m = ck.read("state.fc.weight.exp_avg")?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn read(&self, tensor: &str) -> Result<Vec<f32>> {
        let info = self
            .infos
            .get(tensor)
            .ok_or_else(|| Error::UnknownTensor(tensor.to_string()))?;
        let len = (info.data_offsets.1 - info.data_offsets.0) / 4;
        let mut out = Vec::with_capacity(len);
        self.for_blocks(info, |block| {
            out.extend_from_slice(block);
            Ok(())
        })?;
        Ok(out)
    }

    /// A fresh parameter set on `gpu` holding the saved parameter values (gradients zero),
    /// uploaded block by block. Non-finite values are an [`Error::CheckpointNonFinite`].
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint::Checkpoint, Gpu};
    /// let gpu = Gpu::new()?;
    /// let params = Checkpoint::open("run.safetensors")?.params(&gpu)?;
    /// println!("{:?}", params.names());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn params(&self, gpu: &Gpu) -> Result<Params> {
        let specs: Vec<(&str, usize)> = self
            .header
            .tensors
            .iter()
            .map(|(n, l)| (n.as_str(), *l))
            .collect();
        let params = Params::zeros(gpu, &specs)?;
        for (t, (name, _)) in self.header.tensors.iter().enumerate() {
            let key = param_key(name);
            let slot = &params.layout.slots[t];
            self.upload(gpu, &key, &self.infos[&key], &params.param_bufs, slot, None)?;
        }
        Ok(params)
    }

    /// Restore `params` and `opt` (and the attached loss scaler) from this checkpoint; see
    /// [`load`].
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint::Checkpoint, Gpu, Params, Sgd, SgdConfig};
    /// let gpu = Gpu::new()?;
    /// let ck = Checkpoint::open("sgd.safetensors")?;
    /// let mut params = Params::zeros(&gpu, &[("w", 4)])?;
    /// let mut opt = Sgd::new(&params, SgdConfig { momentum: 0.9, ..Default::default() })?;
    /// ck.restore(&mut params, &mut opt)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn restore<C: OptimizerConfig>(
        &self,
        params: &mut Params,
        opt: &mut Optim<C>,
    ) -> Result<()> {
        let scaler = opt.grad_scaler().cloned();
        self.restore_impl(params, opt, scaler.as_ref())
    }

    /// Restore as [`Checkpoint::restore`], with the loss scaler state going to `scaler`; see
    /// [`load_with_scaler`].
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint::Checkpoint, Adam, AdamConfig, GradScaler, Gpu, Params};
    /// let gpu = Gpu::new()?;
    /// let ck = Checkpoint::open("amp.safetensors")?;
    /// let mut params = ck.params(&gpu)?;
    /// let mut opt = Adam::new(&params, AdamConfig::default())?;
    /// let scaler = GradScaler::new(&gpu, ck.grad_scaler().unwrap().config.clone())?;
    /// ck.restore_with_scaler(&mut params, &mut opt, &scaler)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn restore_with_scaler<C: OptimizerConfig>(
        &self,
        params: &mut Params,
        opt: &mut Optim<C>,
        scaler: &GradScaler,
    ) -> Result<()> {
        self.restore_impl(params, opt, Some(scaler))
    }

    fn restore_impl<C: OptimizerConfig>(
        &self,
        params: &mut Params,
        opt: &mut Optim<C>,
        scaler: Option<&GradScaler>,
    ) -> Result<()> {
        // ---- 1. Everything that needs no data.
        opt.ensure_params(params)?;
        self.check_kind::<C>()?;
        let layout = opt.layout();
        let mut ours: Vec<(&str, usize)> = layout
            .slots
            .iter()
            .map(|s| (s.name.as_str(), s.len))
            .collect();
        let mut theirs: Vec<(&str, usize)> = self
            .header
            .tensors
            .iter()
            .map(|(n, l)| (n.as_str(), *l))
            .collect();
        ours.sort();
        theirs.sort();
        if ours != theirs {
            let describe = |v: &[(&str, usize)]| {
                v.iter()
                    .map(|(n, l)| format!("{n}[{l}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (a, b): (Vec<_>, Vec<_>) = (
                ours.iter()
                    .filter(|t| !theirs.contains(t))
                    .copied()
                    .collect(),
                theirs
                    .iter()
                    .filter(|t| !ours.contains(t))
                    .copied()
                    .collect(),
            );
            return Err(mismatch("tensors", describe(&a), describe(&b)));
        }
        if self.header.groups.len() != opt.group_count() {
            return Err(mismatch(
                "number of groups",
                opt.group_count(),
                self.header.groups.len(),
            ));
        }
        let mut configs = Vec::with_capacity(self.header.groups.len());
        for (g, rec) in self.header.groups.iter().enumerate() {
            let mut want = opt.group_tensors(g)?;
            let mut got: Vec<&str> = rec.tensors.iter().map(|s| s.as_str()).collect();
            want.sort();
            got.sort();
            if want != got {
                return Err(mismatch(
                    format!("tensors of group {g}"),
                    want.join(", "),
                    got.join(", "),
                ));
            }
            let current = opt.group_config(g)?;
            let cfg = self.group_config(g, current.clone())?;
            if cfg.constants() != current.constants() || cfg.maximize() != current.maximize() {
                let flags = |c: &C| {
                    let mut f: Vec<String> = c
                        .constants()
                        .iter()
                        .map(|(k, v)| format!("{}={v}", k.to_lowercase()))
                        .collect();
                    f.push(format!("maximize={}", c.maximize() as u8));
                    f.join(" ")
                };
                return Err(mismatch(
                    format!("boolean options of group {g} (fixed when the optimizer is built)"),
                    flags(current),
                    flags(&cfg),
                ));
            }
            configs.push(cfg);
        }
        let keys = opt.state_keys();
        let mut plan: Vec<(String, Target)> = Vec::new();
        for (t, slot) in layout.slots.iter().enumerate() {
            plan.push((param_key(&slot.name), Target::Param(t)));
            let mut want: Vec<&str> = keys.clone();
            let mut got: Vec<&str> = self
                .infos
                .keys()
                .filter_map(|k| k.strip_prefix("state."))
                .filter_map(|rest| rest.rsplit_once('.'))
                .filter(|(n, key)| *n == slot.name && *key != "step")
                .map(|(_, key)| key)
                .collect();
            want.sort();
            got.sort();
            if want != got {
                return Err(mismatch(
                    format!("state of `{}`", slot.name),
                    want.join(", "),
                    got.join(", "),
                ));
            }
            for &k in &keys {
                plan.push((state_key(&slot.name, k), Target::State(k, t)));
            }
            let step = state_key(&slot.name, "step");
            if self.infos.contains_key(&step) {
                plan.push((step, Target::Step));
            }
        }
        match (scaler, &self.header.scaler) {
            (None, None) => {}
            (Some(_), None) => return Err(mismatch("grad scaler", "one", "none")),
            (None, Some(_)) => return Err(mismatch("grad scaler", "none", "one")),
            (Some(s), Some(rec)) => {
                if s.config() != &rec.config {
                    return Err(mismatch(
                        "grad scaler options",
                        format!("{:?}", s.config()),
                        format!("{:?}", rec.config),
                    ));
                }
            }
        }

        // ---- 2. The data: every value finite, the step tensors agree with the metadata.
        let mut hashes = Vec::with_capacity(plan.len());
        for (name, target) in &plan {
            let info = &self.infos[name];
            let mut h = Hasher::default();
            let mut at = 0usize;
            self.for_blocks(info, |block| {
                h.update(block);
                if let Target::Step = target {
                    if block[0] != self.header.step as f32 {
                        return Err(format_err(format!(
                            "`{name}` is {}, the metadata says step {}",
                            block[0], self.header.step
                        )));
                    }
                }
                if let Some(i) = block.iter().position(|x| !x.is_finite()) {
                    return Err(Error::CheckpointNonFinite {
                        tensor: name.clone(),
                        index: at + i,
                        value: block[i],
                    });
                }
                at += block.len();
                Ok(())
            })?;
            hashes.push(h.finish());
        }

        // ---- 3. Apply. Nothing below can fail on a valid file but I/O.
        let gpu = opt.device().clone();
        for (g, cfg) in configs.into_iter().enumerate() {
            opt.set_group_config(g, cfg)?;
        }
        if opt.max_grad_norm() != self.header.max_grad_norm {
            opt.set_max_grad_norm(self.header.max_grad_norm)?;
        }
        if opt.grad_norm_type() != self.header.norm_type {
            opt.set_grad_norm_type(self.header.norm_type)?;
        }
        if opt.skip_nonfinite() != self.header.skip_nonfinite {
            opt.set_skip_nonfinite(self.header.skip_nonfinite)?;
        }
        for ((name, target), hash) in plan.iter().zip(hashes) {
            let info = &self.infos[name];
            let layout = opt.layout();
            match *target {
                Target::Param(t) => self.upload(
                    &gpu,
                    name,
                    info,
                    &params.param_bufs,
                    &layout.slots[t],
                    Some(hash),
                )?,
                Target::State(k, t) => self.upload(
                    &gpu,
                    name,
                    info,
                    opt.state_chunks(k)?,
                    &layout.slots[t],
                    Some(hash),
                )?,
                Target::Step => {}
            }
        }
        if let (Some(s), Some(rec)) = (scaler, &self.header.scaler) {
            s.set_state(rec.scale, rec.growth_tracker)?;
        }
        opt.set_step_count(self.header.step);
        Ok(())
    }

    /// Call `f` on the tensor's data in blocks of at most [`BLOCK_BYTES`], in order.
    fn for_blocks(&self, info: &TensorInfo, mut f: impl FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let (start, end) = info.data_offsets;
        let total = (end - start) / 4;
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.seek(SeekFrom::Start(self.data_start + start as u64))
            .map_err(|e| Error::io("seek in", &self.path, e))?;
        let mut block = vec![0f32; total.min(BLOCK_ELEMS)];
        let mut done = 0;
        while done < total {
            let n = (total - done).min(BLOCK_ELEMS);
            let buf = &mut block[..n];
            file.read_exact(bytemuck::cast_slice_mut(buf))
                .map_err(|e| Error::io("read", &self.path, e))?;
            if cfg!(target_endian = "big") {
                for x in buf.iter_mut() {
                    *x = f32::from_bits(u32::from_le(x.to_bits()));
                }
            }
            f(buf)?;
            done += n;
        }
        Ok(())
    }

    /// Upload a tensor's data from the file into per-chunk buffers at `slot`'s pieces, one
    /// block at a time (each block submitted and waited for, so wgpu's staging memory stays
    /// one block). With `hash`, the data must hash as in the validation pass.
    fn upload(
        &self,
        gpu: &Gpu,
        name: &str,
        info: &TensorInfo,
        bufs: &[wgpu::Buffer],
        slot: &Slot,
        hash: Option<u64>,
    ) -> Result<()> {
        // Element `i` of the tensor lives in the piece covering it.
        let mut pieces = slot.pieces.iter().peekable();
        let mut piece_start = 0usize;
        let mut at = 0usize;
        let mut h = Hasher::default();
        self.for_blocks(info, |block| {
            h.update(block);
            if hash.is_none() {
                if let Some(i) = block.iter().position(|x| !x.is_finite()) {
                    return Err(Error::CheckpointNonFinite {
                        tensor: name.to_string(),
                        index: at + i,
                        value: block[i],
                    });
                }
            }
            let mut done = 0;
            while done < block.len() {
                let p = pieces
                    .peek()
                    .ok_or_else(|| format_err(format!("`{name}` is longer than its tensor")))?;
                let in_piece = at + done - piece_start;
                let n = (p.len - in_piece).min(block.len() - done);
                gpu.queue().write_buffer(
                    &bufs[p.chunk],
                    ((p.offset + in_piece) * 4) as u64,
                    bytemuck::cast_slice(&block[done..done + n]),
                );
                done += n;
                if in_piece + n == p.len {
                    piece_start += p.len;
                    pieces.next();
                }
            }
            at += block.len();
            gpu.queue()
                .submit(std::iter::empty::<wgpu::CommandBuffer>());
            gpu.device()
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::ReadBack(e.to_string()))?;
            Ok(())
        })?;
        if let Some(want) = hash {
            if h.finish() != want {
                return Err(format_err(format!(
                    "`{name}` changed while the checkpoint was being loaded (was the file modified in place?); \
                     parameters and state are partly overwritten"
                )));
            }
        }
        Ok(())
    }
}

/// A fast 64-bit hash of f32 data, to notice a file changing between the two load passes.
struct Hasher(u64);

impl Default for Hasher {
    fn default() -> Self {
        Hasher(0x9E37_79B9_7F4A_7C15)
    }
}

impl Hasher {
    fn update(&mut self, data: &[f32]) {
        for x in data {
            self.0 = (self.0 ^ x.to_bits() as u64)
                .wrapping_mul(0x0000_0100_0000_01B3)
                .rotate_left(29);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wgpu-optim-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_replaces_or_leaves_untouched() {
        let dir = temp_dir("atomic");
        let path = dir.join("ck.safetensors");
        write_atomic(&path, |w, _| {
            w.write_all(b"first").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        // A failing writer: the old file stays and no temporary file is left behind.
        let err = write_atomic(&path, |w, _| {
            w.write_all(b"half of the sec").unwrap();
            Err(format_err("simulated failure"))
        })
        .unwrap_err();
        assert!(matches!(err, Error::CheckpointFormat(_)));
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(entries(&dir), vec!["ck.safetensors"]);
        // A panicking writer: the same.
        let r = std::panic::catch_unwind(|| {
            let _ = write_atomic(&path, |w, _| {
                w.write_all(b"partial").unwrap();
                panic!("simulated crash")
            });
        });
        assert!(r.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(entries(&dir), vec!["ck.safetensors"]);
        write_atomic(&path, |w, _| {
            w.write_all(b"second").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(entries(&dir), vec!["ck.safetensors"]);
        // A missing directory is an I/O error naming the file.
        let err = write_atomic(&dir.join("no/such/dir/ck"), |_, _| Ok(())).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Io {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                }
            ),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hasher_sees_changes() {
        let mut a = Hasher::default();
        let mut b = Hasher::default();
        a.update(&[1.0, 2.0, 3.0]);
        b.update(&[1.0, 2.0]);
        b.update(&[3.0]);
        assert_eq!(a.finish(), b.finish());
        let mut c = Hasher::default();
        c.update(&[1.0, 3.0, 2.0]);
        assert_ne!(a.finish(), c.finish());
    }
}
