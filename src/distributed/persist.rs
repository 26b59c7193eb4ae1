//! Reading sharded state back and checkpoints of a [`Sharded`] optimizer: an ordinary
//! wgpu-optim checkpoint file of whole tensors, so a checkpoint saved with N ranks loads into
//! M ranks, or into one GPU with [`crate::checkpoint::load`], and back.

use super::comm::{self, agree, Fnv};
use super::{bits, Sharded};
use crate::checkpoint::{self, SaveOptions};
use crate::error::{Error, Result};
use crate::optim::{FusedOptimizer, Optimizer, OptimizerConfig};
use crate::params::Params;
use mpi::collective::Root;
use mpi::datatype::PartitionMut;
use mpi::topology::Communicator;
use std::path::Path;

impl<C: OptimizerConfig> Sharded<C> {
    /// Whether this configuration keeps state `key`.
    fn keeps(&self, key: &str) -> bool {
        C::SLOTS.contains(&key) && self.config.uses_state(key)
    }

    /// The state keys this configuration keeps (PyTorch's names).
    pub fn state_keys(&self) -> Vec<&'static str> {
        C::SLOTS
            .iter()
            .copied()
            .filter(|k| self.config.uses_state(k))
            .collect()
    }

    /// This rank's share of state `key` of tensor `tensor` (empty where it owns none of it).
    fn local_state(&self, key: &str, tensor: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        if let Some((_, opt)) = &self.shard {
            for p in self
                .plan
                .shard_pieces(self.rank)
                .iter()
                .filter(|p| p.index == tensor)
            {
                out.extend(opt.state(key, &self.plan.piece_name(p))?);
            }
        }
        Ok(out)
    }

    /// Elements of tensor `tensor` each rank owns.
    fn tensor_counts(&self, tensor: usize) -> Vec<usize> {
        (0..self.ranks())
            .map(|r| {
                let pieces = self.plan.shard_pieces(r);
                pieces
                    .iter()
                    .filter(|p| p.index == tensor)
                    .map(|p| p.range.len())
                    .sum()
            })
            .collect()
    }

    /// One whole state tensor (PyTorch's key, the tensor's name), gathered from the ranks that
    /// own parts of it, on every rank (collective). Blocks.
    ///
    /// ```no_run
    /// # use wgpu_optim::distributed::{mpi, Sharded};
    /// # use wgpu_optim::{AdamConfig, Gpu, Params};
    /// # let universe = mpi::initialize().unwrap();
    /// # let gpu = Gpu::new()?;
    /// # let params = Params::zeros(&gpu, &[("w", 5000)])?;
    /// let opt = Sharded::new(&universe.world(), &params, AdamConfig::default())?;
    /// let m = opt.state("exp_avg", "w")?; // all 5000 elements, on every rank
    /// assert_eq!(m.len(), 5000);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn state(&self, key: &str, tensor: &str) -> Result<Vec<f32>> {
        let index = self.plan.tensors().iter().position(|(n, _)| n == tensor);
        let local = match index {
            None => Err(Error::UnknownTensor(tensor.to_string())),
            Some(_) if !self.keeps(key) => Err(Error::UnknownState {
                key: key.to_string(),
                optimizer: C::NAME,
                known: self.state_keys(),
            }),
            Some(_) => Ok(()),
        };
        let hash = Fnv::new().str(key).str(tensor).finish();
        agree(&self.comm, local, [hash, 0], ["state request", ""])?;
        let index = index.expect("agreed: the tensor exists");
        let mut failure = None;
        let counts = self.tensor_counts(index);
        let mine = self.local_state(key, index).unwrap_or_else(|e| {
            failure = Some(e);
            vec![0.0; counts[self.rank]]
        });
        let mut out = vec![0u32; self.plan.tensors()[index].1];
        let (c, d) = comm::partition(&counts)?;
        comm::gather_runs(&self.comm, bits(&mine), (&c, &d), &mut out);
        agree(&self.comm, failure.map_or(Ok(()), Err), [0; 2], ["", ""])?;
        Ok(bytemuck::cast_slice(&out).to_vec())
    }

    /// Save a checkpoint (collective): every rank's shard of the state is gathered on rank 0,
    /// which writes one ordinary checkpoint file of whole tensors to `path` (the format of
    /// [`crate::checkpoint`], PyTorch's state names), with the step count, the options, the
    /// clipping settings and the loss scaler's state. `path` matters on rank 0 only.
    ///
    /// Rank 0 builds a single-GPU optimizer over `params` to write it, so it needs room for the
    /// whole optimizer state on its GPU while it saves. The file loads into any number of ranks
    /// ([`Sharded::load`]) or into one GPU ([`crate::checkpoint::load`]), exactly.
    ///
    /// ```no_run
    /// # use wgpu_optim::distributed::{mpi, Sharded};
    /// # use wgpu_optim::{AdamConfig, Gpu, Params};
    /// # let universe = mpi::initialize().unwrap();
    /// # let gpu = Gpu::new()?;
    /// let mut params = Params::zeros(&gpu, &[("w", 5000)])?;
    /// let mut opt = Sharded::new(&universe.world(), &params, AdamConfig::default())?;
    /// opt.step(&mut params)?;
    /// opt.save("run.safetensors", &params)?; // every rank calls it; rank 0 writes
    /// // Later, on any number of ranks:
    /// opt.load("run.safetensors", &mut params)?;
    /// assert_eq!(opt.step_count(), 1);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>, params: &Params) -> Result<()> {
        agree(&self.comm, self.check_params(params), [0; 2], ["", ""])?;
        let root = self.comm.process_at_rank(0);
        let mut failure: Option<Error> = None;
        let mut full = if self.rank == 0 {
            let built = FusedOptimizer::new(params, self.config.clone()).and_then(|mut opt| {
                opt.set_max_grad_norm(self.max_grad_norm)?;
                opt.set_grad_norm_type(self.norm_type)?;
                opt.set_skip_nonfinite(self.skip_nonfinite)?;
                opt.set_step_count(self.applied)?;
                Ok(opt)
            });
            built.map_err(|e| failure = Some(e)).ok()
        } else {
            None
        };
        let counts: Vec<usize> = (0..self.ranks())
            .map(|r| self.plan.shard_range(r).len())
            .collect();
        for key in self.state_keys() {
            let mut mine = Vec::with_capacity(counts[self.rank]);
            for t in 0..self.plan.tensors().len() {
                match self.local_state(key, t) {
                    Ok(v) => mine.extend(v),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            mine.resize(counts[self.rank], 0.0);
            if self.rank == 0 {
                let mut all = vec![0u32; self.plan.total_len()];
                {
                    let (c, d) = (&self.runs.0[..], &self.runs.1[..]);
                    let mut recv = PartitionMut::new(&mut all[..], c, d);
                    root.gather_varcount_into_root(bits(&mine), &mut recv);
                }
                if let Some(opt) = &mut full {
                    let all: &[f32] = bytemuck::cast_slice(&all);
                    for (t, (name, len)) in self.plan.tensors().iter().enumerate() {
                        let at = self.plan.flat_start(t);
                        if let Err(e) = opt.set_state(key, name, &all[at..at + len]) {
                            failure.get_or_insert(e);
                        }
                    }
                }
            } else {
                root.gather_varcount_into(bits(&mine));
            }
        }
        if let (Some(opt), None) = (&full, &failure) {
            let mut options = SaveOptions::default();
            if let Some(s) = &self.scaler {
                options = options.scaler(s);
            }
            if let Err(e) = checkpoint::save(path, params, opt, options) {
                failure = Some(e);
            }
        }
        agree(&self.comm, failure.map_or(Ok(()), Err), [0; 2], ["", ""])
    }

    /// Load a checkpoint (collective) saved by [`Sharded::save`] with any number of ranks, or by
    /// [`crate::checkpoint::save`] on one GPU: every rank reads `path` (a shared file system, or
    /// the same file copied to each machine), takes the whole parameters and its own shard of
    /// the state, and resumes exactly: the step count, every hyperparameter (as torch's
    /// `load_state_dict`), the clipping settings and the attached loss scaler's state.
    ///
    /// Everything is checked on every rank before anything changes (the optimizer kind, the
    /// tensors and lengths, one group of every tensor, the options and boolean options, that
    /// the ranks read the same checkpoint); a problem is an error on every rank.
    pub fn load(&mut self, path: impl AsRef<Path>, params: &mut Params) -> Result<()> {
        let checked = self
            .check_params(params)
            .and_then(|_| checkpoint::open(path.as_ref()))
            .and_then(|ck| {
                let cfg = self.fit(&ck)?;
                Ok((ck, cfg))
            });
        let hash = match &checked {
            Ok((ck, cfg)) => Fnv::new()
                .u64(super::config_hash(cfg))
                .u64(ck.step_count())
                .finish(),
            Err(_) => 0,
        };
        let local = checked.as_ref().map(|_| ()).map_err(Clone::clone);
        agree(&self.comm, local, [hash, 0], ["checkpoint", ""])?;
        let (ck, cfg) = checked.expect("agreed: every rank read the checkpoint");
        let done = self.restore(&ck, cfg, params);
        agree(&self.comm, done, [0; 2], ["", ""])
    }

    /// The configuration `ck` holds, checked against this optimizer and `params`' tensors.
    fn fit(&self, ck: &checkpoint::Checkpoint) -> Result<C> {
        let mismatch = |what: &str, expected: String, got: String| Error::CheckpointMismatch {
            what: what.to_string(),
            expected,
            got,
        };
        if ck.optimizer() != C::NAME {
            return Err(mismatch("optimizer", C::NAME.into(), ck.optimizer().into()));
        }
        if ck.tensors() != self.plan.tensors() {
            return Err(mismatch(
                "tensors and lengths",
                format!("{:?}", self.plan.tensors()),
                format!("{:?}", ck.tensors()),
            ));
        }
        let groups = ck.groups();
        if groups.len() != 1 {
            return Err(mismatch(
                "parameter groups",
                "1 (a sharded optimizer has one group)".into(),
                groups.len().to_string(),
            ));
        }
        let mut cfg = self.config.clone();
        for (name, value) in &groups[0].hyperparameters {
            cfg.set_hyperparameter(name, *value)?;
        }
        cfg.validate()?;
        if cfg.constants() != self.config.constants() || cfg.maximize() != self.config.maximize() {
            return Err(mismatch(
                "boolean options (fixed when the optimizer is built)",
                format!("{:?}", self.config.constants()),
                format!("{:?}", cfg.constants()),
            ));
        }
        if self.scaler.is_some() && ck.grad_scaler().is_none() {
            return Err(mismatch(
                "grad scaler",
                "a saved scaler state".into(),
                "none".into(),
            ));
        }
        Ok(cfg)
    }

    /// Write `ck`'s parameters, this rank's shard of its state and its settings.
    fn restore(&mut self, ck: &checkpoint::Checkpoint, cfg: C, params: &mut Params) -> Result<()> {
        // Read everything first, then change.
        let mut values = Vec::with_capacity(self.plan.tensors().len());
        for (name, _) in self.plan.tensors() {
            values.push(ck.read(&format!("param.{name}"))?);
        }
        let pieces = self.plan.shard_pieces(self.rank);
        let mut state = Vec::new();
        for key in self.state_keys() {
            for p in &pieces {
                let whole = ck.read(&format!("state.{}.{key}", p.tensor))?;
                state.push((
                    key,
                    self.plan.piece_name(p),
                    whole[p.range.clone()].to_vec(),
                ));
            }
        }
        for ((name, _), v) in self.plan.tensors().iter().zip(&values) {
            params.write(name, v)?;
        }
        if let Some((_, opt)) = &mut self.shard {
            opt.set_config(cfg.clone())?;
            for (key, name, v) in &state {
                opt.set_state(key, name, v)?;
            }
            opt.set_step_count(ck.step_count())?;
        }
        self.config = cfg;
        self.max_grad_norm = ck.max_grad_norm();
        self.norm_type = ck.grad_norm_type();
        self.skip_nonfinite = ck.skip_nonfinite();
        if let (Some(s), Some(rec)) = (&self.scaler, ck.grad_scaler()) {
            s.set_state(rec.scale, rec.growth_tracker)?;
        }
        self.applied = ck.step_count();
        self.submitted = ck.step_count();
        Ok(())
    }
}
