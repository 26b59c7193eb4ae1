//! Opening a checkpoint: [`Checkpoint::open`] reads and checks the header; what the
//! checkpoint holds can then be seen and read without an optimizer ([`Checkpoint::read`],
//! [`Checkpoint::param_groups`], [`Checkpoint::build_optimizer`]).

use super::io::{read_blocks, read_framing, widened, Source};
use super::meta::{storage_dtype, Header, Meta};
use super::{format_err, mismatch, GroupRecord, ScalerRecord, SchedulerRecord, CHECKSUM_TENSOR};
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::norm::NormType;
use crate::optim::{FusedOptimizer, Optimizer, OptimizerConfig, ParamGroup};
use crate::params::Params;
use crate::{AdagradConfig, AdamConfig, RmsPropConfig, SgdConfig};
use safetensors::tensor::TensorInfo;
use std::collections::HashMap;
#[cfg(not(target_arch = "wasm32"))]
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;

/// An open checkpoint (a file, or bytes in memory: [`Checkpoint::from_bytes`]) whose header has
/// been read and checked (its data has not been read yet). Use it to see what a checkpoint holds, to build matching parameters and optimizer, and
/// to restore them.
///
/// ```no_run
/// use wgpu_optim::{checkpoint, Adam, AdamConfig, Gpu, FusedOptimizer};
/// let gpu = Gpu::new()?;
/// let ck = checkpoint::open("run.safetensors")?;
/// println!("{} at step {}, {} tensors", ck.optimizer(), ck.step_count(), ck.tensors().len());
/// let mut params = ck.params(&gpu)?;                 // the saved parameter values
/// let mut opt: Adam = FusedOptimizer::with_groups(&params, ck.param_groups::<AdamConfig>()?)?;
/// ck.restore(&mut params, &mut opt)?;               // state, step count, settings
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Debug)]
pub struct Checkpoint {
    pub(super) path: PathBuf,
    pub(super) file: Mutex<Source>,
    pub(super) data_start: u64,
    infos: HashMap<String, TensorInfo>,
    /// Tensor names in data order, their byte ranges and dtypes (the checksum's is given as
    /// F32: it is never decoded).
    pub(super) order: Vec<String>,
    pub(super) ranges: Vec<(usize, usize)>,
    pub(super) dtypes: Vec<DType>,
    pub(super) header: Header,
}

/// What [`super::load`] and [`Checkpoint::restore`] report on success.
///
/// ```no_run
/// use wgpu_optim::{checkpoint, Adam, AdamConfig, Gpu, Params};
/// let gpu = Gpu::new()?;
/// let mut params = Params::zeros(&gpu, &[("w", 4)])?;
/// let mut opt = Adam::new(&params, AdamConfig::default())?;
/// let report = checkpoint::load("run.safetensors", &mut params, &mut opt)?;
/// if !report.verified {
///     eprintln!("warning: a version {} checkpoint has no checksums", report.format_version);
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadReport {
    /// Whether every byte loaded was checked against the file's CRC-32 checksums. `false` only
    /// for files of format version 1, which have none (they load as before, unverified).
    pub verified: bool,
    /// The file's format version.
    pub format_version: u32,
}

/// The optimizer a checkpoint was written by: its name and every group's hyperparameters, enough
/// to build the right optimizer for a file a program did not write
/// ([`Checkpoint::optimizer_kind`], [`Checkpoint::build_optimizer`]).
///
/// ```no_run
/// let kind = wgpu_optim::checkpoint::open("run.safetensors")?.optimizer_kind();
/// println!("{} with {} groups, lr {:?}", kind.name, kind.groups.len(), kind.groups[0].get("lr"));
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerKind {
    /// [`OptimizerConfig::NAME`]: `Adam` (AdamW is Adam with `decoupled_weight_decay` 1),
    /// `SGD`, `RMSprop`, `Adagrad`.
    pub name: String,
    /// The groups: their tensors and hyperparameters.
    pub groups: Vec<GroupRecord>,
}

/// What a checkpoint tensor is, from its name.
pub(super) enum Kind<'a> {
    Param(&'a str),
    State(&'a str, &'a str),
    /// One of an 8-bit state's three tensors: (tensor, key, `codes`/`absmax`/`qmap`).
    Quant(&'a str, &'a str, &'a str),
    Step,
    Checksum,
}

pub(super) fn kind(name: &str) -> Kind<'_> {
    if name == CHECKSUM_TENSOR {
        Kind::Checksum
    } else if let Some((t, key, part)) = super::quant_part(name) {
        Kind::Quant(t, key, part)
    } else if let Some(t) = name.strip_prefix("param.") {
        Kind::Param(t)
    } else {
        // Header::check allowed nothing else.
        let (t, key) = name
            .strip_prefix("state.")
            .and_then(|r| r.rsplit_once('.'))
            .unwrap_or(("", ""));
        if key == "step" {
            Kind::Step
        } else {
            Kind::State(t, key)
        }
    }
}

impl Checkpoint {
    /// Open a checkpoint and check its header: the safetensors framing, offsets, dtypes (F32,
    /// BF16 or F16 as the module documentation says), lengths, the metadata's structure and, for format version 2, the header's CRC-32.
    /// Reads only the header (and the 4-byte checksum at the end of the file).
    ///
    /// ```no_run
    /// use wgpu_optim::checkpoint::Checkpoint;
    /// let ck = Checkpoint::open("run.safetensors")?;
    /// for (name, len) in ck.tensors() {
    ///     println!("{name}: {len} elements");
    /// }
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        Self::from_source(Source::File(file), path.to_path_buf())
    }

    /// A checkpoint held in memory (from [`super::save_to_bytes_async`], a download, an
    /// upload, IndexedDB, ...), with the same checks as [`Checkpoint::open`]; on every target.
    /// Errors name it `<bytes>` where they would name a file.
    ///
    /// ```no_run
    /// # fn f(bytes: Vec<u8>) -> wgpu_optim::Result<()> {
    /// let ck = wgpu_optim::checkpoint::Checkpoint::from_bytes(bytes)?;
    /// println!("{} at step {}", ck.optimizer(), ck.step_count());
    /// # Ok(()) }
    /// ```
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Checkpoint> {
        let source = Source::Bytes(std::io::Cursor::new(bytes.into()));
        Self::from_source(source, PathBuf::from("<bytes>"))
    }

    fn from_source(mut file: Source, path: PathBuf) -> Result<Checkpoint> {
        let fr = read_framing(&mut file, &path)?;
        if let Some((expected, got)) = fr.header_crc {
            if expected != got {
                return Err(Error::CheckpointChecksum {
                    what: "header".into(),
                    expected,
                    got,
                });
            }
        }
        let md = fr
            .metadata
            .as_ref()
            .ok_or_else(|| format_err("the header has no __metadata__"))?;
        let meta = Meta::from_map(md)?;
        if meta.format_version >= 2 && fr.header_crc.is_none() {
            return Err(format_err(format!(
                "a version {} checkpoint without its `{CHECKSUM_TENSOR}` tensor",
                meta.format_version
            )));
        }
        let order: Vec<&str> = fr.order.iter().map(|s| s.as_str()).collect();
        let header = Header::check(meta, &fr.infos, &order)?;
        let ranges = fr.order.iter().map(|n| fr.infos[n].data_offsets).collect();
        let dtypes = fr
            .order
            .iter()
            .map(|n| storage_dtype(fr.infos[n].dtype).unwrap_or(DType::F32))
            .collect();
        debug_assert!(
            fr.data_len as usize
                == fr
                    .infos
                    .values()
                    .map(|i| i.data_offsets.1)
                    .max()
                    .unwrap_or(0)
        );
        Ok(Checkpoint {
            path,
            file: Mutex::new(file),
            data_start: fr.data_start,
            infos: fr.infos,
            order: fr.order,
            ranges,
            dtypes,
            header,
        })
    }

    /// Whether the file carries checksums (format version 2 and later): its header was checked
    /// against its CRC-32 when opened, and every tensor is checked when it is read. `false` for
    /// version 1 files, which load unverified.
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::open("run.safetensors")?;
    /// if !ck.verified() {
    ///     eprintln!("warning: an old checkpoint without checksums");
    /// }
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn verified(&self) -> bool {
        self.header.crcs.is_some()
    }

    /// The file's format version (1 or [`super::FORMAT_VERSION`]).
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::open("run.safetensors")?;
    /// assert!(ck.format_version() <= wgpu_optim::checkpoint::FORMAT_VERSION);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn format_version(&self) -> u32 {
        self.header.version
    }

    pub(super) fn report(&self) -> LoadReport {
        LoadReport {
            verified: self.verified(),
            format_version: self.header.version,
        }
    }

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

    /// The optimizer's name and every group's hyperparameters (see [`OptimizerKind`]).
    ///
    /// ```no_run
    /// let kind = wgpu_optim::checkpoint::open("run.safetensors")?.optimizer_kind();
    /// assert_eq!(kind.name, "Adam");
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn optimizer_kind(&self) -> OptimizerKind {
        OptimizerKind {
            name: self.header.optimizer.clone(),
            groups: self.header.groups.clone(),
        }
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

    /// The saved shape of parameter `name` (its `param.<name>` tensor's shape).
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// println!("{:?}", ck.shape("fc1.weight")?);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.header.shapes[self.tensor_index(name)?])
    }

    /// The storage dtype parameter `name` was saved in (its gradients' too).
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// println!("{}", ck.dtype("fc1.weight")?);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn dtype(&self, name: &str) -> Result<DType> {
        Ok(self.header.dtypes[self.tensor_index(name)?])
    }

    /// The optimizer's state dtype, master weights and rounding when saved (f32 state, no master
    /// weights, round to nearest even for files that do not say).
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// println!("state in {}", ck.precision().state);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn precision(&self) -> Precision {
        self.header.precision
    }

    /// Each group's L1 coefficient when saved ([`FusedOptimizer::set_l1`]; zeros when off).
    ///
    /// ```no_run
    /// let ck = wgpu_optim::checkpoint::Checkpoint::open("run.safetensors")?;
    /// println!("l1 {:?}", ck.l1());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn l1(&self) -> &[f32] {
        &self.header.l1
    }

    fn tensor_index(&self, name: &str) -> Result<usize> {
        self.header
            .tensors
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| Error::UnknownTensor(name.to_string()))
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

    /// The learning-rate scheduler states saved with [`super::SaveOptions::schedulers`], in the
    /// order given (empty if none were). Their structure was checked when the checkpoint was
    /// opened; whether one fits a scheduler is checked by its `load_state`.
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
    /// what [`FusedOptimizer::with_groups`] needs to build an optimizer this checkpoint restores into.
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint::Checkpoint, Gpu, FusedOptimizer, Sgd, SgdConfig};
    /// let gpu = Gpu::new()?;
    /// let ck = Checkpoint::open("sgd.safetensors")?;
    /// let params = ck.params(&gpu)?;
    /// let opt: Sgd = FusedOptimizer::with_groups(&params, ck.param_groups::<SgdConfig>()?)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn param_groups<C: OptimizerConfig + Default>(&self) -> Result<Vec<ParamGroup<C>>> {
        if self.header.optimizer != C::NAME {
            return Err(mismatch("optimizer", C::NAME, &self.header.optimizer));
        }
        self.header
            .groups
            .iter()
            .enumerate()
            .map(|(g, rec)| {
                let mut cfg = C::default();
                for (name, _) in cfg.hyperparameters() {
                    if rec.get(name).is_none() {
                        return Err(format_err(format!(
                            "group {g} lacks the hyperparameter `{name}`"
                        )));
                    }
                }
                for (name, value) in &rec.hyperparameters {
                    cfg.set_hyperparameter(name, *value)?;
                }
                cfg.validate()?;
                Ok(ParamGroup::new(rec.tensors.clone(), cfg))
            })
            .collect()
    }

    /// A new optimizer of the checkpoint's kind (one of this crate's: Adam, SGD, RMSprop,
    /// Adagrad, Lion, Adadelta, Rprop, ASGD, Adamax, RAdam, NAdam, ScheduleFreeAdamW, LAMB) over
    /// `params`, with the
    /// checkpoint's groups, hyperparameters, precision and rounding seed, ready for
    /// [`Checkpoint::restore`]: for a program that did not write the file.
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint, Gpu};
    /// let gpu = Gpu::new()?;
    /// let ck = checkpoint::open("run.safetensors")?;
    /// let mut params = ck.params(&gpu)?;
    /// let mut opt = ck.build_optimizer(&params)?; // Box<dyn Optimizer>
    /// ck.restore(&mut params, &mut *opt)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn build_optimizer(&self, params: &Params) -> Result<Box<dyn Optimizer>> {
        fn build<C: OptimizerConfig + Default>(
            ck: &Checkpoint,
            params: &Params,
        ) -> Result<Box<dyn Optimizer>> {
            let mut opt = FusedOptimizer::<C>::with_groups(params, ck.param_groups::<C>()?)?;
            opt.set_precision(ck.header.precision)?;
            opt.set_rounding_seed(ck.header.rounding_seed);
            Ok(Box::new(opt))
        }
        match self.header.optimizer.as_str() {
            AdamConfig::NAME => build::<AdamConfig>(self, params),
            SgdConfig::NAME => build::<SgdConfig>(self, params),
            RmsPropConfig::NAME => build::<RmsPropConfig>(self, params),
            AdagradConfig::NAME => build::<AdagradConfig>(self, params),
            crate::LionConfig::NAME => build::<crate::LionConfig>(self, params),
            crate::AdadeltaConfig::NAME => build::<crate::AdadeltaConfig>(self, params),
            crate::RpropConfig::NAME => build::<crate::RpropConfig>(self, params),
            crate::AsgdConfig::NAME => build::<crate::AsgdConfig>(self, params),
            crate::AdamaxConfig::NAME => build::<crate::AdamaxConfig>(self, params),
            crate::RAdamConfig::NAME => build::<crate::RAdamConfig>(self, params),
            crate::NAdamConfig::NAME => build::<crate::NAdamConfig>(self, params),
            crate::ScheduleFreeAdamWConfig::NAME => {
                build::<crate::ScheduleFreeAdamWConfig>(self, params)
            }
            crate::LambConfig::NAME => build::<crate::LambConfig>(self, params),
            crate::AdafactorConfig::NAME => build::<crate::AdafactorConfig>(self, params),
            other => Err(mismatch(
                "optimizer",
                "one of Adam, SGD, RMSprop, Adagrad, Lion, Adadelta, Rprop, ASGD, Adamax, RAdam, NAdam, \
                 ScheduleFreeAdamW, LAMB, Adafactor",
                other,
            )),
        }
    }

    /// Read one tensor of the file by its checkpoint name (`param.w`, `state.w.exp_avg`,
    /// `state.w.step`), widened to f32 from its dtype, checked against its CRC-32 where the file
    /// has checksums. Reads the whole tensor into memory.
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
            .filter(|_| tensor != CHECKSUM_TENSOR)
            .ok_or_else(|| Error::UnknownTensor(tensor.to_string()))?;
        let range = info.data_offsets;
        let t = self
            .order
            .iter()
            .position(|n| n == tensor)
            .unwrap_or(usize::MAX);
        let dtype = self.dtypes[t];
        let codes = info.dtype == safetensors::Dtype::U8;
        let mut out = Vec::with_capacity(range.1 - range.0);
        let mut h = crc32fast::Hasher::new();
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // Blocks are a multiple of 4 bytes from the tensor's start: elements never split.
        read_blocks(&mut file, &self.path, self.data_start, range, |block, _| {
            h.update(block);
            if codes {
                out.extend(block.iter().map(|&c| c as f32));
            } else {
                out.extend(widened(dtype, block));
            }
            Ok(())
        })?;
        self.check_crc(t, h.finalize())?;
        Ok(out)
    }

    /// `Err` unless tensor `t` (in data order) has the CRC-32 the file records (if it records
    /// one).
    pub(super) fn check_crc(&self, t: usize, got: u32) -> Result<()> {
        match self.header.crcs.as_ref().and_then(|c| c.get(t)) {
            Some(&expected) if expected != got => Err(Error::CheckpointChecksum {
                what: self.order[t].clone(),
                expected,
                got,
            }),
            _ => Ok(()),
        }
    }
}
