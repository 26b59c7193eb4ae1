//! The two internal traits every scheduler implements in its family file, and the checks their
//! `validate` methods share.
//!
//! - [`Options`], on the public config (StepLR, OneCycleLR, ...): its PyTorch name, the
//!   validation of its options, and PyTorch's `__init__` (what it does to the groups' values
//!   before the initial step, and what it keeps).
//! - [`Rule`], on what a built scheduler keeps (often the config itself): PyTorch's `get_lr()`
//!   (the recursive form), `_get_closed_form_lr()`, an overridden `step()`, and the state fields
//!   of its own beyond the common ones.
//!
//! [`Scheduler`] (its methods are in `runtime.rs`, its state in `state.rs`) holds the common part ([`Core`]) and dispatches through
//! these traits, so adding a scheduler is one file with both impls, plus its line in
//! [`super::Schedule`].

use super::saved::SchedulerState;
use crate::error::{Error, Result};

/// A schedule's options: what [`super::Schedule`] dispatches to.
pub(crate) trait Options {
    /// PyTorch's class name, e.g. `"OneCycleLR"`.
    fn name(&self) -> &'static str;
    /// Check every option against its rule, for `groups` driven groups.
    fn validate(&self, groups: usize) -> Result<()>;
    /// PyTorch's `__init__` on the mirrored group values in `at` (validated options); most
    /// schedulers hand their [`Rule`] to [`Attach::standard`].
    fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler>;
    /// Whether this is a SequentialLR or chains one (SequentialLR cannot contain one).
    fn contains_sequential(&self) -> bool {
        false
    }
}

/// What a built scheduler keeps beyond [`Core`], and its formulas. Object safe.
pub(crate) trait Rule: std::fmt::Debug + Send + Sync + BoxedClone {
    /// PyTorch's `get_lr()` at `core.last_epoch`, from the groups' current lrs `vals.lr`
    /// (`initial`: inside the initial step). The cycling schedulers also set `vals.momentum`.
    fn get_lr(&self, core: &Core, vals: &mut Vals, initial: bool) -> Result<Vec<f64>>;

    /// PyTorch's `_get_closed_form_lr()` at `core.last_epoch`, where the scheduler has one
    /// (used by SequentialLR's restart at a milestone).
    fn closed_form(&self, _core: &Core) -> Option<Vec<f64>> {
        None
    }

    /// PyTorch's `step()` / `_initial_step()` / `_update_lr(0)`; overridden where PyTorch's
    /// subclass overrides `step` (CosineAnnealingWarmRestarts, SequentialLR, ChainedScheduler).
    fn advance(&mut self, core: &mut Core, vals: &mut Vals, how: How) -> Result<()> {
        advance_default(self, core, vals, how)
    }

    /// SequentialLR's `recursive_undo`: one epoch back.
    fn undo(&mut self, core: &mut Core) {
        core.last_epoch -= 1;
    }

    /// Whether stepping writes momenta (CyclicLR / OneCycleLR with `cycle_momentum`); the
    /// schedulers inside are asked separately.
    fn cycles_momentum(&self) -> bool {
        false
    }

    /// The schedulers inside a SequentialLR or ChainedScheduler.
    fn subs(&self) -> &[Scheduler] {
        &[]
    }

    /// The same, mutable.
    fn subs_mut(&mut self) -> &mut [Scheduler] {
        &mut []
    }

    /// Write this scheduler's own fields (beyond the common ones) into `state`.
    fn save_state(&self, _state: &mut SchedulerState) {}

    /// Check this scheduler's own fields of `state` (`path` prefixes the names in errors); by
    /// default it has none, so `T_cur` and `T_i` must be absent.
    fn check_state(&self, state: &SchedulerState, path: &str) -> Result<()> {
        super::saved::no_own_state(state, path)
    }

    /// Take over this scheduler's own fields of a `state` that passed [`Rule::check_state`].
    fn load_state(&mut self, _state: &SchedulerState) {}
}

/// An epoch-driven [`super::Schedule`] attached to (some groups of) an optimizer. Implements
/// [`super::LrScheduler`].
///
/// The scheduler does not hold the optimizer: pass the same one to every
/// [`super::LrScheduler::step`], as PyTorch's scheduler holds the one it was built with.
#[derive(Clone, Debug)]
pub struct Scheduler {
    pub(super) core: Core,
    pub(super) rule: Box<dyn Rule>,
    /// The driven groups' momenta after the last attach or step (kept for [`Scheduler::state`]
    /// where the schedule cycles momentum; empty in the schedulers inside a Sequential/Chained).
    pub(super) momentum: Vec<Option<f64>>,
}

/// A boxed copy of a [`Rule`] (for `Clone` on [`Scheduler`]); every `Clone` rule has it.
pub(crate) trait BoxedClone {
    /// The copy.
    fn boxed_clone(&self) -> Box<dyn Rule>;
}

impl<T: Rule + Clone + 'static> BoxedClone for T {
    fn boxed_clone(&self) -> Box<dyn Rule> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn Rule> {
    fn clone(&self) -> Self {
        self.boxed_clone()
    }
}

/// What every scheduler has (PyTorch's `LRScheduler` attributes).
#[derive(Clone, Debug)]
pub(crate) struct Core {
    /// PyTorch's class name.
    pub name: &'static str,
    /// The optimizer groups driven.
    pub groups: Vec<usize>,
    /// PyTorch's `base_lrs`.
    pub base_lrs: Vec<f64>,
    /// PyTorch's `last_epoch`.
    pub last_epoch: i64,
    /// PyTorch's `_step_count`.
    pub step_count: u64,
    /// PyTorch's `_last_lr`, in f64.
    pub last_lr: Vec<f64>,
}

impl Core {
    /// `lrs` become the groups' lrs and the last lrs.
    pub fn set_lrs(&mut self, vals: &mut Vals, lrs: Vec<f64>) {
        vals.lr = lrs;
        self.last_lr.clone_from(&vals.lr);
    }
}

/// The scheduler-visible part of the driven param groups, in f64 as PyTorch's param-group
/// dicts hold it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Vals {
    /// `group["lr"]`.
    pub lr: Vec<f64>,
    /// PyTorch's `group["initial_lr"]`, set by the first scheduler built (SequentialLR).
    pub initial_lr: Vec<Option<f64>>,
    /// The momentum-like coefficient, where the optimizer has one.
    pub momentum: Vec<Option<f64>>,
}

/// How a scheduler is advanced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum How {
    /// PyTorch's `_initial_step()`: `last_epoch` -1 → 0 in "initial" mode.
    Initial,
    /// `step()`.
    Step,
    /// `_update_lr(0)`: SequentialLR's restart of the next scheduler at a milestone (the closed
    /// form at epoch 0 where one exists).
    ZeroEpoch,
}

/// `LRScheduler.step()` / `_initial_step()` / `_update_lr(0)` with the rule's `get_lr` and
/// closed form.
pub(crate) fn advance_default<R: Rule + ?Sized>(
    rule: &R,
    core: &mut Core,
    vals: &mut Vals,
    how: How,
) -> Result<()> {
    let lrs = match how {
        How::Initial => {
            core.step_count = 1;
            core.last_epoch += 1;
            rule.get_lr(core, vals, true)?
        }
        How::Step => {
            core.step_count = core.step_count.saturating_add(1);
            core.last_epoch += 1;
            rule.get_lr(core, vals, false)?
        }
        How::ZeroEpoch => {
            core.last_epoch = 0;
            match rule.closed_form(core) {
                Some(lrs) => lrs,
                None => rule.get_lr(core, vals, false)?,
            }
        }
    };
    core.set_lrs(vals, lrs);
    Ok(())
}

/// The groups' values while a scheduler is built (PyTorch's `__init__` works on the optimizer's
/// param groups; here on their mirror, written to the optimizer once all succeeded).
pub(crate) struct Attach<'a> {
    /// The driven groups.
    pub groups: &'a [usize],
    /// Their values, changed by each scheduler built.
    pub vals: &'a mut Vals,
    /// The optimizer's name, for errors.
    pub optimizer: &'static str,
}

impl Attach<'_> {
    /// Build `schedule` on these groups (SequentialLR's and ChainedScheduler's schedulers).
    pub fn build(&mut self, schedule: &super::Schedule) -> Result<Scheduler> {
        schedule.options().build(self)
    }

    /// `LRScheduler.__init__`: `initial_lr` (setdefault), `base_lrs`, the initial step.
    pub fn standard(&mut self, name: &'static str, rule: impl Rule + 'static) -> Result<Scheduler> {
        for (slot, &lr) in self.vals.initial_lr.iter_mut().zip(&self.vals.lr) {
            slot.get_or_insert(lr);
        }
        let mut sched = Scheduler::from_parts(
            Core {
                name,
                groups: self.groups.to_vec(),
                base_lrs: self.initial_lrs(),
                last_epoch: -1,
                step_count: 0,
                last_lr: self.vals.lr.clone(),
            },
            Box::new(rule),
        );
        sched.advance(self.vals, How::Initial)?;
        Ok(sched)
    }

    /// The groups' `initial_lr`s (0 where none is set yet).
    pub fn initial_lrs(&self) -> Vec<f64> {
        self.vals
            .initial_lr
            .iter()
            .map(|l| l.unwrap_or(0.0))
            .collect()
    }

    /// Set the groups' momenta to `start` for a scheduler that cycles them; a group without a
    /// momentum is an [`Error::NoMomentum`].
    pub fn start_momentum(&mut self, scheduler: &'static str, start: &[f64]) -> Result<()> {
        for (i, &m) in start.iter().enumerate() {
            let slot = &mut self.vals.momentum[i];
            if slot.is_none() {
                return Err(Error::NoMomentum {
                    scheduler,
                    optimizer: self.optimizer,
                    group: self.groups[i],
                    reason: "it has no momentum-like coefficient".into(),
                });
            }
            *slot = Some(m);
        }
        Ok(())
    }
}

/// A count option as an epoch (saturating; no schedule gets near 2^63 epochs).
pub(crate) fn epoch_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `f` of every base lr (a closed form).
pub(crate) fn each(base: &[f64], f: impl Fn(f64) -> f64) -> Vec<f64> {
    base.iter().map(|&b| f(b)).collect()
}

/// `lrs` times `factor`.
pub(crate) fn scaled(lrs: &[f64], factor: f64) -> Vec<f64> {
    lrs.iter().map(|lr| lr * factor).collect()
}

/// An [`Error::InvalidScheduler`].
pub(crate) fn bad(name: &'static str, value: f64, rule: &'static str) -> Error {
    Error::InvalidScheduler { name, value, rule }
}

/// `value` is finite and `ok`.
pub(crate) fn ensure(name: &'static str, value: f64, ok: bool, rule: &'static str) -> Result<()> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(bad(name, value, rule))
    }
}

/// `value >= min`.
pub(crate) fn ensure_count(
    name: &'static str,
    value: u64,
    min: u64,
    rule: &'static str,
) -> Result<()> {
    if value >= min {
        Ok(())
    } else {
        Err(bad(name, value as f64, rule))
    }
}
