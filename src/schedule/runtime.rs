//! What [`Scheduler`] does (defined with the rules it dispatches to, in `rules.rs`): attach,
//! step, and the reading and all-or-nothing writing of the groups' values that every scheduler
//! (and [`super::PlateauScheduler`]) shares.

use super::rules::{Attach, Core, How, Rule, Scheduler, Vals};
use super::{LrScheduler, Schedule};
use crate::error::{Error, Result};
use crate::optim::{widen, Optimizer};

/// Read the driven groups' lrs and momenta. `shadow`: the f64 lrs this scheduler last wrote,
/// used where the optimizer still holds them (rounded to f32).
pub(super) fn read_vals(
    opt: &dyn Optimizer,
    groups: &[usize],
    shadow: Option<&[f64]>,
) -> Result<Vals> {
    let mut v = Vals {
        lr: Vec::with_capacity(groups.len()),
        initial_lr: vec![None; groups.len()],
        momentum: Vec::with_capacity(groups.len()),
    };
    for (i, &g) in groups.iter().enumerate() {
        let lr = opt.group_lr(g)?;
        v.lr.push(match shadow.and_then(|s| s.get(i)) {
            Some(&s) if s as f32 == lr => s,
            _ => widen(lr),
        });
        v.momentum.push(opt.group_momentum(g)?.map(widen));
    }
    Ok(v)
}

/// A scheduler's lr or momentum must be finite (also as the f32 the optimizer stores) and not
/// negative: anything else is refused before the optimizer is touched, whatever the optimizer
/// would accept.
fn check_value(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && (value as f32).is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidHyperparameter {
            name,
            value,
            rule: "a scheduler only sets finite values >= 0",
        })
    }
}

/// Write `after` to the optimizer: every lr, and each momentum that changed from `before`.
/// All or nothing: a non-finite or negative value is refused before anything is written, and
/// on an error from the optimizer every group gets its old values back.
pub(super) fn apply(
    opt: &mut dyn Optimizer,
    scheduler: &'static str,
    groups: &[usize],
    before: &Vals,
    after: &Vals,
) -> Result<()> {
    for (i, &lr) in after.lr.iter().enumerate() {
        check_value("lr", lr)?;
        if let Some(m) = after.momentum.get(i).copied().flatten() {
            check_value("momentum", m)?;
        }
    }
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
    /// options ([`super::PerGroup`]) then have one value.
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
        let mut sched = Attach {
            groups: &groups,
            vals: &mut vals,
            optimizer: opt.name(),
        }
        .build(&schedule)?;
        apply(opt, sched.core.name, &groups, &before, &vals)?;
        sched.momentum = vals.momentum;
        Ok(sched)
    }

    /// A scheduler from its common part and its rule.
    pub(super) fn from_parts(core: Core, rule: Box<dyn Rule>) -> Self {
        Scheduler {
            core,
            rule,
            momentum: Vec::new(),
        }
    }

    /// One step, start or restart on the mirrored group values.
    pub(super) fn advance(&mut self, vals: &mut Vals, how: How) -> Result<()> {
        self.rule.advance(&mut self.core, vals, how)
    }

    /// SequentialLR's `recursive_undo`.
    pub(super) fn undo(&mut self) {
        self.rule.undo(&mut self.core);
    }

    /// Whether stepping writes momenta, here or in a scheduler inside.
    pub(super) fn cycles_momentum(&self) -> bool {
        self.rule.cycles_momentum() || self.rule.subs().iter().any(Scheduler::cycles_momentum)
    }

    /// The PyTorch class name of the schedule, e.g. `"CosineAnnealingLR"`.
    pub fn name(&self) -> &'static str {
        self.core.name
    }

    /// The optimizer groups this scheduler drives.
    pub fn groups(&self) -> &[usize] {
        &self.core.groups
    }

    /// The lrs as last computed, in f64 (PyTorch's `get_last_lr()` returns these Python
    /// floats; the optimizer holds them rounded to f32).
    pub fn last_lr_f64(&self) -> &[f64] {
        &self.core.last_lr
    }
}

impl LrScheduler for Scheduler {
    fn step(&mut self, opt: &mut dyn Optimizer) -> Result<()> {
        let before = read_vals(opt, &self.core.groups, Some(&self.core.last_lr))?;
        let mut vals = before.clone();
        let mut next = self.clone();
        next.advance(&mut vals, How::Step)?;
        apply(opt, self.core.name, &self.core.groups, &before, &vals)?;
        next.momentum = vals.momentum;
        *self = next;
        Ok(())
    }

    fn last_lr(&self) -> Vec<f32> {
        self.core.last_lr.iter().map(|&l| l as f32).collect()
    }

    fn last_epoch(&self) -> i64 {
        self.core.last_epoch
    }
}
