//! The schedulers of schedulers: SequentialLR (one after another, switching at milestones) and
//! ChainedScheduler (all together, their effects composed).

use super::rules::Scheduler;
use super::rules::{bad, epoch_of, Attach, Core, How, Options, Rule, Vals};
use super::Schedule;
use crate::error::Result;

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

/// The schedulers, built in order on the same groups (sharing the groups' initial lrs), as
/// the Python objects are built before they are handed to SequentialLR or ChainedScheduler.
fn build_each(at: &mut Attach<'_>, schedulers: &[Schedule]) -> Result<Vec<Scheduler>> {
    schedulers.iter().map(|s| at.build(s)).collect()
}

/// The [`Rule`] methods of a scheduler of schedulers (a `subs` field): undo and state reach
/// every scheduler inside.
macro_rules! holds_schedulers {
    () => {
        fn undo(&mut self, _core: &mut Core) {
            self.subs.iter_mut().for_each(Scheduler::undo);
        }

        fn subs(&self) -> &[Scheduler] {
            &self.subs
        }

        fn subs_mut(&mut self) -> &mut [Scheduler] {
            &mut self.subs
        }
    };
}

impl Options for SequentialLR {
    fn name(&self) -> &'static str {
        "SequentialLR"
    }

    fn validate(&self, groups: usize) -> Result<()> {
        if self.schedulers.is_empty() {
            return Err(bad("schedulers", 0.0, "needs at least one scheduler"));
        }
        if self.milestones.len() + 1 != self.schedulers.len() {
            return Err(bad(
                "milestones",
                self.milestones.len() as f64,
                "needs exactly one milestone fewer than schedulers",
            ));
        }
        if let Some(w) = self.milestones.windows(2).find(|w| w[1] <= w[0]) {
            return Err(bad(
                "milestones",
                w[1] as f64,
                "must be strictly increasing",
            ));
        }
        for (i, sub) in self.schedulers.iter().enumerate() {
            if sub.options().contains_sequential() {
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

    /// SequentialLR's `__init__`: the schedulers were built in order on the same groups; reset
    /// the lrs to the initial ones, undo one epoch of every scheduler, and take the initial step
    /// of the one active at epoch 0.
    fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler> {
        let mut subs = build_each(at, &self.schedulers)?;
        for (lr, init) in at.vals.lr.iter_mut().zip(&at.vals.initial_lr) {
            *lr = init.unwrap_or(*lr);
        }
        for sub in &mut subs {
            sub.undo();
        }
        let milestones: Vec<i64> = self.milestones.iter().map(|&m| epoch_of(m)).collect();
        let idx = milestones.partition_point(|&m| m <= 0);
        subs[idx].core.step_count = 0;
        subs[idx].advance(at.vals, How::Initial)?;
        let core = Core {
            name: self.name(),
            groups: at.groups.to_vec(),
            base_lrs: at.initial_lrs(),
            last_epoch: 0,
            step_count: 1,
            last_lr: subs[idx].core.last_lr.clone(),
        };
        Ok(Scheduler::from_parts(
            core,
            Box::new(Sequential { subs, milestones }),
        ))
    }

    fn contains_sequential(&self) -> bool {
        true
    }
}

/// A built SequentialLR: its schedulers and milestones.
#[derive(Clone, Debug)]
struct Sequential {
    subs: Vec<Scheduler>,
    milestones: Vec<i64>,
}

impl Rule for Sequential {
    /// SequentialLR has no `get_lr` of its own: its schedulers give the lrs.
    fn get_lr(&self, _core: &Core, _vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        Err(bad(
            "schedulers",
            0.0,
            "a SequentialLR cannot be restarted inside another scheduler",
        ))
    }

    /// SequentialLR's `step()`: the scheduler of this epoch steps, or restarts at its
    /// milestone. (Validation keeps a SequentialLR out of other SequentialLRs, so it is
    /// never started or restarted by one.)
    fn advance(&mut self, core: &mut Core, vals: &mut Vals, how: How) -> Result<()> {
        if how != How::Step {
            return self.get_lr(core, vals, false).map(|_| ());
        }
        core.last_epoch += 1;
        let e = core.last_epoch;
        let idx = self.milestones.partition_point(|&m| m <= e);
        let zero = idx > 0 && self.milestones[idx - 1] == e;
        let sub = &mut self.subs[idx];
        sub.advance(vals, if zero { How::ZeroEpoch } else { How::Step })?;
        core.last_lr.clone_from(&sub.core.last_lr);
        Ok(())
    }

    holds_schedulers!();
}

impl Options for ChainedScheduler {
    fn name(&self) -> &'static str {
        "ChainedScheduler"
    }

    fn validate(&self, groups: usize) -> Result<()> {
        if self.schedulers.is_empty() {
            return Err(bad("schedulers", 0.0, "needs at least one scheduler"));
        }
        for sub in &self.schedulers {
            sub.validate(groups)?;
        }
        Ok(())
    }

    /// ChainedScheduler's construction: the schedulers were built in order on the same groups
    /// (each with its initial step); the chain itself changes nothing.
    fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler> {
        let subs = build_each(at, &self.schedulers)?;
        let core = Core {
            name: self.name(),
            groups: at.groups.to_vec(),
            base_lrs: at.initial_lrs(),
            last_epoch: 0,
            step_count: 0,
            last_lr: at.vals.lr.clone(),
        };
        Ok(Scheduler::from_parts(core, Box::new(Chained { subs })))
    }

    fn contains_sequential(&self) -> bool {
        self.schedulers
            .iter()
            .any(|s| s.options().contains_sequential())
    }
}

/// A built ChainedScheduler: its schedulers.
#[derive(Clone, Debug)]
struct Chained {
    subs: Vec<Scheduler>,
}

impl Rule for Chained {
    /// ChainedScheduler has no `get_lr`: PyTorch's `_update_lr(0)` (SequentialLR's restart)
    /// raises on it, which validation rules out.
    fn get_lr(&self, _core: &Core, _vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        Err(bad(
            "schedulers",
            0.0,
            "a ChainedScheduler cannot be restarted at a SequentialLR milestone",
        ))
    }

    /// Its `_initial_step` (as a SequentialLR's first scheduler) calls its `step()`, which
    /// steps every scheduler normally.
    fn advance(&mut self, core: &mut Core, vals: &mut Vals, how: How) -> Result<()> {
        match how {
            How::ZeroEpoch => return self.get_lr(core, vals, false).map(|_| ()),
            How::Initial => {
                core.last_epoch = 0;
                core.step_count = 1;
            }
            How::Step => {
                core.last_epoch += 1;
                core.step_count = core.step_count.saturating_add(1);
            }
        }
        for sub in self.subs.iter_mut() {
            sub.advance(vals, How::Step)?;
        }
        core.last_lr.clone_from(&vals.lr);
        Ok(())
    }

    holds_schedulers!();
}
