//! Data-parallel training with the optimizer state sharded over MPI ranks (ZeRO stage 1, as
//! DeepSpeed and PyTorch's `ZeroRedundancyOptimizer` do it). Feature `mpi`.
//!
//! Every rank (one process per GPU, started by `mpirun`) holds the whole model in a [`Params`]
//! and computes the gradients of its part of the batch. [`Sharded`] cuts the arena into one
//! contiguous, byte-balanced shard per rank ([`ShardPlan`]); each rank keeps optimizer state
//! for its shard only, so the state memory per rank is 1/N of a single GPU's. One
//! [`Sharded::step`]:
//!
//! 1. **Reduce-scatter of the gradients.** Each rank reads its gradients back and sends every
//!    other rank that rank's shard of them (one `MPI_Alltoallv`); each rank sums the N copies
//!    of its shard *in rank order* and divides by N: the average gradient, the same bits on
//!    every run whatever MPI's algorithms.
//! 2. **Global norm and non-finite flag.** With clipping, non-finite skipping or a
//!    [`GradScaler`], each rank sums its shard per [`SHARD_ALIGN`]-element granule in f64, the
//!    ranks all-gather those partials and every rank adds them in granule order: the same norm
//!    on every rank and for every number of ranks, so clipping, skipping and the loss scaler
//!    decide the same everywhere. The clip coefficient and 1 / loss scale are applied to the
//!    shard's gradient as the fused kernels apply them (`grad * (1/scale * min(1, max_norm /
//!    (norm + 1e-6)))` in f32); the scaler's update follows `torch.amp`'s rule on every rank.
//! 3. **Fused update of the local shard**: an ordinary [`FusedOptimizer`] over a parameter set
//!    of the shard's tensors (runs of tensors where a shard boundary cuts one).
//! 4. **All-gather of the updated parameters** (`MPI_Allgatherv`) into every rank's
//!    [`Params`].
//!
//! MPI only ever copies bits here (floats travel as `u32`/`u64`); every floating-point sum is
//! ours, in a fixed order. So N ranks give bit-identical parameters on every rank and on every
//! run, and the same bits as one GPU stepping the averaged gradients with a plain optimizer
//! (with clipping: where that optimizer is given the same clip coefficient; its own GPU norm
//! sums in another order, see the README).
//!
//! Mismatches between ranks (other tensors or lengths, another optimizer or options, a call
//! only some ranks make) are found by exchanging hashes before any data moves, and a local
//! failure (bad input, a GPU error) is exchanged too: both are a typed error on every rank
//! ([`Error::RankMismatch`], [`Error::RankFailed`]) instead of a hang.
//!
//! Communication is staged through host memory (wgpu buffers have no device-to-device path to
//! MPI); [`Sharded::last_step_stats`] reports what each phase cost.
//!
//! ```no_run
//! use wgpu_optim::distributed::{mpi, Sharded};
//! use wgpu_optim::{AdamConfig, Gpu, Params};
//!
//! let universe = mpi::initialize().expect("MPI is initialised once per process");
//! let world = universe.world();
//! let gpu = Gpu::new()?;
//! let mut params = Params::new(&gpu, &[("w", &[0.5f32; 10_000][..])])?;
//! let mut opt = Sharded::new(&world, &params, AdamConfig::adamw())?;
//! opt.set_max_grad_norm(Some(1.0))?;
//! for _ in 0..10 {
//!     // This rank's backward pass over its part of the batch writes the gradients:
//!     params.write_grad("w", &vec![0.01; 10_000])?;
//!     opt.step(&mut params)?; // every rank now holds the same updated `w`
//! }
//! println!("rank {} keeps {} bytes of optimizer state", opt.rank(), opt.state_bytes());
//! # Ok::<(), wgpu_optim::Error>(())
//! ```

mod comm;
mod persist;
mod plan;
mod step;

pub use mpi;
pub use plan::{ShardPiece, ShardPlan, SHARD_ALIGN};

use crate::arena::Layout;
use crate::error::{check, Error, Result};
use crate::gpu::Gpu;
use crate::norm::NormType;
use crate::optim::{FusedOptimizer, Optimizer, OptimizerConfig};
use crate::params::Params;
use crate::scaler::GradScaler;
use comm::{agree, Fnv};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Count;
use std::ops::Range;
use std::time::Duration;

/// What one [`Sharded::step`] cost on this rank, phase by phase, and what it moved.
///
/// ```no_run
/// # use wgpu_optim::distributed::{mpi, Sharded};
/// # use wgpu_optim::{SgdConfig, Gpu, Params};
/// # let universe = mpi::initialize().unwrap();
/// # let gpu = Gpu::new()?;
/// # let mut params = Params::zeros(&gpu, &[("w", 5000)])?;
/// let mut opt = Sharded::new(&universe.world(), &params, SgdConfig::default())?;
/// opt.step(&mut params)?;
/// let s = opt.last_step_stats();
/// println!("{:?} in all, {} bytes received", s.total, s.bytes_received);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Reading the gradients back from the GPU (host staging).
    pub read_back: Duration,
    /// The gradient exchange (reduce-scatter's all-to-all).
    pub reduce_scatter: Duration,
    /// Summing the N copies of the shard's gradient, the norm partials and the clip/unscale
    /// multiply, on the host.
    pub host_math: Duration,
    /// The norm's all-gather of partial sums (zero without clipping, skipping or a scaler).
    pub norm_exchange: Duration,
    /// Uploading the shard's gradient, the fused update and reading the shard back.
    pub update: Duration,
    /// The parameters' all-gather.
    pub all_gather: Duration,
    /// Uploading the gathered parameters (queued; the GPU copies them before the next pass).
    pub upload: Duration,
    /// The whole step.
    pub total: Duration,
    /// Payload bytes this rank received from the others (gradient runs, norm partials,
    /// parameter shards; not the agreement rounds' few hundred bytes per rank).
    pub bytes_received: u64,
    /// Payload bytes this rank sent to the others (counting its shard once per receiving rank).
    pub bytes_sent: u64,
}

/// A ZeRO stage 1 optimizer: any [`OptimizerConfig`] (Adam, SGD, ...), its state sharded over
/// the ranks of an MPI communicator, each rank stepping its shard with the fused kernels. See
/// the [module documentation](self).
///
/// Every call that communicates ([`Sharded::new`], [`Sharded::step`], [`Sharded::state`],
/// [`Sharded::save`], [`Sharded::load`]) is collective: every rank calls it, in the same order.
pub struct Sharded<C: OptimizerConfig> {
    comm: SimpleCommunicator,
    rank: usize,
    plan: ShardPlan,
    gpu: Gpu,
    params_id: u64,
    config: C,
    /// This rank's shard as a parameter set of its own with an ordinary optimizer over it
    /// (`None` when the shard is empty: more ranks than granules).
    shard: Option<(Params, FusedOptimizer<C>)>,
    /// Every rank's flat run (counts, displacements).
    runs: (Vec<Count>, Vec<Count>),
    /// Every rank's number of norm granules (counts, displacements).
    granule_runs: (Vec<Count>, Vec<Count>),
    /// This rank's granules, as runs of its flat range.
    granules: Vec<Range<usize>>,
    max_grad_norm: Option<f32>,
    norm_type: NormType,
    skip_nonfinite: bool,
    scaler: Option<GradScaler>,
    /// Steps submitted, skipped ones included; steps applied.
    submitted: u64,
    applied: u64,
    last_norm: Option<f32>,
    last_skipped: bool,
    stats: StepStats,
}

impl<C: OptimizerConfig> std::fmt::Debug for Sharded<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("optimizer", &C::NAME)
            .field("rank", &self.rank)
            .field("ranks", &self.plan.ranks())
            .field("shard", &self.plan.shard_range(self.rank))
            .field("config", &self.config)
            .finish()
    }
}

/// The physical runs `(chunk, element offset, elements)` of tensor elements `range` of `slot`.
fn physical(
    layout: &Layout,
    index: usize,
    range: Range<usize>,
) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
    let mut at = 0;
    layout.slots[index].pieces.iter().filter_map(move |p| {
        let (lo, hi) = (at, at + p.len);
        at = hi;
        let (a, b) = (range.start.max(lo), range.end.min(hi));
        (a < b).then(|| (p.chunk, p.offset + (a - lo), b - a))
    })
}

/// Byte ranges `(buffer, offset, length)` of `bufs` covering a whole parameter set in flat order.
fn flat_pieces<'a>(
    layout: &'a Layout,
    bufs: &'a [wgpu::Buffer],
) -> Vec<(&'a wgpu::Buffer, u64, u64)> {
    layout
        .slots
        .iter()
        .flat_map(|s| s.pieces.iter())
        .map(|p| (&bufs[p.chunk], (p.offset * 4) as u64, (p.len * 4) as u64))
        .collect()
}

/// Write a whole parameter set's values, given in flat order, into `bufs`.
fn write_flat(gpu: &Gpu, layout: &Layout, bufs: &[wgpu::Buffer], flat: &[u32]) {
    let mut at = 0;
    for p in layout.slots.iter().flat_map(|s| s.pieces.iter()) {
        gpu.queue().write_buffer(
            &bufs[p.chunk],
            (p.offset * 4) as u64,
            bytemuck::cast_slice(&flat[at..at + p.len]),
        );
        at += p.len;
    }
}

/// Copy this rank's runs of the full parameters into the shard's own parameter set, on the GPU.
fn copy_shard(gpu: &Gpu, plan: &ShardPlan, rank: usize, full: &Params, shard: &Params) {
    let mut enc = gpu
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("wgpu-optim shard params"),
        });
    for (k, p) in plan.shard_pieces(rank).iter().enumerate() {
        let src: Vec<_> = physical(&full.layout, p.index, p.range.clone()).collect();
        let dst: Vec<_> = physical(&shard.layout, k, 0..p.range.len()).collect();
        // Walk both lists of runs over the same elements, copying the overlap of each pair.
        let (mut i, mut j, mut di, mut dj) = (0, 0, 0, 0);
        while i < src.len() && j < dst.len() {
            let (sc, so, sl) = src[i];
            let (dc, dof, dl) = dst[j];
            let n = (sl - di).min(dl - dj);
            enc.copy_buffer_to_buffer(
                &full.param_bufs[sc],
                ((so + di) * 4) as u64,
                &shard.param_bufs[dc],
                ((dof + dj) * 4) as u64,
                (n * 4) as u64,
            );
            di += n;
            dj += n;
            if di == sl {
                (i, di) = (i + 1, 0);
            }
            if dj == dl {
                (j, dj) = (j + 1, 0);
            }
        }
    }
    gpu.queue().submit([enc.finish()]);
}

fn bits(v: &[f32]) -> &[u32] {
    bytemuck::cast_slice(v)
}

impl<C: OptimizerConfig> Sharded<C> {
    /// Shard `params` over the ranks of `comm` (collective: every rank calls it with its own
    /// copy of the same model) and build this rank's optimizer over its shard.
    ///
    /// Like PyTorch's `DistributedDataParallel`, construction makes rank 0's parameter values
    /// every rank's. The tensors (names, lengths, order), the optimizer and its options must be
    /// the same on every rank: a difference is an [`Error::RankMismatch`] on every rank, an
    /// invalid option on one rank its own error there and an [`Error::RankFailed`] on the others.
    /// The communicator is duplicated, so the optimizer's messages never meet yours.
    pub fn new(comm: &impl Communicator, params: &Params, config: C) -> Result<Self> {
        let comm = comm.duplicate();
        let (ranks, rank) = (comm.size() as usize, comm.rank() as usize);
        let specs: Vec<(&str, usize)> = params
            .layout
            .slots
            .iter()
            .map(|s| (s.name.as_str(), s.len))
            .collect();
        let mut arena_hash = Fnv::new().u64(specs.len() as u64);
        for &(name, len) in &specs {
            arena_hash = arena_hash.str(name).u64(len as u64);
        }
        let config_hash = config_hash(&config);
        let f32_only = match params
            .layout
            .slots
            .iter()
            .find(|s| s.dtype != crate::DType::F32)
        {
            Some(s) => Err(Error::DTypeMismatch {
                name: s.name.clone(),
                dtype: s.dtype,
                reason: "sharded optimizers step f32 parameters only".into(),
            }),
            None => Ok(()),
        };
        let local = f32_only.and_then(|_| config.validate()).and_then(|_| {
            let plan = ShardPlan::new(&specs, ranks)?;
            let counts: Vec<usize> = (0..ranks).map(|r| plan.shard_range(r).len()).collect();
            comm::partition(&counts)?;
            comm::partition(&plan.granule_counts())?;
            Ok(plan)
        });
        let (check, plan) = match local {
            Ok(p) => (Ok(()), Some(p)),
            Err(e) => (Err(e), None),
        };
        agree(
            &comm,
            check,
            [arena_hash.finish(), config_hash],
            ["tensors and lengths", "optimizer or options"],
        )?;
        let plan = plan.expect("agreed: every rank has a plan");
        let counts: Vec<usize> = (0..ranks).map(|r| plan.shard_range(r).len()).collect();
        let runs = comm::partition(&counts)?;
        let granule_runs = comm::partition(&plan.granule_counts())?;
        // Rank 0's values, everywhere.
        let gpu = params.gpu.clone();
        let (check, mut flat) =
            match gpu.read_pieces(&flat_pieces(&params.layout, &params.param_bufs)) {
                Ok(v) => (Ok(()), bits(&v).to_vec()),
                Err(e) => (Err(e), Vec::new()),
            };
        agree(&comm, check, [0; 2], ["", ""])?;
        {
            use mpi::collective::Root;
            comm.process_at_rank(0).broadcast_into(&mut flat[..]);
        }
        let built = gpu.scoped(|| {
            write_flat(&gpu, &params.layout, &params.param_bufs, &flat);
            Self::build_shard(&gpu, &plan, rank, &flat, &config)
        });
        let (check, shard) = match built {
            Ok(s) => (Ok(()), s),
            Err(e) => (Err(e), None),
        };
        agree(&comm, check, [0; 2], ["", ""])?;
        Ok(Sharded {
            granules: plan.granules(rank),
            comm,
            rank,
            plan,
            gpu,
            params_id: params.id,
            config,
            shard,
            runs,
            granule_runs,
            max_grad_norm: None,
            norm_type: NormType::L2,
            skip_nonfinite: false,
            scaler: None,
            submitted: 0,
            applied: 0,
            last_norm: None,
            last_skipped: false,
            stats: StepStats::default(),
        })
    }

    /// The shard's own parameter set (its runs of tensors, holding `flat`'s values) and an
    /// ordinary optimizer over it.
    fn build_shard(
        gpu: &Gpu,
        plan: &ShardPlan,
        rank: usize,
        flat: &[u32],
        config: &C,
    ) -> Result<Option<(Params, FusedOptimizer<C>)>> {
        let pieces = plan.shard_pieces(rank);
        if pieces.is_empty() {
            return Ok(None);
        }
        let names: Vec<String> = pieces.iter().map(|p| plan.piece_name(p)).collect();
        let values: Vec<&[f32]> = pieces
            .iter()
            .map(|p| {
                let at = plan.flat_start(p.index);
                bytemuck::cast_slice(&flat[at + p.range.start..at + p.range.end])
            })
            .collect();
        let tensors: Vec<(&str, &[f32])> = names.iter().map(|n| n.as_str()).zip(values).collect();
        let params = Params::new(gpu, &tensors)?;
        let opt = FusedOptimizer::new(&params, config.clone())?;
        Ok(Some((params, opt)))
    }

    /// This rank's index in the communicator.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.plan.ranks()
    }

    /// How the parameters are cut into shards.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// The optimizer over this rank's shard (`None` for a rank whose shard is empty), e.g. to
    /// read its state directly by the shard's tensor names ([`ShardPlan::pieces`]).
    pub fn local(&self) -> Option<&FusedOptimizer<C>> {
        self.shard.as_ref().map(|(_, o)| o)
    }

    /// Bytes of optimizer state this rank holds on its GPU: about 1/N of what one GPU would hold
    /// for the whole model (the shard's arena is padded like any arena: each run of a tensor to
    /// 64 elements, each buffer to 1024).
    pub fn state_bytes(&self) -> u64 {
        self.shard.as_ref().map_or(0, |(p, o)| {
            let elems: usize = p.layout.chunk_lens.iter().sum();
            (elems * 4 * o.state_keys().len()) as u64
        })
    }

    /// The configuration.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// Change the configuration's numbers (lr, betas, ...) from the next step on; boolean
    /// options are fixed at construction. Every rank must make the same change (the next step
    /// checks).
    pub fn set_config(&mut self, config: C) -> Result<()> {
        config.validate()?;
        if config.constants() != self.config.constants()
            || config.maximize() != self.config.maximize()
        {
            return Err(Error::InvalidOptions(
                "boolean options are fixed when the optimizer is built; build a new one".into(),
            ));
        }
        if let Some((_, o)) = &mut self.shard {
            o.set_config(config.clone())?;
        }
        self.config = config;
        Ok(())
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        self.config.lr()
    }

    /// Set the learning rate from the next step on (every rank the same).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        check("lr", lr as f64, lr >= 0.0, "must be >= 0")?;
        let mut c = self.config.clone();
        c.set_lr(lr);
        self.set_config(c)
    }

    /// Clip the averaged gradients by their global norm over every rank's shard (`None`: off).
    /// As with [`Optimizer::set_max_grad_norm`], a step whose gradients hold an inf or NaN is
    /// then skipped, on every rank.
    pub fn set_max_grad_norm(&mut self, max_norm: Option<f32>) -> Result<()> {
        if let Some(m) = max_norm {
            check("max_norm", m as f64, m > 0.0, "must be > 0")?;
        }
        self.max_grad_norm = max_norm;
        Ok(())
    }

    /// The clipping threshold (`None`: no clipping).
    pub fn max_grad_norm(&self) -> Option<f32> {
        self.max_grad_norm
    }

    /// The norm used for clipping: L2 (default), L1 or inf.
    pub fn set_grad_norm_type(&mut self, norm_type: NormType) {
        self.norm_type = norm_type;
    }

    /// The norm used for clipping.
    pub fn grad_norm_type(&self) -> NormType {
        self.norm_type
    }

    /// Skip a step whose averaged gradients hold an inf or NaN (on every rank).
    pub fn set_skip_nonfinite(&mut self, skip: bool) {
        self.skip_nonfinite = skip;
    }

    /// Whether non-finite steps are skipped.
    pub fn skip_nonfinite(&self) -> bool {
        self.skip_nonfinite
    }

    /// Attach a loss scaler on this rank's device (`None` detaches it): gradients are unscaled,
    /// overflowing steps skipped on every rank and the scale updated as `torch.amp` does, the
    /// same on every rank. Each rank attaches its own scaler with the same settings. The scale
    /// and growth tracker are written to the scaler's buffer each step (its `found_inf` flag is
    /// not: [`Sharded::last_step_skipped`] tells).
    pub fn set_grad_scaler(&mut self, scaler: Option<&GradScaler>) -> Result<()> {
        if let Some(s) = scaler {
            if !s.gpu().same_device(&self.gpu) {
                return Err(Error::ParamsMismatch(
                    "the grad scaler lives on another device".into(),
                ));
            }
        }
        self.scaler = scaler.cloned();
        Ok(())
    }

    /// The attached loss scaler.
    pub fn grad_scaler(&self) -> Option<&GradScaler> {
        self.scaler.as_ref()
    }

    /// Steps applied (skipped ones not counted), the same on every rank. Known on the host: no
    /// read-back.
    pub fn step_count(&self) -> u64 {
        self.applied
    }

    /// The global gradient norm of the last step (after unscaling), `None` when it computed
    /// none (no clipping, skipping or scaler). The same on every rank; no read-back.
    pub fn last_grad_norm(&self) -> Option<f32> {
        self.last_norm
    }

    /// Whether the last step was skipped (on every rank alike).
    pub fn last_step_skipped(&self) -> bool {
        self.last_skipped
    }

    /// What the last step cost on this rank, and what it moved.
    pub fn last_step_stats(&self) -> StepStats {
        self.stats
    }

    fn check_params(&self, params: &Params) -> Result<()> {
        if params.id == self.params_id {
            Ok(())
        } else {
            Err(Error::ParamsMismatch(
                "this is not the parameter set the sharded optimizer was built for".into(),
            ))
        }
    }
}

/// A hash of everything in `config` that the ranks must share: the algorithm, every
/// hyperparameter's bits and the boolean options.
fn config_hash<C: OptimizerConfig>(config: &C) -> u64 {
    let mut h = Fnv::new().str(C::NAME);
    for (name, v) in config.hyperparameters() {
        h = h.str(name).u64(v.to_bits());
    }
    for (name, v) in config.constants() {
        h = h.str(name).u64(v as u64);
    }
    h.u64(config.maximize() as u64).finish()
}
