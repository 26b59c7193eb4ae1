//! Learning-rate schedulers with `torch.optim.lr_scheduler`'s semantics.
//!
//! A schedule is described by a plain config with PyTorch's option names and defaults
//! ([`StepLR`], [`MultiStepLR`], [`ExponentialLR`], [`CosineAnnealingLR`],
//! [`CosineAnnealingWarmRestarts`], [`LinearLR`], [`ConstantLR`], [`PolynomialLR`],
//! [`LambdaLR`], [`MultiplicativeLR`], [`OneCycleLR`], [`CyclicLR`], [`SequentialLR`],
//! [`ChainedScheduler`]) and attached to an optimizer with [`Scheduler::new`] (every parameter
//! group) or [`Scheduler::for_group`] (one group). Attaching performs PyTorch's initial step
//! (`last_epoch = 0`): LinearLR multiplies the lr by `start_factor`, OneCycleLR sets it to
//! `max_lr / div_factor`, CyclicLR to `base_lr`, and so on. Each [`LrScheduler::step`] then
//! advances one epoch (or iteration) and writes the new lr (and momentum, where it is cycled) to
//! the optimizer. [`ReduceLROnPlateau`] steps on a metric instead: it is attached with
//! [`PlateauScheduler::new`] and stepped with [`PlateauScheduler::step_with`].
//!
//! ```no_run
//! use wgpu_optim::{
//!     CosineAnnealingLR, Gpu, LinearLR, LrScheduler, Optimizer, Params, Scheduler,
//!     SequentialLR, Sgd, SgdConfig,
//! };
//!
//! let gpu = Gpu::new()?;
//! let mut params = Params::zeros(&gpu, &[("w", 1000)])?;
//! let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })?;
//! // Five epochs of linear warm-up from lr/10, then cosine annealing over the remaining 95.
//! let warmup = LinearLR { start_factor: 0.1, total_iters: 5, ..Default::default() };
//! let cosine = CosineAnnealingLR { eta_min: 1e-5, ..CosineAnnealingLR::new(95) };
//! let mut sched = Scheduler::new(
//!     &mut opt,
//!     SequentialLR::new(vec![warmup.into(), cosine.into()], vec![5]),
//! )?;
//! assert_eq!(opt.lr(), 0.01);
//! for _epoch in 0..100 {
//!     params.write_grad("w", &vec![0.1; 1000])?;
//!     opt.step(&mut params)?;
//!     sched.step(&mut opt)?;
//! }
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! # Exactness
//! Every formula is PyTorch's, evaluated in the same order in f64: the recursive ("chainable")
//! forms where PyTorch's `get_lr` uses them (StepLR, MultiStepLR, ExponentialLR,
//! CosineAnnealingLR, LinearLR, ConstantLR, PolynomialLR, MultiplicativeLR read the group's
//! current lr and update it), the closed forms where it does (CosineAnnealingWarmRestarts,
//! CyclicLR, OneCycleLR, LambdaLR, and SequentialLR's switch to the next scheduler at a
//! milestone). The optimizer stores f32, so a scheduler keeps the f64 value it last wrote and
//! continues its recursion from that while the optimizer still holds it (rounded); if something
//! else changed the lr in between, it continues from the new value. Results agree with PyTorch to f32 rounding (`tests/schedulers.rs` replays PyTorch's
//! trajectories).
//!
//! # Saving and resuming
//! [`Scheduler::state`] and [`PlateauScheduler::state`] return what PyTorch's `state_dict()`
//! holds ([`SchedulerState`], [`PlateauState`]: serde-serializable, exact through JSON);
//! `load_state` on a scheduler built with the same schedule continues bit for bit, and writes the
//! saved lrs (and cycled momenta) to the optimizer. [`crate::checkpoint::save_with_schedulers`]
//! stores them in a checkpoint file.
//!
//! ```no_run
//! use wgpu_optim::{
//!     ExponentialLR, Gpu, LrScheduler, Optimizer, Params, Scheduler, Sgd, SgdConfig,
//! };
//! let gpu = Gpu::new()?;
//! let params = Params::zeros(&gpu, &[("w", 10)])?;
//! let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
//! let mut sched = Scheduler::new(&mut opt, ExponentialLR::new(0.9))?;
//! sched.step(&mut opt)?;
//! let saved = sched.state();
//! let mut opt2 = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
//! let mut sched2 = Scheduler::new(&mut opt2, ExponentialLR::new(0.9))?;
//! sched2.load_state(&mut opt2, &saved)?;
//! assert_eq!(opt2.lr(), opt.lr());
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! # Errors
//! Options are validated when a scheduler is attached ([`Error::InvalidScheduler`]), before
//! the optimizer is touched. A step that fails (stepping OneCycleLR past `total_steps`,
//! a value the optimizer rejects, such as a NaN or negative factor from an [`LrLambda`]) leaves
//! the optimizer and the scheduler as they were. A saved state that does not fit is an
//! [`Error::SchedulerState`] and changes nothing.
//!
//! # Differences from PyTorch
//! - A scheduler does not resume from a `last_epoch` argument (use `load_state`), and the
//!   deprecated `step(epoch)` form is not offered.
//! - Options that make PyTorch divide by zero or misbehave are rejected: ConstantLR's
//!   `factor = 0` (PyTorch divides by it at `total_iters`) and `total_iters = 0` (PyTorch then
//!   applies the factor forever, against its own closed form), PolynomialLR's
//!   `total_iters = 0` and negative `power`, LinearLR's `total_iters = 0`.
//! - A ChainedScheduler can be a SequentialLR's first scheduler only (PyTorch raises
//!   `NotImplementedError` when it restarts one at a milestone); as the first one it behaves
//!   as in PyTorch, whose initial step then steps every chained scheduler normally (ExponentialLR
//!   applies `gamma` once more at epoch 0, for example). ChainedScheduler has no `last_epoch` in
//!   PyTorch; here it counts the steps taken.
//! - A SequentialLR cannot contain a SequentialLR, also not through a ChainedScheduler.
//! - [`LrLambda`]s are not part of a saved state (PyTorch saves only callable objects'
//!   attributes); build the scheduler with the same functions before loading.
//! - PyTorch records `initial_lr` in the optimizer's param groups, so that a second scheduler
//!   built on the same optimizer starts from the first one's base lrs; this crate's optimizers
//!   have no such field, so every scheduler starts from the lrs it finds (SequentialLR does
//!   share them between its schedulers, as PyTorch does).
//! - OneCycleLR's last allowed step (`last_epoch == total_steps`, one past the end of the
//!   schedule, whose lr the usual loop never uses) extrapolates the last phase; with
//!   `anneal_strategy = linear` PyTorch's lr there is negative, which the optimizers reject,
//!   so it is clamped to 0.
//! - Momentum cycling (CyclicLR, OneCycleLR) needs a momentum the optimizer can change: an
//!   SGD built with `momentum = 0` has no momentum buffer (its kernel is specialised without
//!   one), so it is an [`Error::NoMomentum`] where PyTorch would switch momentum on.

use crate::error::{Error, Result};
use crate::optim::{widen, Optimizer};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use std::sync::Arc;

/// Something that sets an optimizer's learning rates epoch by epoch (PyTorch's
/// `LRScheduler`). Object safe.
pub trait LrScheduler {
    /// Advance one epoch (or iteration) and write the new learning rate of every driven group
    /// to `opt` (PyTorch's `scheduler.step()`). Call it after the optimizer's step. An `Err`
    /// leaves the optimizer and the scheduler unchanged.
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()>;
    /// The learning rate of each driven group as last set (PyTorch's `get_last_lr()`).
    fn last_lr(&self) -> Vec<f32>;
    /// The epoch last stepped to; 0 right after construction (PyTorch's `last_epoch`).
    fn last_epoch(&self) -> i64;
}

/// One value for every driven parameter group, or one each (PyTorch accepts a float or a list
/// for options such as `max_lr`).
#[derive(Clone, Debug, PartialEq)]
pub enum PerGroup {
    /// The same value for every group.
    All(f64),
    /// One value per driven group, in group order.
    Each(Vec<f64>),
}

impl From<f64> for PerGroup {
    fn from(v: f64) -> Self {
        PerGroup::All(v)
    }
}

impl From<Vec<f64>> for PerGroup {
    fn from(v: Vec<f64>) -> Self {
        PerGroup::Each(v)
    }
}

impl From<&[f64]> for PerGroup {
    fn from(v: &[f64]) -> Self {
        PerGroup::Each(v.to_vec())
    }
}

impl<const N: usize> From<[f64; N]> for PerGroup {
    fn from(v: [f64; N]) -> Self {
        PerGroup::Each(v.to_vec())
    }
}

impl PerGroup {
    /// The values for `n` groups; a list of another length is an [`Error::InvalidScheduler`].
    fn resolve(&self, name: &'static str, n: usize) -> Result<Vec<f64>> {
        match self {
            PerGroup::All(v) => Ok(vec![*v; n]),
            PerGroup::Each(v) if v.len() == n => Ok(v.clone()),
            PerGroup::Each(v) => Err(Error::InvalidScheduler {
                name,
                value: v.len() as f64,
                rule: "a list needs one value per driven parameter group",
            }),
        }
    }
}

/// A count option as an epoch (saturating; no schedule gets near 2^63 epochs).
fn epoch_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn bad(name: &'static str, value: f64, rule: &'static str) -> Error {
    Error::InvalidScheduler { name, value, rule }
}

fn ensure(name: &'static str, value: f64, ok: bool, rule: &'static str) -> Result<()> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(bad(name, value, rule))
    }
}

fn ensure_count(name: &'static str, value: u64, min: u64, rule: &'static str) -> Result<()> {
    if value >= min {
        Ok(())
    } else {
        Err(bad(name, value as f64, rule))
    }
}

/// Decays the lr by `gamma` every `step_size` epochs (PyTorch's `StepLR`).
#[derive(Clone, Debug, PartialEq)]
pub struct StepLR {
    /// Period of the decay, in epochs (>= 1).
    pub step_size: u64,
    /// Multiplicative factor (> 0). Default 0.1.
    pub gamma: f64,
}

impl StepLR {
    /// `step_size` with PyTorch's default `gamma = 0.1`.
    pub fn new(step_size: u64) -> Self {
        StepLR {
            step_size,
            gamma: 0.1,
        }
    }
}

/// Decays the lr by `gamma` at each milestone (PyTorch's `MultiStepLR`). A milestone listed `k`
/// times multiplies by `gamma^k`, as PyTorch's `Counter` does.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiStepLR {
    /// Epochs at which to decay, non-decreasing.
    pub milestones: Vec<u64>,
    /// Multiplicative factor (> 0). Default 0.1.
    pub gamma: f64,
}

impl MultiStepLR {
    /// `milestones` with PyTorch's default `gamma = 0.1`.
    pub fn new(milestones: impl Into<Vec<u64>>) -> Self {
        MultiStepLR {
            milestones: milestones.into(),
            gamma: 0.1,
        }
    }
}

/// Decays the lr by `gamma` every epoch (PyTorch's `ExponentialLR`).
#[derive(Clone, Debug, PartialEq)]
pub struct ExponentialLR {
    /// Multiplicative factor (> 0).
    pub gamma: f64,
}

impl ExponentialLR {
    /// Decay by `gamma` per epoch.
    pub fn new(gamma: f64) -> Self {
        ExponentialLR { gamma }
    }
}

/// Cosine annealing from the initial lr to `eta_min` over `T_max` epochs, then back up, as a
/// cosine of period `2 T_max` (PyTorch's `CosineAnnealingLR`, its recursive form).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineAnnealingLR {
    /// `T_max`: half-period in epochs (>= 1).
    pub t_max: u64,
    /// Minimum lr (>= 0). Default 0.
    pub eta_min: f64,
}

impl CosineAnnealingLR {
    /// `T_max` with `eta_min = 0`.
    pub fn new(t_max: u64) -> Self {
        CosineAnnealingLR {
            t_max,
            eta_min: 0.0,
        }
    }
}

/// Cosine annealing with warm restarts (SGDR; PyTorch's `CosineAnnealingWarmRestarts`, stepped
/// without an epoch argument).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineAnnealingWarmRestarts {
    /// `T_0`: epochs until the first restart (>= 1).
    pub t_0: u64,
    /// `T_mult`: factor by which each period grows after a restart (>= 1). Default 1.
    pub t_mult: u64,
    /// Minimum lr (>= 0). Default 0.
    pub eta_min: f64,
}

impl CosineAnnealingWarmRestarts {
    /// `T_0` with `T_mult = 1`, `eta_min = 0`.
    pub fn new(t_0: u64) -> Self {
        CosineAnnealingWarmRestarts {
            t_0,
            t_mult: 1,
            eta_min: 0.0,
        }
    }
}

/// Scales the lr linearly from `start_factor` to `end_factor` over `total_iters` epochs
/// (PyTorch's `LinearLR`, its recursive form). Defaults are PyTorch's: 1/3, 1, 5.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearLR {
    /// Factor at epoch 0, in (0, 1].
    pub start_factor: f64,
    /// Factor from epoch `total_iters` on, in [0, 1].
    pub end_factor: f64,
    /// Length of the ramp in epochs (>= 1).
    pub total_iters: u64,
}

impl Default for LinearLR {
    fn default() -> Self {
        LinearLR {
            start_factor: 1.0 / 3.0,
            end_factor: 1.0,
            total_iters: 5,
        }
    }
}

/// How OneCycleLR moves between its phase end points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AnnealStrategy {
    /// Half a cosine (PyTorch's `"cos"`, the default).
    #[default]
    Cos,
    /// A straight line (`"linear"`).
    Linear,
}

/// The 1cycle policy (PyTorch's `OneCycleLR`): up from `max_lr / div_factor` to `max_lr`, then
/// down to `max_lr / div_factor / final_div_factor` over `total_steps` steps, with momentum
/// cycled the opposite way. Build it with [`OneCycleLR::new`] and change options with struct
/// update syntax.
///
/// PyTorch allows `total_steps` calls of `step()` (the last one extrapolates the last phase) and
/// raises on the next; so does this ([`Error::ScheduleExhausted`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OneCycleLR {
    /// Peak lr (> 0).
    pub max_lr: PerGroup,
    /// Steps in the cycle (>= 1).
    pub total_steps: u64,
    /// Fraction of the cycle spent increasing the lr, in [0, 1]. Default 0.3.
    pub pct_start: f64,
    /// Cosine (default) or linear annealing.
    pub anneal_strategy: AnnealStrategy,
    /// Cycle the momentum (SGD/RMSprop `momentum`, Adam `betas[0]`) inversely to the lr.
    /// Default true.
    pub cycle_momentum: bool,
    /// Lowest momentum (at the lr's peak). Default 0.85.
    pub base_momentum: PerGroup,
    /// Highest momentum (at the lr's ends). Default 0.95.
    pub max_momentum: PerGroup,
    /// Initial lr = `max_lr / div_factor` (> 0). Default 25.
    pub div_factor: f64,
    /// Final lr = initial lr / `final_div_factor` (> 0). Default 1e4.
    pub final_div_factor: f64,
    /// Three phases (up, down to the initial lr, then down to the final lr) instead of two.
    /// Default false.
    pub three_phase: bool,
}

impl OneCycleLR {
    /// `max_lr` and `total_steps` with PyTorch's defaults for everything else.
    pub fn new(max_lr: impl Into<PerGroup>, total_steps: u64) -> Self {
        OneCycleLR {
            max_lr: max_lr.into(),
            total_steps,
            pct_start: 0.3,
            anneal_strategy: AnnealStrategy::Cos,
            cycle_momentum: true,
            base_momentum: PerGroup::All(0.85),
            max_momentum: PerGroup::All(0.95),
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }
}

/// CyclicLR's amplitude policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CyclicMode {
    /// Constant amplitude (default).
    #[default]
    Triangular,
    /// Amplitude halved every cycle.
    Triangular2,
    /// Amplitude scaled by `gamma^iteration`.
    ExpRange,
}

/// Cyclical learning rates (PyTorch's `CyclicLR`): the lr moves between `base_lr` and `max_lr`
/// in triangles of `step_size_up + step_size_down` iterations; momentum moves the opposite way
/// between `max_momentum` and `base_momentum`. Attaching sets the lr to `base_lr`.
#[derive(Clone, Debug, PartialEq)]
pub struct CyclicLR {
    /// Lower lr bound (>= 0); the lr at construction.
    pub base_lr: PerGroup,
    /// Upper lr bound (>= `base_lr`).
    pub max_lr: PerGroup,
    /// Iterations of the increasing half (>= 1). Default 2000.
    pub step_size_up: u64,
    /// Iterations of the decreasing half; `None` (default) means `step_size_up`.
    pub step_size_down: Option<u64>,
    /// Amplitude policy. Default triangular.
    pub mode: CyclicMode,
    /// Base of `exp_range`'s scaling (> 0). Default 1.
    pub gamma: f64,
    /// Cycle the momentum (SGD/RMSprop `momentum`, Adam `betas[0]`). Default true, as in
    /// PyTorch; an optimizer without one then is an [`Error::NoMomentum`].
    pub cycle_momentum: bool,
    /// Lower momentum bound. Default 0.8.
    pub base_momentum: PerGroup,
    /// Upper momentum bound; the momentum at construction. Default 0.9.
    pub max_momentum: PerGroup,
}

impl CyclicLR {
    /// `base_lr` and `max_lr` with PyTorch's defaults for everything else.
    pub fn new(base_lr: impl Into<PerGroup>, max_lr: impl Into<PerGroup>) -> Self {
        CyclicLR {
            base_lr: base_lr.into(),
            max_lr: max_lr.into(),
            step_size_up: 2000,
            step_size_down: None,
            mode: CyclicMode::Triangular,
            gamma: 1.0,
            cycle_momentum: true,
            base_momentum: PerGroup::All(0.8),
            max_momentum: PerGroup::All(0.9),
        }
    }
}

/// Runs schedulers one after another, switching at the milestones (PyTorch's `SequentialLR`):
/// the schedulers are built in order on the same groups (sharing the groups' initial lrs), then
/// the lr is reset and the first one takes its initial step; at milestone `m_i` scheduler `i+1`
/// restarts at its epoch 0.
#[derive(Clone, Debug, PartialEq)]
pub struct SequentialLR {
    /// The schedulers (at least one; no SequentialLR inside).
    pub schedulers: Vec<Schedule>,
    /// Epochs at which to switch to the next scheduler: one fewer than the schedulers,
    /// strictly increasing.
    pub milestones: Vec<u64>,
}

impl SequentialLR {
    /// `schedulers` switched at `milestones`.
    pub fn new(schedulers: Vec<Schedule>, milestones: impl Into<Vec<u64>>) -> Self {
        SequentialLR {
            schedulers,
            milestones: milestones.into(),
        }
    }
}

/// A function of the epoch giving an lr factor (PyTorch's `lr_lambda`), for [`LambdaLR`] and
/// [`MultiplicativeLR`]. Cheap to clone (an `Arc`); two `LrLambda`s are equal when they are
/// clones of the same function (pointer equality), which keeps [`Schedule`]'s `PartialEq`
/// meaningful without comparing code.
///
/// The scheduler calls it with its `last_epoch` (0 at construction), as PyTorch does.
///
/// ```
/// use wgpu_optim::LrLambda;
/// let decay = LrLambda::new(|epoch| 0.95f64.powf(epoch as f64));
/// assert_eq!(decay.call(0), 1.0);
/// assert_eq!(decay.clone(), decay); // a clone is the same function
/// assert_ne!(decay, LrLambda::new(|epoch| 0.95f64.powf(epoch as f64)));
/// ```
#[derive(Clone)]
pub struct LrLambda(Arc<dyn Fn(u64) -> f64 + Send + Sync>);

impl LrLambda {
    /// Wrap a closure.
    ///
    /// ```
    /// let half_every_10 = wgpu_optim::LrLambda::new(|epoch| 0.5f64.powf((epoch / 10) as f64));
    /// assert_eq!(half_every_10.call(25), 0.25);
    /// ```
    pub fn new(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        LrLambda(Arc::new(f))
    }

    /// The factor at `epoch`.
    ///
    /// ```
    /// let f = wgpu_optim::LrLambda::new(|epoch| 1.0 / (1.0 + epoch as f64));
    /// assert_eq!(f.call(3), 0.25);
    /// ```
    pub fn call(&self, epoch: u64) -> f64 {
        (self.0)(epoch)
    }
}

impl std::fmt::Debug for LrLambda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LrLambda({:p})", Arc::as_ptr(&self.0).cast::<()>())
    }
}

impl PartialEq for LrLambda {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<F: Fn(u64) -> f64 + Send + Sync + 'static> From<F> for LrLambda {
    fn from(f: F) -> Self {
        LrLambda::new(f)
    }
}

/// One [`LrLambda`] for every driven parameter group, or one each (PyTorch's `lr_lambda`
/// accepts a function or a list).
///
/// ```
/// use wgpu_optim::{LrLambda, LrLambdas};
/// let all: LrLambdas = LrLambda::new(|_| 0.9).into();
/// let each: LrLambdas = vec![LrLambda::new(|_| 0.9), LrLambda::new(|_| 0.99)].into();
/// assert!(matches!(all, LrLambdas::All(_)));
/// assert!(matches!(each, LrLambdas::Each(ref v) if v.len() == 2));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum LrLambdas {
    /// The same function for every group.
    All(LrLambda),
    /// One function per driven group, in group order.
    Each(Vec<LrLambda>),
}

impl From<LrLambda> for LrLambdas {
    fn from(f: LrLambda) -> Self {
        LrLambdas::All(f)
    }
}

impl From<Vec<LrLambda>> for LrLambdas {
    fn from(v: Vec<LrLambda>) -> Self {
        LrLambdas::Each(v)
    }
}

impl<const N: usize> From<[LrLambda; N]> for LrLambdas {
    fn from(v: [LrLambda; N]) -> Self {
        LrLambdas::Each(v.to_vec())
    }
}

impl LrLambdas {
    /// The functions for `n` groups; a list of another length is an
    /// [`Error::InvalidScheduler`].
    fn resolve(&self, n: usize) -> Result<Vec<LrLambda>> {
        match self {
            LrLambdas::All(f) => Ok(vec![f.clone(); n]),
            LrLambdas::Each(v) if v.len() == n => Ok(v.clone()),
            LrLambdas::Each(v) => Err(bad(
                "lr_lambda",
                v.len() as f64,
                "a list needs one function per driven parameter group",
            )),
        }
    }
}

/// Sets each group's lr to its initial lr times `lr_lambda(epoch)` (PyTorch's `LambdaLR`).
/// This is how Hugging Face's `get_linear_schedule_with_warmup` and friends are written.
///
/// ```
/// use wgpu_optim::{LambdaLR, Schedule};
/// // Linear warm-up over 100 steps, then linear decay to 0 at step 1000 (Hugging Face's
/// // get_linear_schedule_with_warmup); build a `Scheduler` with it as with any schedule.
/// let (warmup, total) = (100u64, 1000u64);
/// let sched = LambdaLR::new(move |step| {
///     if step < warmup {
///         step as f64 / warmup.max(1) as f64
///     } else {
///         (total.saturating_sub(step) as f64 / (total - warmup).max(1) as f64).max(0.0)
///     }
/// });
/// assert_eq!(sched.lr_lambda_for(0).map(|f| f.call(50)), Some(0.5));
/// Schedule::from(sched).validate(2)?; // any number of groups: one function for all
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LambdaLR {
    /// The factor function: one for every group, or one per driven group.
    pub lr_lambda: LrLambdas,
}

impl LambdaLR {
    /// One function for every group.
    ///
    /// ```
    /// let s = wgpu_optim::LambdaLR::new(|epoch| 0.95f64.powf(epoch as f64));
    /// assert_eq!(s.lr_lambda_for(1).unwrap().call(0), 1.0);
    /// ```
    pub fn new(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        LambdaLR {
            lr_lambda: LrLambdas::All(LrLambda::new(f)),
        }
    }

    /// One function per driven group, in group order.
    ///
    /// ```
    /// use wgpu_optim::{LambdaLR, LrLambda};
    /// let s = LambdaLR::per_group(vec![
    ///     LrLambda::new(|epoch| (epoch / 30) as f64),
    ///     LrLambda::new(|epoch| 0.95f64.powf(epoch as f64)),
    /// ]);
    /// assert_eq!(s.lr_lambda_for(0).unwrap().call(60), 2.0);
    /// ```
    pub fn per_group(lambdas: Vec<LrLambda>) -> Self {
        LambdaLR {
            lr_lambda: LrLambdas::Each(lambdas),
        }
    }

    /// The function driving group number `i` of the driven groups (`None` past the end of a
    /// per-group list).
    ///
    /// ```
    /// let s = wgpu_optim::LambdaLR::new(|_| 0.5);
    /// assert_eq!(s.lr_lambda_for(7).unwrap().call(1), 0.5);
    /// ```
    pub fn lr_lambda_for(&self, i: usize) -> Option<&LrLambda> {
        match &self.lr_lambda {
            LrLambdas::All(f) => Some(f),
            LrLambdas::Each(v) => v.get(i),
        }
    }
}

/// Multiplies each group's current lr by `lr_lambda(epoch)` every epoch (PyTorch's
/// `MultiplicativeLR`); construction leaves the lr as it is.
///
/// ```
/// use wgpu_optim::{MultiplicativeLR, Schedule};
/// // lr *= 0.95 every epoch (what ExponentialLR(0.95) does), written as PyTorch's example.
/// let s = MultiplicativeLR::new(|_epoch| 0.95);
/// Schedule::from(s).validate(1)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MultiplicativeLR {
    /// The factor function: one for every group, or one per driven group.
    pub lr_lambda: LrLambdas,
}

impl MultiplicativeLR {
    /// One function for every group.
    ///
    /// ```
    /// let s = wgpu_optim::MultiplicativeLR::new(|epoch| if epoch % 10 == 0 { 0.5 } else { 1.0 });
    /// assert!(matches!(s.lr_lambda, wgpu_optim::LrLambdas::All(_)));
    /// ```
    pub fn new(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        MultiplicativeLR {
            lr_lambda: LrLambdas::All(LrLambda::new(f)),
        }
    }

    /// One function per driven group, in group order.
    ///
    /// ```
    /// use wgpu_optim::{LrLambda, MultiplicativeLR};
    /// let s = MultiplicativeLR::per_group(vec![LrLambda::new(|_| 0.9), LrLambda::new(|_| 1.0)]);
    /// assert!(matches!(s.lr_lambda, wgpu_optim::LrLambdas::Each(ref v) if v.len() == 2));
    /// ```
    pub fn per_group(lambdas: Vec<LrLambda>) -> Self {
        MultiplicativeLR {
            lr_lambda: LrLambdas::Each(lambdas),
        }
    }
}

/// Multiplies the lr by `factor` until epoch `total_iters`, then restores it (PyTorch's
/// `ConstantLR`, its recursive form). Defaults are PyTorch's: 1/3, 5.
///
/// ```
/// use wgpu_optim::{ConstantLR, Schedule};
/// // lr/2 for the first 4 epochs, then the full lr.
/// let s = ConstantLR::new(0.5, 4);
/// assert_eq!(ConstantLR::default(), ConstantLR::new(1.0 / 3.0, 5));
/// Schedule::from(s).validate(1)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ConstantLR {
    /// Factor applied before epoch `total_iters`, in (0, 1].
    pub factor: f64,
    /// Epochs at the reduced lr (>= 1).
    pub total_iters: u64,
}

impl Default for ConstantLR {
    fn default() -> Self {
        ConstantLR {
            factor: 1.0 / 3.0,
            total_iters: 5,
        }
    }
}

impl ConstantLR {
    /// `factor` for `total_iters` epochs.
    ///
    /// ```
    /// let s = wgpu_optim::ConstantLR::new(0.1, 2);
    /// assert_eq!((s.factor, s.total_iters), (0.1, 2));
    /// ```
    pub fn new(factor: f64, total_iters: u64) -> Self {
        ConstantLR {
            factor,
            total_iters,
        }
    }
}

/// Decays the lr as `(1 - epoch / total_iters)^power` of the initial lr, reaching 0 at
/// `total_iters` (PyTorch's `PolynomialLR`, its recursive form). Defaults are PyTorch's: 5, 1.
///
/// ```
/// use wgpu_optim::{PolynomialLR, Schedule};
/// // Quadratic decay to 0 over 100 epochs.
/// let s = PolynomialLR::new(100, 2.0);
/// assert_eq!(PolynomialLR::default(), PolynomialLR::new(5, 1.0));
/// Schedule::from(s).validate(1)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PolynomialLR {
    /// Epochs until the lr reaches 0 (>= 1); it stays there after.
    pub total_iters: u64,
    /// The power of the polynomial (>= 0).
    pub power: f64,
}

impl Default for PolynomialLR {
    fn default() -> Self {
        PolynomialLR {
            total_iters: 5,
            power: 1.0,
        }
    }
}

impl PolynomialLR {
    /// Decay over `total_iters` epochs with `power`.
    ///
    /// ```
    /// let s = wgpu_optim::PolynomialLR::new(30, 0.5);
    /// assert_eq!((s.total_iters, s.power), (30, 0.5));
    /// ```
    pub fn new(total_iters: u64, power: f64) -> Self {
        PolynomialLR { total_iters, power }
    }
}

/// Steps several schedulers together, in order, at every step (PyTorch's `ChainedScheduler`):
/// their effects compose. They are built in order on the same groups (sharing the groups'
/// initial lrs), each taking its usual initial step, exactly as the Python objects would have
/// been built before being handed to `ChainedScheduler`.
///
/// ```
/// use wgpu_optim::{ChainedScheduler, ConstantLR, ExponentialLR, Schedule};
/// // PyTorch's example: lr * 0.1 for two epochs, and * 0.9 every epoch throughout.
/// let s = ChainedScheduler::new(vec![
///     ConstantLR::new(0.1, 2).into(),
///     ExponentialLR::new(0.9).into(),
/// ]);
/// Schedule::from(s).validate(1)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ChainedScheduler {
    /// The schedulers (at least one), stepped in this order.
    pub schedulers: Vec<Schedule>,
}

impl ChainedScheduler {
    /// Chain `schedulers`.
    ///
    /// ```
    /// use wgpu_optim::{ChainedScheduler, LinearLR, StepLR};
    /// let s = ChainedScheduler::new(vec![LinearLR::default().into(), StepLR::new(10).into()]);
    /// assert_eq!(s.schedulers.len(), 2);
    /// ```
    pub fn new(schedulers: Vec<Schedule>) -> Self {
        ChainedScheduler { schedulers }
    }
}

/// Any epoch-driven schedule; what [`Scheduler::new`] attaches. Every config converts into it
/// with `.into()`.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// [`StepLR`].
    Step(StepLR),
    /// [`MultiStepLR`].
    MultiStep(MultiStepLR),
    /// [`ExponentialLR`].
    Exponential(ExponentialLR),
    /// [`CosineAnnealingLR`].
    CosineAnnealing(CosineAnnealingLR),
    /// [`CosineAnnealingWarmRestarts`].
    CosineAnnealingWarmRestarts(CosineAnnealingWarmRestarts),
    /// [`LinearLR`].
    Linear(LinearLR),
    /// [`OneCycleLR`].
    OneCycle(OneCycleLR),
    /// [`CyclicLR`].
    Cyclic(CyclicLR),
    /// [`SequentialLR`].
    Sequential(SequentialLR),
    /// [`ConstantLR`].
    Constant(ConstantLR),
    /// [`PolynomialLR`].
    Polynomial(PolynomialLR),
    /// [`LambdaLR`].
    Lambda(LambdaLR),
    /// [`MultiplicativeLR`].
    Multiplicative(MultiplicativeLR),
    /// [`ChainedScheduler`].
    Chained(ChainedScheduler),
}

macro_rules! into_schedule {
    ($($t:ident => $v:ident),* $(,)?) => {$(
        impl From<$t> for Schedule {
            fn from(s: $t) -> Self {
                Schedule::$v(s)
            }
        }
    )*};
}

into_schedule! {
    StepLR => Step,
    MultiStepLR => MultiStep,
    ExponentialLR => Exponential,
    CosineAnnealingLR => CosineAnnealing,
    CosineAnnealingWarmRestarts => CosineAnnealingWarmRestarts,
    LinearLR => Linear,
    OneCycleLR => OneCycle,
    CyclicLR => Cyclic,
    SequentialLR => Sequential,
    ConstantLR => Constant,
    PolynomialLR => Polynomial,
    LambdaLR => Lambda,
    MultiplicativeLR => Multiplicative,
    ChainedScheduler => Chained,
}

impl Schedule {
    /// PyTorch's class name, e.g. `"OneCycleLR"`.
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Step(_) => "StepLR",
            Schedule::MultiStep(_) => "MultiStepLR",
            Schedule::Exponential(_) => "ExponentialLR",
            Schedule::CosineAnnealing(_) => "CosineAnnealingLR",
            Schedule::CosineAnnealingWarmRestarts(_) => "CosineAnnealingWarmRestarts",
            Schedule::Linear(_) => "LinearLR",
            Schedule::OneCycle(_) => "OneCycleLR",
            Schedule::Cyclic(_) => "CyclicLR",
            Schedule::Sequential(_) => "SequentialLR",
            Schedule::Constant(_) => "ConstantLR",
            Schedule::Polynomial(_) => "PolynomialLR",
            Schedule::Lambda(_) => "LambdaLR",
            Schedule::Multiplicative(_) => "MultiplicativeLR",
            Schedule::Chained(_) => "ChainedScheduler",
        }
    }

    /// Check every option against its rule, for `groups` driven groups.
    pub fn validate(&self, groups: usize) -> Result<()> {
        match self {
            Schedule::Step(s) => {
                ensure_count("step_size", s.step_size, 1, "must be >= 1")?;
                ensure("gamma", s.gamma, s.gamma > 0.0, "must be > 0")
            }
            Schedule::MultiStep(s) => {
                ensure("gamma", s.gamma, s.gamma > 0.0, "must be > 0")?;
                if let Some(w) = s.milestones.windows(2).find(|w| w[1] < w[0]) {
                    return Err(bad(
                        "milestones",
                        w[1] as f64,
                        "must be non-decreasing (a repeated milestone decays twice)",
                    ));
                }
                Ok(())
            }
            Schedule::Exponential(s) => ensure("gamma", s.gamma, s.gamma > 0.0, "must be > 0"),
            Schedule::CosineAnnealing(s) => {
                ensure_count("T_max", s.t_max, 1, "must be >= 1")?;
                ensure("eta_min", s.eta_min, s.eta_min >= 0.0, "must be >= 0")
            }
            Schedule::CosineAnnealingWarmRestarts(s) => {
                ensure_count("T_0", s.t_0, 1, "must be >= 1")?;
                ensure_count("T_mult", s.t_mult, 1, "must be >= 1")?;
                ensure("eta_min", s.eta_min, s.eta_min >= 0.0, "must be >= 0")
            }
            Schedule::Linear(s) => {
                ensure(
                    "start_factor",
                    s.start_factor,
                    s.start_factor > 0.0 && s.start_factor <= 1.0,
                    "must be in (0, 1]",
                )?;
                ensure(
                    "end_factor",
                    s.end_factor,
                    (0.0..=1.0).contains(&s.end_factor),
                    "must be in [0, 1]",
                )?;
                ensure_count("total_iters", s.total_iters, 1, "must be >= 1")
            }
            Schedule::OneCycle(s) => {
                ensure_count("total_steps", s.total_steps, 1, "must be >= 1")?;
                ensure(
                    "pct_start",
                    s.pct_start,
                    (0.0..=1.0).contains(&s.pct_start),
                    "must be in [0, 1]",
                )?;
                for v in s.max_lr.resolve("max_lr", groups)? {
                    ensure("max_lr", v, v > 0.0, "must be > 0")?;
                }
                ensure(
                    "div_factor",
                    s.div_factor,
                    s.div_factor > 0.0,
                    "must be > 0",
                )?;
                ensure(
                    "final_div_factor",
                    s.final_div_factor,
                    s.final_div_factor > 0.0,
                    "must be > 0",
                )?;
                momentum_bounds(s.cycle_momentum, &s.base_momentum, &s.max_momentum, groups)
            }
            Schedule::Cyclic(s) => {
                ensure_count("step_size_up", s.step_size_up, 1, "must be >= 1")?;
                let base = s.base_lr.resolve("base_lr", groups)?;
                let max = s.max_lr.resolve("max_lr", groups)?;
                for (b, m) in base.iter().zip(&max) {
                    ensure("base_lr", *b, *b >= 0.0, "must be >= 0")?;
                    ensure("max_lr", *m, *m >= *b, "must be >= base_lr")?;
                }
                ensure("gamma", s.gamma, s.gamma > 0.0, "must be > 0")?;
                momentum_bounds(s.cycle_momentum, &s.base_momentum, &s.max_momentum, groups)
            }
            Schedule::Sequential(s) => {
                if s.schedulers.is_empty() {
                    return Err(bad("schedulers", 0.0, "needs at least one scheduler"));
                }
                if s.milestones.len() + 1 != s.schedulers.len() {
                    return Err(bad(
                        "milestones",
                        s.milestones.len() as f64,
                        "needs exactly one milestone fewer than schedulers",
                    ));
                }
                if let Some(w) = s.milestones.windows(2).find(|w| w[1] <= w[0]) {
                    return Err(bad(
                        "milestones",
                        w[1] as f64,
                        "must be strictly increasing",
                    ));
                }
                for (i, sub) in s.schedulers.iter().enumerate() {
                    if sub.contains_sequential() {
                        return Err(bad(
                            "schedulers",
                            i as f64,
                            "a SequentialLR inside a SequentialLR is not supported",
                        ));
                    }
                    if i > 0 && matches!(sub, Schedule::Chained(_)) {
                        return Err(bad(
                            "schedulers",
                            i as f64,
                            "a ChainedScheduler can only be a SequentialLR's first scheduler \
                             (PyTorch raises NotImplementedError restarting one at a milestone)",
                        ));
                    }
                    sub.validate(groups)?;
                }
                Ok(())
            }
            Schedule::Constant(s) => {
                ensure(
                    "factor",
                    s.factor,
                    s.factor > 0.0 && s.factor <= 1.0,
                    "must be in (0, 1] (PyTorch divides by it at total_iters)",
                )?;
                ensure_count(
                    "total_iters",
                    s.total_iters,
                    1,
                    "must be >= 1 (with 0 PyTorch applies the factor forever)",
                )
            }
            Schedule::Polynomial(s) => {
                ensure_count(
                    "total_iters",
                    s.total_iters,
                    1,
                    "must be >= 1 (PyTorch's closed form divides by it)",
                )?;
                ensure(
                    "power",
                    s.power,
                    s.power >= 0.0,
                    "must be >= 0 (a negative power divides by zero at total_iters)",
                )
            }
            Schedule::Lambda(s) => s.lr_lambda.resolve(groups).map(|_| ()),
            Schedule::Multiplicative(s) => s.lr_lambda.resolve(groups).map(|_| ()),
            Schedule::Chained(s) => {
                if s.schedulers.is_empty() {
                    return Err(bad("schedulers", 0.0, "needs at least one scheduler"));
                }
                for sub in &s.schedulers {
                    sub.validate(groups)?;
                }
                Ok(())
            }
        }
    }

    /// Whether this is a SequentialLR or chains one.
    fn contains_sequential(&self) -> bool {
        match self {
            Schedule::Sequential(_) => true,
            Schedule::Chained(c) => c.schedulers.iter().any(Schedule::contains_sequential),
            _ => false,
        }
    }
}

fn momentum_bounds(cycle: bool, base: &PerGroup, max: &PerGroup, groups: usize) -> Result<()> {
    if !cycle {
        return Ok(());
    }
    let base = base.resolve("base_momentum", groups)?;
    let max = max.resolve("max_momentum", groups)?;
    for (b, m) in base.iter().zip(&max) {
        ensure("base_momentum", *b, *b >= 0.0, "must be >= 0")?;
        ensure("max_momentum", *m, *m >= 0.0, "must be >= 0")?;
    }
    Ok(())
}

/// The scheduler-visible part of the driven param groups, in f64 as PyTorch's param-group
/// dicts hold it.
#[derive(Clone, Debug, PartialEq)]
struct Vals {
    lr: Vec<f64>,
    /// PyTorch's `group["initial_lr"]`, set by the first scheduler built (SequentialLR).
    initial_lr: Vec<Option<f64>>,
    momentum: Vec<Option<f64>>,
}

/// How a scheduler is advanced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    /// PyTorch's `_initial_step()`: `last_epoch` -1 → 0 in "initial" mode.
    Initial,
    /// `step()`.
    Step,
    /// `_update_lr(0)`: SequentialLR's restart of the next scheduler at a milestone (the closed
    /// form at epoch 0 where one exists).
    ZeroEpoch,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Phase {
    end_step: f64,
    start_lr: Pt,
    end_lr: Pt,
    start_momentum: Pt,
    end_momentum: Pt,
}

/// OneCycleLR's named points (`group["initial_lr"]`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pt {
    InitialLr,
    MaxLr,
    MinLr,
    MaxMomentum,
    BaseMomentum,
}

#[derive(Clone, Debug)]
struct OneCycleState {
    initial_lr: Vec<f64>,
    max_lr: Vec<f64>,
    min_lr: Vec<f64>,
    /// (base, max) momentum per group when cycling.
    momentum: Option<(Vec<f64>, Vec<f64>)>,
    phases: Vec<Phase>,
}

impl OneCycleState {
    fn point(&self, p: Pt, g: usize) -> f64 {
        let m = self.momentum.as_ref();
        match p {
            Pt::InitialLr => self.initial_lr[g],
            Pt::MaxLr => self.max_lr[g],
            Pt::MinLr => self.min_lr[g],
            Pt::BaseMomentum => m.map_or(0.0, |m| m.0[g]),
            Pt::MaxMomentum => m.map_or(0.0, |m| m.1[g]),
        }
    }
}

#[derive(Clone, Debug)]
struct CyclicState {
    max_lrs: Vec<f64>,
    total_size: f64,
    step_ratio: f64,
    /// (base, max) momentum per group when cycling.
    momentum: Option<(Vec<f64>, Vec<f64>)>,
}

#[derive(Clone, Debug)]
enum Kind {
    Step(StepLR),
    MultiStep(MultiStepLR),
    Exponential(ExponentialLR),
    Cosine(CosineAnnealingLR),
    WarmRestarts {
        cfg: CosineAnnealingWarmRestarts,
        t_cur: i64,
        t_i: i64,
    },
    Linear(LinearLR),
    OneCycle(OneCycleLR, Box<OneCycleState>),
    Cyclic(CyclicLR, CyclicState),
    Sequential {
        subs: Vec<Scheduler>,
        milestones: Vec<i64>,
    },
    Constant(ConstantLR),
    Polynomial(PolynomialLR),
    Lambda(Vec<LrLambda>),
    Multiplicative(Vec<LrLambda>),
    Chained {
        subs: Vec<Scheduler>,
    },
}

/// An epoch-driven [`Schedule`] attached to (some groups of) an optimizer. Implements
/// [`LrScheduler`].
///
/// The scheduler does not hold the optimizer: pass the same one to every
/// [`LrScheduler::step`], as PyTorch's scheduler holds the one it was built with.
#[derive(Clone, Debug)]
pub struct Scheduler {
    name: &'static str,
    groups: Vec<usize>,
    kind: Kind,
    base_lrs: Vec<f64>,
    last_epoch: i64,
    /// PyTorch's `_step_count`.
    step_count: u64,
    last_lr: Vec<f64>,
    /// The driven groups' momenta after the last attach or step (kept for [`Scheduler::state`]
    /// where the schedule cycles momentum; empty in the schedulers inside a Sequential/Chained).
    momentum: Vec<Option<f64>>,
}

/// Read the driven groups' lrs and momenta. `shadow`: the f64 lrs this scheduler last wrote,
/// used where the optimizer still holds them (rounded to f32).
fn read_vals(opt: &dyn Optimizer, groups: &[usize], shadow: Option<&[f64]>) -> Result<Vals> {
    let mut v = Vals {
        lr: Vec::with_capacity(groups.len()),
        initial_lr: vec![None; groups.len()],
        momentum: Vec::with_capacity(groups.len()),
    };
    for (i, &g) in groups.iter().enumerate() {
        let lr = opt.group_lr(g)?;
        v.lr.push(match shadow.map(|s| s[i]) {
            Some(s) if s as f32 == lr => s,
            _ => widen(lr),
        });
        v.momentum.push(opt.group_momentum(g)?.map(widen));
    }
    Ok(v)
}

/// Write `after` to the optimizer: every lr, and each momentum that changed from `before`.
/// All or nothing: on an error every group gets its old values back.
fn apply(
    opt: &mut dyn Optimizer,
    scheduler: &'static str,
    groups: &[usize],
    before: &Vals,
    after: &Vals,
) -> Result<()> {
    let mut old = Vec::with_capacity(groups.len());
    for &g in groups {
        old.push((opt.group_lr(g)?, opt.group_momentum(g)?));
    }
    let optimizer = opt.name();
    let mut result = Ok(());
    for (i, &g) in groups.iter().enumerate() {
        result = opt.set_group_lr(g, after.lr[i] as f32);
        if result.is_err() {
            break;
        }
        if let Some(m) = after.momentum[i].filter(|&m| Some(m) != before.momentum[i]) {
            result = opt.set_group_momentum(g, m as f32).map_err(|e| match e {
                Error::InvalidOptions(reason) => Error::NoMomentum {
                    scheduler,
                    optimizer,
                    group: g,
                    reason,
                },
                e => e,
            });
            if result.is_err() {
                break;
            }
        }
    }
    if result.is_err() {
        for (&g, &(lr, m)) in groups.iter().zip(&old) {
            let _ = opt.set_group_lr(g, lr);
            if let Some(m) = m {
                let _ = opt.set_group_momentum(g, m);
            }
        }
    }
    result
}

impl Scheduler {
    /// Attach `schedule` to every parameter group of `opt` and take PyTorch's initial step
    /// (which sets the lrs of epoch 0). Validates every option first; an `Err` leaves `opt`
    /// unchanged.
    pub fn new(opt: &mut dyn Optimizer, schedule: impl Into<Schedule>) -> Result<Self> {
        let groups: Vec<usize> = (0..opt.group_count()).collect();
        Self::attach(opt, groups, schedule.into())
    }

    /// Attach `schedule` to parameter group `group` only (the others are left alone); per-group
    /// options ([`PerGroup`]) then have one value.
    pub fn for_group(
        opt: &mut dyn Optimizer,
        group: usize,
        schedule: impl Into<Schedule>,
    ) -> Result<Self> {
        Self::attach(opt, vec![group], schedule.into())
    }

    fn attach(opt: &mut dyn Optimizer, groups: Vec<usize>, schedule: Schedule) -> Result<Self> {
        schedule.validate(groups.len())?;
        let before = read_vals(opt, &groups, None)?;
        let mut vals = before.clone();
        let mut sched = Self::build(&schedule, &groups, &mut vals, opt.name())?;
        apply(opt, sched.name, &groups, &before, &vals)?;
        sched.momentum = vals.momentum;
        Ok(sched)
    }

    /// PyTorch's `__init__` of the scheduler, on the mirrored group values.
    fn build(
        schedule: &Schedule,
        groups: &[usize],
        vals: &mut Vals,
        optimizer: &'static str,
    ) -> Result<Self> {
        let n = groups.len();
        let name = schedule.name();
        let no_momentum = |i: usize| Error::NoMomentum {
            scheduler: name,
            optimizer,
            group: groups[i],
            reason: "it has no momentum-like coefficient".into(),
        };
        // Steps PyTorch's subclasses take before `LRScheduler.__init__`.
        let kind = match schedule {
            Schedule::Step(s) => Kind::Step(s.clone()),
            Schedule::MultiStep(s) => Kind::MultiStep(s.clone()),
            Schedule::Exponential(s) => Kind::Exponential(s.clone()),
            Schedule::CosineAnnealing(s) => Kind::Cosine(s.clone()),
            Schedule::Linear(s) => Kind::Linear(s.clone()),
            Schedule::CosineAnnealingWarmRestarts(s) => Kind::WarmRestarts {
                cfg: s.clone(),
                t_cur: -1,
                t_i: s.t_0 as i64,
            },
            Schedule::OneCycle(s) => {
                let max_lr = s.max_lr.resolve("max_lr", n)?;
                let initial_lr: Vec<f64> = max_lr.iter().map(|m| m / s.div_factor).collect();
                let min_lr = initial_lr.iter().map(|l| l / s.final_div_factor).collect();
                for (slot, &l) in vals.initial_lr.iter_mut().zip(&initial_lr) {
                    *slot = Some(l);
                }
                let momentum = if s.cycle_momentum {
                    let max = s.max_momentum.resolve("max_momentum", n)?;
                    let base = s.base_momentum.resolve("base_momentum", n)?;
                    for (i, &m) in max.iter().enumerate() {
                        let slot = &mut vals.momentum[i];
                        if slot.is_none() {
                            return Err(no_momentum(i));
                        }
                        *slot = Some(m);
                    }
                    Some((base, max))
                } else {
                    None
                };
                let t = s.total_steps as f64;
                let p = |end_step, start_lr, end_lr, start_momentum, end_momentum| Phase {
                    end_step,
                    start_lr,
                    end_lr,
                    start_momentum,
                    end_momentum,
                };
                use Pt::*;
                let phases = if s.three_phase {
                    vec![
                        p(
                            s.pct_start * t - 1.0,
                            InitialLr,
                            MaxLr,
                            MaxMomentum,
                            BaseMomentum,
                        ),
                        p(
                            2.0 * s.pct_start * t - 2.0,
                            MaxLr,
                            InitialLr,
                            BaseMomentum,
                            MaxMomentum,
                        ),
                        p(t - 1.0, InitialLr, MinLr, MaxMomentum, MaxMomentum),
                    ]
                } else {
                    vec![
                        p(
                            s.pct_start * t - 1.0,
                            InitialLr,
                            MaxLr,
                            MaxMomentum,
                            BaseMomentum,
                        ),
                        p(t - 1.0, MaxLr, MinLr, BaseMomentum, MaxMomentum),
                    ]
                };
                Kind::OneCycle(
                    s.clone(),
                    Box::new(OneCycleState {
                        initial_lr,
                        max_lr,
                        min_lr,
                        momentum,
                        phases,
                    }),
                )
            }
            Schedule::Cyclic(s) => {
                let base_lrs = s.base_lr.resolve("base_lr", n)?;
                vals.lr.clone_from(&base_lrs);
                let up = s.step_size_up as f64;
                let down = s.step_size_down.map_or(up, |d| d as f64);
                let total_size = up + down;
                let momentum = if s.cycle_momentum {
                    let base = s.base_momentum.resolve("base_momentum", n)?;
                    let max = s.max_momentum.resolve("max_momentum", n)?;
                    for (i, &m) in max.iter().enumerate() {
                        let slot = &mut vals.momentum[i];
                        if slot.is_none() {
                            return Err(no_momentum(i));
                        }
                        *slot = Some(m);
                    }
                    Some((base, max))
                } else {
                    None
                };
                Kind::Cyclic(
                    s.clone(),
                    CyclicState {
                        max_lrs: s.max_lr.resolve("max_lr", n)?,
                        total_size,
                        step_ratio: up / total_size,
                        momentum,
                    },
                )
            }
            Schedule::Sequential(s) => return Self::build_sequential(s, groups, vals, optimizer),
            Schedule::Chained(s) => return Self::build_chained(s, groups, vals, optimizer),
            Schedule::Constant(s) => Kind::Constant(s.clone()),
            Schedule::Polynomial(s) => Kind::Polynomial(s.clone()),
            Schedule::Lambda(s) => Kind::Lambda(s.lr_lambda.resolve(n)?),
            Schedule::Multiplicative(s) => Kind::Multiplicative(s.lr_lambda.resolve(n)?),
        };
        // `LRScheduler.__init__`: `initial_lr` (setdefault), `base_lrs`, the initial step.
        for (slot, &lr) in vals.initial_lr.iter_mut().zip(&vals.lr) {
            slot.get_or_insert(lr);
        }
        let mut sched = Scheduler {
            name,
            groups: groups.to_vec(),
            kind,
            base_lrs: vals.initial_lr.iter().map(|l| l.unwrap_or(0.0)).collect(),
            last_epoch: -1,
            step_count: 0,
            last_lr: vals.lr.clone(),
            momentum: Vec::new(),
        };
        sched.advance(vals, How::Initial)?;
        // CyclicLR sets its base lrs after its (initial-lr based) initial step.
        if let Schedule::Cyclic(s) = schedule {
            sched.base_lrs = s.base_lr.resolve("base_lr", n)?;
        }
        Ok(sched)
    }

    /// SequentialLR's `__init__`: the schedulers were built in order on the same groups; reset
    /// the lrs to the initial ones, undo one epoch of every scheduler, and take the initial step
    /// of the one active at epoch 0.
    fn build_sequential(
        s: &SequentialLR,
        groups: &[usize],
        vals: &mut Vals,
        optimizer: &'static str,
    ) -> Result<Self> {
        let mut subs = Vec::with_capacity(s.schedulers.len());
        for sub in &s.schedulers {
            subs.push(Self::build(sub, groups, vals, optimizer)?);
        }
        for (lr, init) in vals.lr.iter_mut().zip(&vals.initial_lr) {
            *lr = init.unwrap_or(*lr);
        }
        for sub in &mut subs {
            sub.undo();
        }
        let milestones: Vec<i64> = s
            .milestones
            .iter()
            .map(|&m| i64::try_from(m).unwrap_or(i64::MAX))
            .collect();
        let idx = milestones.partition_point(|&m| m <= 0);
        subs[idx].step_count = 0;
        subs[idx].advance(vals, How::Initial)?;
        Ok(Scheduler {
            name: "SequentialLR",
            groups: groups.to_vec(),
            base_lrs: vals.initial_lr.iter().map(|l| l.unwrap_or(0.0)).collect(),
            last_lr: subs[idx].last_lr.clone(),
            kind: Kind::Sequential { subs, milestones },
            last_epoch: 0,
            step_count: 1,
            momentum: Vec::new(),
        })
    }

    /// ChainedScheduler's construction: the schedulers were built in order on the same groups
    /// (each with its initial step); the chain itself changes nothing.
    fn build_chained(
        s: &ChainedScheduler,
        groups: &[usize],
        vals: &mut Vals,
        optimizer: &'static str,
    ) -> Result<Self> {
        let mut subs = Vec::with_capacity(s.schedulers.len());
        for sub in &s.schedulers {
            subs.push(Self::build(sub, groups, vals, optimizer)?);
        }
        Ok(Scheduler {
            name: "ChainedScheduler",
            groups: groups.to_vec(),
            base_lrs: vals.initial_lr.iter().map(|l| l.unwrap_or(0.0)).collect(),
            last_lr: vals.lr.clone(),
            kind: Kind::Chained { subs },
            last_epoch: 0,
            step_count: 0,
            momentum: Vec::new(),
        })
    }

    /// SequentialLR's `recursive_undo`: one epoch back, in every scheduler of a chain.
    fn undo(&mut self) {
        match &mut self.kind {
            Kind::Chained { subs } | Kind::Sequential { subs, .. } => {
                subs.iter_mut().for_each(Scheduler::undo)
            }
            _ => self.last_epoch -= 1,
        }
    }

    /// PyTorch's `step()` / `_initial_step()` / `_update_lr(0)` on the mirrored group values.
    fn advance(&mut self, vals: &mut Vals, how: How) -> Result<()> {
        if let Kind::Sequential { subs, milestones } = &mut self.kind {
            debug_assert_eq!(how, How::Step, "SequentialLR is never restarted");
            self.last_epoch += 1;
            let e = self.last_epoch;
            let idx = milestones.partition_point(|&m| m <= e);
            let zero = idx > 0 && milestones[idx - 1] == e;
            let sub = &mut subs[idx];
            sub.advance(vals, if zero { How::ZeroEpoch } else { How::Step })?;
            self.last_lr.clone_from(&sub.last_lr);
            return Ok(());
        }
        if let Kind::Chained { subs } = &mut self.kind {
            // ChainedScheduler has no `get_lr`: PyTorch's `_update_lr(0)` (SequentialLR's restart)
            // raises on it, which validation rules out. Its `_initial_step` (as a SequentialLR's
            // first scheduler) calls its `step()`, which steps every scheduler normally.
            match how {
                How::ZeroEpoch => {
                    return Err(bad(
                        "schedulers",
                        0.0,
                        "a ChainedScheduler cannot be restarted at a SequentialLR milestone",
                    ))
                }
                How::Initial => {
                    self.last_epoch = 0;
                    self.step_count = 1;
                }
                How::Step => {
                    self.last_epoch += 1;
                    self.step_count += 1;
                }
            }
            for sub in subs.iter_mut() {
                sub.advance(vals, How::Step)?;
            }
            self.last_lr.clone_from(&vals.lr);
            return Ok(());
        }
        // CosineAnnealingWarmRestarts overrides `step` (not `_update_lr`, which SequentialLR's
        // restart uses: that one keeps the stale `T_cur`, as in PyTorch).
        let restarts_step = match &mut self.kind {
            Kind::WarmRestarts { cfg, t_cur, t_i } if how != How::ZeroEpoch => {
                if self.last_epoch < 0 {
                    *t_i = cfg.t_0 as i64;
                    *t_cur = 0;
                    self.last_epoch = 0;
                } else {
                    self.last_epoch += 1;
                    *t_cur += 1;
                    if *t_cur >= *t_i {
                        *t_cur %= *t_i;
                        *t_i = t_i.saturating_mul(epoch_of(cfg.t_mult));
                    }
                }
                true
            }
            _ => false,
        };
        let lrs = match how {
            _ if restarts_step => self.get_lr(vals, false)?,
            How::Initial => {
                self.step_count = 1;
                self.last_epoch += 1;
                self.get_lr(vals, true)?
            }
            How::Step => {
                self.step_count += 1;
                self.last_epoch += 1;
                self.get_lr(vals, false)?
            }
            How::ZeroEpoch => {
                self.last_epoch = 0;
                match self.closed_form() {
                    Some(lrs) => lrs,
                    None => self.get_lr(vals, false)?,
                }
            }
        };
        vals.lr = lrs;
        self.last_lr.clone_from(&vals.lr);
        Ok(())
    }

    /// PyTorch's `get_lr()` (which for the cycling schedulers also sets the momentum).
    fn get_lr(&self, vals: &mut Vals, initial: bool) -> Result<Vec<f64>> {
        let e = self.last_epoch;
        let cur = &vals.lr;
        let base = &self.base_lrs;
        Ok(match &self.kind {
            Kind::Step(s) => {
                if e == 0 || e % s.step_size as i64 != 0 {
                    cur.clone()
                } else {
                    cur.iter().map(|lr| lr * s.gamma).collect()
                }
            }
            Kind::MultiStep(s) => {
                let count = s
                    .milestones
                    .iter()
                    .filter(|&&m| m as i128 == e as i128)
                    .count();
                if count == 0 {
                    cur.clone()
                } else {
                    let f = s.gamma.powf(count as f64);
                    cur.iter().map(|lr| lr * f).collect()
                }
            }
            Kind::Exponential(s) => {
                if initial {
                    cur.clone()
                } else {
                    cur.iter().map(|lr| lr * s.gamma).collect()
                }
            }
            Kind::Cosine(s) => {
                let (t, eta) = (s.t_max as f64, s.eta_min);
                if initial {
                    cur.clone()
                } else if self.step_count == 1 && e > 0 {
                    base.iter()
                        .map(|b| eta + (b - eta) * (1.0 + (e as f64 * PI / t).cos()) / 2.0)
                        .collect()
                } else if (e - 1 - s.t_max as i64).rem_euclid(2 * s.t_max as i64) == 0 {
                    let c = (PI / t).cos();
                    cur.iter()
                        .zip(base)
                        .map(|(lr, b)| lr + (b - eta) * (1.0 - c) / 2.0)
                        .collect()
                } else {
                    let ratio =
                        (1.0 + (PI * e as f64 / t).cos()) / (1.0 + (PI * (e - 1) as f64 / t).cos());
                    cur.iter().map(|lr| ratio * (lr - eta) + eta).collect()
                }
            }
            Kind::Linear(s) => {
                if e == 0 {
                    cur.iter().map(|lr| lr * s.start_factor).collect()
                } else if initial || e > s.total_iters as i64 {
                    cur.clone()
                } else {
                    let d = s.end_factor - s.start_factor;
                    let f = 1.0 + d / (s.total_iters as f64 * s.start_factor + (e - 1) as f64 * d);
                    cur.iter().map(|lr| lr * f).collect()
                }
            }
            Kind::WarmRestarts { cfg, t_cur, t_i } => {
                let eta = cfg.eta_min;
                let c = (PI * *t_cur as f64 / *t_i as f64).cos();
                base.iter()
                    .map(|b| eta + (b - eta) * (1.0 + c) / 2.0)
                    .collect()
            }
            Kind::Cyclic(s, st) => {
                let q = e as f64 / st.total_size;
                let cycle = (1.0 + q).floor();
                let x = 1.0 + q - cycle;
                let scale_factor = if x <= st.step_ratio {
                    x / st.step_ratio
                } else {
                    (x - 1.0) / (st.step_ratio - 1.0)
                };
                let scale = match s.mode {
                    CyclicMode::Triangular => 1.0,
                    CyclicMode::Triangular2 => 1.0 / 2f64.powf(cycle - 1.0),
                    CyclicMode::ExpRange => s.gamma.powf(e as f64),
                };
                if let Some((bm, mm)) = &st.momentum {
                    for (i, slot) in vals.momentum.iter_mut().enumerate() {
                        let h = (mm[i] - bm[i]) * scale_factor;
                        *slot = Some(mm[i] - h * scale);
                    }
                }
                base.iter()
                    .zip(&st.max_lrs)
                    .map(|(b, m)| b + (m - b) * scale_factor * scale)
                    .collect()
            }
            Kind::OneCycle(s, st) => {
                if e > s.total_steps as i64 {
                    return Err(Error::ScheduleExhausted {
                        scheduler: self.name,
                        step: e,
                        total_steps: s.total_steps,
                    });
                }
                let step_num = e as f64;
                let anneal = |start: f64, end: f64, pct: f64| match s.anneal_strategy {
                    AnnealStrategy::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
                    AnnealStrategy::Linear => (end - start) * pct + start,
                };
                let mut lrs = Vec::with_capacity(cur.len());
                for g in 0..cur.len() {
                    let mut start_step = 0.0;
                    let last = st.phases.len() - 1;
                    for (i, ph) in st.phases.iter().enumerate() {
                        if step_num <= ph.end_step || i == last {
                            if ph.end_step == start_step {
                                return Err(bad(
                                    "pct_start",
                                    s.pct_start,
                                    "gives OneCycleLR a phase of zero steps (PyTorch divides by zero)",
                                ));
                            }
                            let pct = (step_num - start_step) / (ph.end_step - start_step);
                            let lr = anneal(st.point(ph.start_lr, g), st.point(ph.end_lr, g), pct);
                            // Only the extrapolated step `total_steps` of a linear schedule can
                            // go below zero (see the module docs).
                            lrs.push(lr.max(0.0));
                            if st.momentum.is_some() {
                                vals.momentum[g] = Some(anneal(
                                    st.point(ph.start_momentum, g),
                                    st.point(ph.end_momentum, g),
                                    pct,
                                ));
                            }
                            break;
                        }
                        start_step = ph.end_step;
                    }
                }
                lrs
            }
            Kind::Constant(s) => {
                if e == 0 {
                    cur.iter().map(|lr| lr * s.factor).collect()
                } else if e != epoch_of(s.total_iters) {
                    cur.clone()
                } else {
                    let f = 1.0 / s.factor;
                    cur.iter().map(|lr| lr * f).collect()
                }
            }
            Kind::Polynomial(s) => {
                if initial || e > epoch_of(s.total_iters) {
                    cur.clone()
                } else {
                    let t = s.total_iters as f64;
                    let decay = ((1.0 - e as f64 / t) / (1.0 - (e - 1) as f64 / t)).powf(s.power);
                    cur.iter().map(|lr| lr * decay).collect()
                }
            }
            Kind::Lambda(fs) => {
                let epoch = u64::try_from(e).unwrap_or(0);
                base.iter()
                    .zip(fs)
                    .map(|(b, f)| b * f.call(epoch))
                    .collect()
            }
            Kind::Multiplicative(fs) => {
                if initial {
                    cur.clone()
                } else {
                    let epoch = u64::try_from(e).unwrap_or(0);
                    cur.iter()
                        .zip(fs)
                        .map(|(lr, f)| lr * f.call(epoch))
                        .collect()
                }
            }
            Kind::Sequential { .. } | Kind::Chained { .. } => {
                unreachable!("SequentialLR and ChainedScheduler delegate to their schedulers")
            }
        })
    }

    /// PyTorch's `_get_closed_form_lr()` at `last_epoch`, for the schedulers that have one.
    fn closed_form(&self) -> Option<Vec<f64>> {
        let e = self.last_epoch;
        let map = |f: &dyn Fn(f64) -> f64| Some(self.base_lrs.iter().map(|&b| f(b)).collect());
        match &self.kind {
            Kind::Step(s) => map(&|b| b * s.gamma.powf((e / s.step_size as i64) as f64)),
            Kind::MultiStep(s) => {
                let k = s
                    .milestones
                    .iter()
                    .filter(|&&m| m as i128 <= e as i128)
                    .count();
                map(&|b| b * s.gamma.powf(k as f64))
            }
            Kind::Exponential(s) => map(&|b| b * s.gamma.powf(e as f64)),
            Kind::Cosine(s) => map(&|b| {
                s.eta_min + (b - s.eta_min) * (1.0 + (PI * e as f64 / s.t_max as f64).cos()) / 2.0
            }),
            Kind::Linear(s) => map(&|b| {
                let t = s.total_iters as i64;
                b * (s.start_factor
                    + (s.end_factor - s.start_factor) * t.min(e) as f64 / s.total_iters as f64)
            }),
            Kind::Constant(s) => map(&|b| {
                // Python's `(last_epoch >= total_iters) * (1 - factor)`: a bool times a float.
                let after = if e >= epoch_of(s.total_iters) {
                    1.0 - s.factor
                } else {
                    0.0
                };
                b * (s.factor + after)
            }),
            Kind::Polynomial(s) => map(&|b| {
                let t = epoch_of(s.total_iters);
                b * (1.0 - t.min(e) as f64 / s.total_iters as f64).powf(s.power)
            }),
            _ => None,
        }
    }

    /// The PyTorch class name of the schedule, e.g. `"CosineAnnealingLR"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The optimizer groups this scheduler drives.
    pub fn groups(&self) -> &[usize] {
        &self.groups
    }

    /// The lrs as last computed, in f64 (PyTorch's `get_last_lr()` returns these Python
    /// floats; the optimizer holds them rounded to f32).
    pub fn last_lr_f64(&self) -> &[f64] {
        &self.last_lr
    }
}

/// Largest epoch or counter a loaded state may hold: far beyond any schedule, and far enough
/// below `i64::MAX` that stepping on cannot overflow.
const MAX_STATE_EPOCH: i64 = 1 << 53;

/// What a [`Scheduler`] needs to continue exactly where it was (PyTorch's
/// `scheduler.state_dict()`): its counters and lrs, and those of every scheduler inside a
/// SequentialLR or ChainedScheduler. Serializable with serde (JSON numbers round-trip exactly);
/// [`crate::checkpoint::save_with_schedulers`] stores it in a checkpoint.
///
/// The options are not part of the state, and neither are [`LrLambda`]s: load a state into a
/// scheduler built with the same schedule (the same options and functions), as PyTorch's
/// `load_state_dict` expects for lambdas. Everything else a scheduler holds (OneCycleLR's phases,
/// CyclicLR's bounds, ...) is a function of its options.
///
/// ```no_run
/// use wgpu_optim::{Gpu, LrScheduler, Params, Scheduler, SchedulerState, Sgd, SgdConfig, StepLR};
///
/// let gpu = Gpu::new()?;
/// let params = Params::zeros(&gpu, &[("w", 10)])?;
/// let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
/// let mut sched = Scheduler::new(&mut opt, StepLR::new(3))?;
/// for _ in 0..5 {
///     sched.step(&mut opt)?;
/// }
/// let saved: String = serde_json::to_string(&sched.state()).unwrap();
///
/// // Later: the same schedule on a fresh optimizer, then the saved state.
/// let mut opt2 = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
/// let mut resumed = Scheduler::new(&mut opt2, StepLR::new(3))?;
/// let state: SchedulerState = serde_json::from_str(&saved).unwrap();
/// resumed.load_state(&mut opt2, &state)?;
/// assert_eq!((resumed.last_epoch(), resumed.last_lr()), (5, sched.last_lr()));
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SchedulerState {
    /// PyTorch's class name, e.g. `CosineAnnealingLR`.
    pub kind: String,
    /// The optimizer groups driven.
    pub groups: Vec<usize>,
    /// PyTorch's `last_epoch` (steps taken; -1 for a scheduler of a SequentialLR that has not
    /// started yet).
    pub last_epoch: i64,
    /// PyTorch's `_step_count`.
    pub step_count: u64,
    /// PyTorch's `base_lrs`, in f64.
    pub base_lrs: Vec<f64>,
    /// The lrs as last set, in f64 (PyTorch's `_last_lr`).
    pub last_lr: Vec<f64>,
    /// CosineAnnealingWarmRestarts's `T_cur` (absent for the other kinds).
    #[serde(rename = "T_cur", default, skip_serializing_if = "Option::is_none")]
    pub t_cur: Option<i64>,
    /// CosineAnnealingWarmRestarts's `T_i` (absent for the other kinds).
    #[serde(rename = "T_i", default, skip_serializing_if = "Option::is_none")]
    pub t_i: Option<i64>,
    /// The driven groups' momenta as last set, where the schedule cycles momentum (CyclicLR,
    /// OneCycleLR, or a SequentialLR / ChainedScheduler with one of them); in the outermost
    /// state only. PyTorch keeps these in the optimizer's param groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<Vec<f64>>,
    /// The states of a SequentialLR's or ChainedScheduler's schedulers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedulers: Vec<SchedulerState>,
}

fn state_err(what: impl Into<String>, expected: impl ToString, got: impl ToString) -> Error {
    Error::SchedulerState {
        what: what.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// `values` has one entry per driven group, each finite and >= 0.
fn check_state_values(what: &str, values: &[f64], groups: usize) -> Result<()> {
    if values.len() != groups {
        return Err(state_err(
            what,
            format!("{groups} values (one per driven group)"),
            values.len(),
        ));
    }
    match values.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        Some(i) => Err(state_err(
            format!("{what}[{i}]"),
            "a finite value >= 0",
            values[i],
        )),
        None => Ok(()),
    }
}

fn check_state_count(what: &str, value: i64, min: i64) -> Result<()> {
    if (min..=MAX_STATE_EPOCH).contains(&value) {
        Ok(())
    } else {
        Err(state_err(
            what,
            format!("a count in {min}..={MAX_STATE_EPOCH}"),
            value,
        ))
    }
}

impl Scheduler {
    /// The state to save next to the optimizer's (PyTorch's `scheduler.state_dict()`); load it
    /// with [`Scheduler::load_state`] to continue exactly.
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, CosineAnnealingLR, Gpu, LrScheduler, Params, Scheduler};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 10)])?;
    /// let mut opt = Adam::new(&params, AdamConfig::default())?;
    /// let mut sched = Scheduler::new(&mut opt, CosineAnnealingLR::new(50))?;
    /// sched.step(&mut opt)?;
    /// let state = sched.state();
    /// assert_eq!((state.kind.as_str(), state.last_epoch), ("CosineAnnealingLR", 1));
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn state(&self) -> SchedulerState {
        let mut state = self.state_of();
        if self.cycles_momentum() {
            state.momentum = self.momentum.iter().copied().collect();
        }
        state
    }

    fn state_of(&self) -> SchedulerState {
        let (t_cur, t_i) = match &self.kind {
            Kind::WarmRestarts { t_cur, t_i, .. } => (Some(*t_cur), Some(*t_i)),
            _ => (None, None),
        };
        SchedulerState {
            kind: self.name.to_string(),
            groups: self.groups.clone(),
            last_epoch: self.last_epoch,
            step_count: self.step_count,
            base_lrs: self.base_lrs.clone(),
            last_lr: self.last_lr.clone(),
            t_cur,
            t_i,
            momentum: None,
            schedulers: self.subs().iter().map(Scheduler::state_of).collect(),
        }
    }

    /// Continue from a saved [`Scheduler::state`] (PyTorch's `load_state_dict`): the counters
    /// and lrs of this scheduler and of every scheduler inside it are replaced, and the saved
    /// lrs (and, where the schedule cycles momentum, momenta) are written to the driven groups
    /// of `opt`, so that the next [`LrScheduler::step`] gives the same bits as it would have
    /// given without the interruption. Build the scheduler with the same schedule first
    /// (construction's initial step is overwritten here, so it may come before or after
    /// restoring the optimizer from a checkpoint).
    ///
    /// The state must come from the same kind of schedule, driving the same groups, with the same
    /// chain of schedulers inside, and hold finite lrs: anything else is an
    /// [`Error::SchedulerState`], and an `Err` changes neither the scheduler nor `opt`.
    ///
    /// ```no_run
    /// use wgpu_optim::{
    ///     Gpu, LambdaLR, LrScheduler, Optimizer, Params, Schedule, Scheduler, Sgd, SgdConfig,
    /// };
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 10)])?;
    /// let warmup = || Schedule::from(LambdaLR::new(|e| ((e + 1) as f64 / 10.0).min(1.0)));
    /// let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
    /// let mut sched = Scheduler::new(&mut opt, warmup())?;
    /// for _ in 0..4 {
    ///     sched.step(&mut opt)?;
    /// }
    /// let state = sched.state();
    ///
    /// let mut opt2 = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
    /// let mut resumed = Scheduler::new(&mut opt2, warmup())?; // the same function again
    /// resumed.load_state(&mut opt2, &state)?;
    /// sched.step(&mut opt)?;
    /// resumed.step(&mut opt2)?;
    /// assert_eq!(opt.lr(), opt2.lr());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn load_state(&mut self, opt: &mut dyn Optimizer, state: &SchedulerState) -> Result<()> {
        self.check_state(state, "")?;
        let n = self.groups.len();
        match (self.cycles_momentum(), &state.momentum) {
            (true, Some(m)) => check_state_values("momentum", m, n)?,
            (false, None) => {}
            (true, None) => {
                return Err(state_err(
                    "momentum",
                    "one value per driven group (the schedule cycles momentum)",
                    "none",
                ))
            }
            (false, Some(m)) => {
                return Err(state_err(
                    "momentum",
                    "none (the schedule does not cycle momentum)",
                    format!("{m:?}"),
                ))
            }
        }
        let before = read_vals(opt, &self.groups, None)?;
        let mut after = before.clone();
        after.lr.clone_from(&state.last_lr);
        if let Some(m) = &state.momentum {
            after.momentum = m.iter().map(|&m| Some(m)).collect();
        }
        apply(opt, self.name, &self.groups, &before, &after)?;
        self.set_state(state);
        self.momentum = after.momentum;
        Ok(())
    }

    /// The schedulers inside a SequentialLR or ChainedScheduler.
    fn subs(&self) -> &[Scheduler] {
        match &self.kind {
            Kind::Sequential { subs, .. } | Kind::Chained { subs } => subs,
            _ => &[],
        }
    }

    /// Whether stepping writes momenta (CyclicLR / OneCycleLR with `cycle_momentum`).
    fn cycles_momentum(&self) -> bool {
        match &self.kind {
            Kind::Cyclic(_, st) => st.momentum.is_some(),
            Kind::OneCycle(_, st) => st.momentum.is_some(),
            _ => self.subs().iter().any(Scheduler::cycles_momentum),
        }
    }

    /// Everything [`Scheduler::set_state`] needs holds; `path` prefixes the names in errors.
    fn check_state(&self, st: &SchedulerState, path: &str) -> Result<()> {
        if st.kind != self.name {
            return Err(state_err(format!("{path}kind"), self.name, &st.kind));
        }
        if st.groups != self.groups {
            return Err(state_err(
                format!("{path}groups"),
                format!("{:?}", self.groups),
                format!("{:?}", st.groups),
            ));
        }
        let n = self.groups.len();
        check_state_values(&format!("{path}base_lrs"), &st.base_lrs, n)?;
        check_state_values(&format!("{path}last_lr"), &st.last_lr, n)?;
        check_state_count(&format!("{path}last_epoch"), st.last_epoch, -1)?;
        match (&self.kind, st.t_cur, st.t_i) {
            (Kind::WarmRestarts { .. }, Some(t_cur), Some(t_i)) => {
                check_state_count(&format!("{path}T_cur"), t_cur, -1)?;
                check_state_count(&format!("{path}T_i"), t_i, 1)?;
            }
            (Kind::WarmRestarts { .. }, ..) => {
                return Err(state_err(
                    format!("{path}T_cur, T_i"),
                    "both (CosineAnnealingWarmRestarts)",
                    "none or one",
                ))
            }
            (_, None, None) => {}
            _ => {
                return Err(state_err(
                    format!("{path}T_cur, T_i"),
                    format!("none ({} has neither)", self.name),
                    format!("{:?}, {:?}", st.t_cur, st.t_i),
                ))
            }
        }
        let subs = self.subs();
        if st.schedulers.len() != subs.len() {
            return Err(state_err(
                format!("{path}schedulers"),
                format!("{} scheduler states", subs.len()),
                st.schedulers.len(),
            ));
        }
        for (i, (sub, s)) in subs.iter().zip(&st.schedulers).enumerate() {
            sub.check_state(s, &format!("{path}schedulers[{i}]."))?;
        }
        Ok(())
    }

    /// Take over a state that passed [`Scheduler::check_state`].
    fn set_state(&mut self, st: &SchedulerState) {
        self.last_epoch = st.last_epoch;
        self.step_count = st.step_count;
        self.base_lrs.clone_from(&st.base_lrs);
        self.last_lr.clone_from(&st.last_lr);
        match &mut self.kind {
            Kind::WarmRestarts { t_cur, t_i, .. } => {
                *t_cur = st.t_cur.unwrap_or(*t_cur);
                *t_i = st.t_i.unwrap_or(*t_i);
            }
            Kind::Sequential { subs, .. } | Kind::Chained { subs } => {
                for (sub, s) in subs.iter_mut().zip(&st.schedulers) {
                    sub.set_state(s);
                }
            }
            _ => {}
        }
    }
}

impl LrScheduler for Scheduler {
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let before = read_vals(opt, &self.groups, Some(&self.last_lr))?;
        let mut vals = before.clone();
        let mut next = self.clone();
        next.advance(&mut vals, How::Step)?;
        apply(opt, self.name, &self.groups, &before, &vals)?;
        next.momentum = vals.momentum;
        *self = next;
        Ok(())
    }

    fn last_lr(&self) -> Vec<f32> {
        self.last_lr.iter().map(|&l| l as f32).collect()
    }

    fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
}

/// Whether ReduceLROnPlateau's metric should go down or up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PlateauMode {
    /// Lower is better (a loss). Default.
    #[default]
    Min,
    /// Higher is better (an accuracy).
    Max,
}

/// How ReduceLROnPlateau's `threshold` measures a significant improvement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ThresholdMode {
    /// Relative: better than `best * (1 ∓ threshold)`. Default.
    #[default]
    Rel,
    /// Absolute: better than `best ∓ threshold`.
    Abs,
}

/// Reduce the lr by `factor` when a metric has stopped improving for `patience` epochs
/// (PyTorch's `ReduceLROnPlateau`). Attach with [`PlateauScheduler::new`]; it does not change
/// the lr at construction. Defaults are PyTorch's.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceLROnPlateau {
    /// Minimise (default) or maximise the metric.
    pub mode: PlateauMode,
    /// Factor applied to the lr on a plateau, in [0, 1). Default 0.1.
    pub factor: f64,
    /// Epochs without improvement tolerated before reducing. Default 10.
    pub patience: u64,
    /// Minimum significant change (>= 0). Default 1e-4.
    pub threshold: f64,
    /// Relative (default) or absolute threshold.
    pub threshold_mode: ThresholdMode,
    /// Epochs to wait after a reduction before counting bad epochs again. Default 0.
    pub cooldown: u64,
    /// Lower bound on the lr (>= 0), for every group or one each. Default 0.
    pub min_lr: PerGroup,
    /// A reduction smaller than `eps` (>= 0) is skipped. Default 1e-8.
    pub eps: f64,
}

impl Default for ReduceLROnPlateau {
    fn default() -> Self {
        ReduceLROnPlateau {
            mode: PlateauMode::Min,
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
            threshold_mode: ThresholdMode::Rel,
            cooldown: 0,
            min_lr: PerGroup::All(0.0),
            eps: 1e-8,
        }
    }
}

impl ReduceLROnPlateau {
    /// Check every option against its rule, for `groups` driven groups.
    pub fn validate(&self, groups: usize) -> Result<()> {
        ensure(
            "factor",
            self.factor,
            (0.0..1.0).contains(&self.factor),
            "must be in [0, 1)",
        )?;
        ensure(
            "threshold",
            self.threshold,
            self.threshold >= 0.0,
            "must be >= 0",
        )?;
        ensure("eps", self.eps, self.eps >= 0.0, "must be >= 0")?;
        for m in self.min_lr.resolve("min_lr", groups)? {
            ensure("min_lr", m, m >= 0.0, "must be >= 0")?;
        }
        Ok(())
    }
}

/// [`ReduceLROnPlateau`] attached to (some groups of) an optimizer; stepped with a metric by
/// [`PlateauScheduler::step_with`].
///
/// ```no_run
/// use wgpu_optim::{Adam, AdamConfig, Gpu, Params, PlateauScheduler, ReduceLROnPlateau};
///
/// # fn validation_loss(_: &Params) -> f64 { 1.0 }
/// let gpu = Gpu::new()?;
/// let params = Params::zeros(&gpu, &[("w", 1000)])?;
/// let mut opt = Adam::new(&params, AdamConfig { lr: 1e-3, ..Default::default() })?;
/// let mut plateau = PlateauScheduler::new(
///     &opt,
///     ReduceLROnPlateau { factor: 0.5, patience: 3, min_lr: 1e-6.into(), ..Default::default() },
/// )?;
/// for _epoch in 0..50 {
///     // ... train one epoch ...
///     plateau.step_with(validation_loss(&params), &mut opt)?;
/// }
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PlateauScheduler {
    config: ReduceLROnPlateau,
    groups: Vec<usize>,
    min_lrs: Vec<f64>,
    best: f64,
    num_bad_epochs: u64,
    cooldown_counter: u64,
    last_epoch: i64,
    last_lr: Vec<f64>,
}

impl PlateauScheduler {
    /// Attach to every group of `opt` (validates the options; the lrs are not changed).
    pub fn new(opt: &dyn Optimizer, config: ReduceLROnPlateau) -> Result<Self> {
        let groups: Vec<usize> = (0..opt.group_count()).collect();
        Self::attach(opt, groups, config)
    }

    /// Attach to group `group` of `opt` only.
    pub fn for_group(opt: &dyn Optimizer, group: usize, config: ReduceLROnPlateau) -> Result<Self> {
        Self::attach(opt, vec![group], config)
    }

    fn attach(opt: &dyn Optimizer, groups: Vec<usize>, config: ReduceLROnPlateau) -> Result<Self> {
        config.validate(groups.len())?;
        let vals = read_vals(opt, &groups, None)?;
        Ok(PlateauScheduler {
            min_lrs: config.min_lr.resolve("min_lr", groups.len())?,
            best: match config.mode {
                PlateauMode::Min => f64::INFINITY,
                PlateauMode::Max => f64::NEG_INFINITY,
            },
            config,
            groups,
            num_bad_epochs: 0,
            cooldown_counter: 0,
            last_epoch: 0,
            last_lr: vals.lr,
        })
    }

    fn is_better(&self, a: f64, best: f64) -> bool {
        let t = self.config.threshold;
        match (self.config.mode, self.config.threshold_mode) {
            (PlateauMode::Min, ThresholdMode::Rel) => a < best * (1.0 - t),
            (PlateauMode::Min, ThresholdMode::Abs) => a < best - t,
            (PlateauMode::Max, ThresholdMode::Rel) => a > best * (t + 1.0),
            (PlateauMode::Max, ThresholdMode::Abs) => a > best + t,
        }
    }

    /// One epoch with its `metric` (PyTorch's `scheduler.step(metrics)`): count a bad epoch or
    /// record a new best, and after more than `patience` bad epochs (outside a cooldown)
    /// multiply every driven group's lr by `factor`, not below `min_lr`. A NaN metric counts as
    /// a bad epoch, as in PyTorch. An `Err` leaves the optimizer and the scheduler unchanged.
    pub fn step_with(&mut self, metric: f64, opt: &mut dyn Optimizer) -> Result<()> {
        let before = read_vals(opt, &self.groups, Some(&self.last_lr))?;
        let mut vals = before.clone();
        let mut next = self.clone();
        next.last_epoch += 1;
        if next.is_better(metric, next.best) {
            next.best = metric;
            next.num_bad_epochs = 0;
        } else {
            next.num_bad_epochs += 1;
        }
        if next.cooldown_counter > 0 {
            next.cooldown_counter -= 1;
            next.num_bad_epochs = 0;
        }
        if next.num_bad_epochs > next.config.patience {
            for (i, lr) in vals.lr.iter_mut().enumerate() {
                let old = *lr;
                let new = (old * next.config.factor).max(next.min_lrs[i]);
                if old - new > next.config.eps {
                    *lr = new;
                }
            }
            next.cooldown_counter = next.config.cooldown;
            next.num_bad_epochs = 0;
        }
        next.last_lr.clone_from(&vals.lr);
        apply(opt, "ReduceLROnPlateau", &self.groups, &before, &vals)?;
        *self = next;
        Ok(())
    }

    /// The lr of each driven group as last seen or set.
    pub fn last_lr(&self) -> Vec<f32> {
        self.last_lr.iter().map(|&l| l as f32).collect()
    }

    /// Epochs stepped (PyTorch's `last_epoch`; 0 at construction).
    pub fn last_epoch(&self) -> i64 {
        self.last_epoch
    }

    /// The best metric so far (±inf before the first step).
    pub fn best(&self) -> f64 {
        self.best
    }

    /// Consecutive epochs without significant improvement.
    pub fn num_bad_epochs(&self) -> u64 {
        self.num_bad_epochs
    }

    /// Whether the scheduler is cooling down after a reduction.
    pub fn in_cooldown(&self) -> bool {
        self.cooldown_counter > 0
    }

    /// The options.
    pub fn config(&self) -> &ReduceLROnPlateau {
        &self.config
    }

    /// The optimizer groups this scheduler drives.
    pub fn groups(&self) -> &[usize] {
        &self.groups
    }

    /// The state to save next to the optimizer's (PyTorch's `state_dict()`); load it with
    /// [`PlateauScheduler::load_state`] to continue exactly.
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, Params, PlateauScheduler, ReduceLROnPlateau, Sgd, SgdConfig};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 10)])?;
    /// let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
    /// let mut plateau = PlateauScheduler::new(&opt, ReduceLROnPlateau::default())?;
    /// plateau.step_with(1.0, &mut opt)?;
    /// plateau.step_with(1.5, &mut opt)?;
    /// assert_eq!(plateau.state().num_bad_epochs, 1);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn state(&self) -> PlateauState {
        PlateauState {
            kind: "ReduceLROnPlateau".into(),
            groups: self.groups.clone(),
            last_epoch: self.last_epoch,
            best: self.best,
            num_bad_epochs: self.num_bad_epochs,
            cooldown_counter: self.cooldown_counter,
            last_lr: self.last_lr.clone(),
        }
    }

    /// Continue from a saved [`PlateauScheduler::state`] (PyTorch's `load_state_dict`): the
    /// epoch, best metric, counters and lrs are replaced, and the saved lrs are written to the
    /// driven groups of `opt`. The options are this scheduler's own. A state of another kind,
    /// for other groups, or with impossible values (a NaN `best`, a non-finite lr) is an
    /// [`Error::SchedulerState`], and an `Err` changes neither the scheduler nor `opt`.
    ///
    /// ```no_run
    /// use wgpu_optim::{
    ///     Gpu, Optimizer, Params, PlateauScheduler, ReduceLROnPlateau, Sgd, SgdConfig,
    /// };
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 10)])?;
    /// let config = ReduceLROnPlateau { patience: 0, ..Default::default() };
    /// let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
    /// let mut plateau = PlateauScheduler::new(&opt, config.clone())?;
    /// for loss in [1.0, 2.0, 3.0] {
    ///     plateau.step_with(loss, &mut opt)?;
    /// }
    /// let mut opt2 = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
    /// let mut resumed = PlateauScheduler::new(&opt2, config)?;
    /// resumed.load_state(&mut opt2, &plateau.state())?;
    /// assert_eq!((opt2.lr(), resumed.best()), (opt.lr(), 1.0));
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn load_state(&mut self, opt: &mut dyn Optimizer, state: &PlateauState) -> Result<()> {
        if state.kind != "ReduceLROnPlateau" {
            return Err(state_err("kind", "ReduceLROnPlateau", &state.kind));
        }
        if state.groups != self.groups {
            return Err(state_err(
                "groups",
                format!("{:?}", self.groups),
                format!("{:?}", state.groups),
            ));
        }
        check_state_values("last_lr", &state.last_lr, self.groups.len())?;
        check_state_count("last_epoch", state.last_epoch, 0)?;
        for (what, v) in [
            ("num_bad_epochs", state.num_bad_epochs),
            ("cooldown_counter", state.cooldown_counter),
        ] {
            check_state_count(what, i64::try_from(v).unwrap_or(i64::MAX), 0)?;
        }
        if state.best.is_nan() {
            return Err(state_err("best", "a number or ±inf", state.best));
        }
        let before = read_vals(opt, &self.groups, None)?;
        let mut after = before.clone();
        after.lr.clone_from(&state.last_lr);
        apply(opt, "ReduceLROnPlateau", &self.groups, &before, &after)?;
        self.last_epoch = state.last_epoch;
        self.best = state.best;
        self.num_bad_epochs = state.num_bad_epochs;
        self.cooldown_counter = state.cooldown_counter;
        self.last_lr.clone_from(&state.last_lr);
        Ok(())
    }
}

/// What a [`PlateauScheduler`] needs to continue exactly where it was (PyTorch's
/// `ReduceLROnPlateau.state_dict()`): the epoch, the best metric, the counters and the lrs.
/// Serializable with serde; in human-readable formats an infinite `best` (before the first
/// step) is written as the string `"inf"` or `"-inf"`, since JSON has no infinities.
///
/// ```no_run
/// use wgpu_optim::{Gpu, Params, PlateauScheduler, PlateauState, ReduceLROnPlateau, Sgd, SgdConfig};
/// let gpu = Gpu::new()?;
/// let params = Params::zeros(&gpu, &[("w", 10)])?;
/// let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, ..Default::default() })?;
/// let mut plateau = PlateauScheduler::new(&opt, ReduceLROnPlateau::default())?;
/// plateau.step_with(0.5, &mut opt)?;
/// let json = serde_json::to_string(&plateau.state()).unwrap();
/// let state: PlateauState = serde_json::from_str(&json).unwrap();
/// assert_eq!(state.best, 0.5);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlateauState {
    /// Always `ReduceLROnPlateau`.
    pub kind: String,
    /// The optimizer groups driven.
    pub groups: Vec<usize>,
    /// Epochs stepped.
    pub last_epoch: i64,
    /// The best metric so far (±inf before the first step).
    #[serde(with = "extended_f64")]
    pub best: f64,
    /// Consecutive epochs without significant improvement.
    pub num_bad_epochs: u64,
    /// Epochs of cooldown left.
    pub cooldown_counter: u64,
    /// The lrs as last seen or set, in f64.
    pub last_lr: Vec<f64>,
}

/// An f64 that may be infinite: a number, or `"inf"`, `"-inf"`, `"nan"` in human-readable
/// formats (JSON has no infinities).
mod extended_f64 {
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() || !s.is_human_readable() {
            s.serialize_f64(*x)
        } else if x.is_nan() {
            s.serialize_str("nan")
        } else if *x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, \"inf\", \"-inf\" or \"nan\"")
        }
        fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(Visitor)
        } else {
            f64::deserialize(d)
        }
    }
}
