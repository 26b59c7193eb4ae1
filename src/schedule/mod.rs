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
//! saved lrs (and cycled momenta) to the optimizer. [`crate::checkpoint::SaveOptions::schedulers`]
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
//! a value the optimizer rejects) leaves the optimizer and the scheduler as they were. An lr
//! or momentum that is not finite (also as f32) or is negative, such as a NaN or negative
//! factor from an [`LrLambda`], is refused by the scheduler itself
//! ([`Error::InvalidHyperparameter`]) before anything is written. A saved state that does not
//! fit is an [`Error::SchedulerState`] and changes nothing; any state, however malformed,
//! gives a typed error rather than a panic.
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
//!
//! # Layout
//! One file per family: `step.rs` (StepLR, MultiStepLR, ExponentialLR, LinearLR, ConstantLR,
//! PolynomialLR), `cosine.rs`, `cyclic.rs` (OneCycleLR, CyclicLR), `lambda.rs`, `plateau.rs`,
//! `composition.rs` (SequentialLR, ChainedScheduler). Each scheduler's rules (validation, what
//! its construction does, `get_lr`, closed form, state fields of its own) sit together in its
//! file, as impls of the two traits in `rules.rs`; `runtime.rs` ([`Scheduler`]) and `state.rs`
//! ([`SchedulerState`]) dispatch through them. A new scheduler is its file plus one line in
//! the list that makes [`Schedule`].

mod composition;
mod cosine;
mod cyclic;
mod lambda;
mod plateau;
mod rules;
mod runtime;
mod saved;
mod state;
mod step;

pub use composition::{ChainedScheduler, SequentialLR};
pub use cosine::{CosineAnnealingLR, CosineAnnealingWarmRestarts};
pub use cyclic::{AnnealStrategy, CyclicLR, CyclicMode, OneCycleLR};
pub use lambda::{LambdaLR, LrLambda, LrLambdas, MultiplicativeLR};
pub use plateau::{PlateauMode, PlateauScheduler, PlateauState, ReduceLROnPlateau, ThresholdMode};
pub use rules::Scheduler;
pub use saved::SchedulerState;
pub use step::{ConstantLR, ExponentialLR, LinearLR, MultiStepLR, PolynomialLR, StepLR};

use crate::error::{Error, Result};
use crate::optim::Optimizer;
use rules::Options;

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
/// for options such as `max_lr`, and a function or a list for `lr_lambda`). `PerGroup` alone
/// is `PerGroup<f64>`; [`LrLambdas`] is `PerGroup<LrLambda>`.
///
/// ```
/// use wgpu_optim::PerGroup;
/// let all: PerGroup = 0.1.into();
/// let each: PerGroup = vec![0.1, 0.2].into();
/// assert_eq!((all, each), (PerGroup::All(0.1), PerGroup::Each(vec![0.1, 0.2])));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum PerGroup<T = f64> {
    /// The same value for every group.
    All(T),
    /// One value per driven group, in group order.
    Each(Vec<T>),
}

impl<T> From<T> for PerGroup<T> {
    fn from(v: T) -> Self {
        PerGroup::All(v)
    }
}

impl<T> From<Vec<T>> for PerGroup<T> {
    fn from(v: Vec<T>) -> Self {
        PerGroup::Each(v)
    }
}

impl<T: Clone> From<&[T]> for PerGroup<T> {
    fn from(v: &[T]) -> Self {
        PerGroup::Each(v.to_vec())
    }
}

impl<T, const N: usize> From<[T; N]> for PerGroup<T> {
    fn from(v: [T; N]) -> Self {
        PerGroup::Each(v.into())
    }
}

impl<T> PerGroup<T> {
    /// The value for group number `i` of the driven groups (`None` past the end of a list).
    ///
    /// ```
    /// let p = wgpu_optim::PerGroup::Each(vec![0.1, 0.2]);
    /// assert_eq!((p.get(1), p.get(2)), (Some(&0.2), None));
    /// ```
    pub fn get(&self, i: usize) -> Option<&T> {
        match self {
            PerGroup::All(v) => Some(v),
            PerGroup::Each(v) => v.get(i),
        }
    }

    /// The values for `n` groups; a list of another length is an [`Error::InvalidScheduler`]
    /// about option `name`.
    fn resolve(&self, name: &'static str, n: usize) -> Result<Vec<T>>
    where
        T: Clone,
    {
        match self {
            PerGroup::All(v) => Ok(vec![v.clone(); n]),
            PerGroup::Each(v) if v.len() == n => Ok(v.clone()),
            PerGroup::Each(v) => Err(Error::InvalidScheduler {
                name,
                value: v.len() as f64,
                rule: "a list needs one value per driven parameter group",
            }),
        }
    }
}

/// `Schedule`, its `From` impls and its dispatch to each config's [`Options`], from one list.
macro_rules! schedules {
    ($($variant:ident($t:ident)),* $(,)?) => {
        /// Any epoch-driven schedule; what [`Scheduler::new`] attaches. Every config converts
        /// into it with `.into()`.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Schedule {
            $(
                #[doc = concat!("[`", stringify!($t), "`].")]
                $variant($t),
            )*
        }

        $(
            impl From<$t> for Schedule {
                fn from(s: $t) -> Self {
                    Schedule::$variant(s)
                }
            }
        )*

        impl Schedule {
            /// The config's rules.
            fn options(&self) -> &dyn Options {
                match self {
                    $(Schedule::$variant(s) => s,)*
                }
            }
        }
    };
}

schedules! {
    Step(StepLR),
    MultiStep(MultiStepLR),
    Exponential(ExponentialLR),
    CosineAnnealing(CosineAnnealingLR),
    CosineAnnealingWarmRestarts(CosineAnnealingWarmRestarts),
    Linear(LinearLR),
    OneCycle(OneCycleLR),
    Cyclic(CyclicLR),
    Sequential(SequentialLR),
    Constant(ConstantLR),
    Polynomial(PolynomialLR),
    Lambda(LambdaLR),
    Multiplicative(MultiplicativeLR),
    Chained(ChainedScheduler),
}

impl Schedule {
    /// PyTorch's class name, e.g. `"OneCycleLR"`.
    pub fn name(&self) -> &'static str {
        self.options().name()
    }

    /// Check every option against its rule, for `groups` driven groups.
    pub fn validate(&self, groups: usize) -> Result<()> {
        self.options().validate(groups)
    }
}
