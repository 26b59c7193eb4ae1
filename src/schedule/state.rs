//! Saving and loading: [`SchedulerState`] (PyTorch's `state_dict()` of a [`Scheduler`]) and
//! the checks every loaded state passes before anything changes. A scheduler's own fields
//! beyond the common ones are its [`super::rules::Rule`]'s (`save_state`, `check_state`,
//! `load_state`); [`super::PlateauState`] is in the plateau file.

use super::rules::Core;
use super::runtime::{apply, read_vals, Scheduler};
use crate::error::{Error, Result};
use crate::optim::Optimizer;
use serde::{Deserialize, Serialize};

/// Largest epoch or counter a loaded state may hold: far beyond any schedule, and far enough
/// below `i64::MAX` that stepping on cannot overflow.
pub(super) const MAX_STATE_EPOCH: i64 = 1 << 53;

/// What a [`Scheduler`] needs to continue exactly where it was (PyTorch's
/// `scheduler.state_dict()`): its counters and lrs, and those of every scheduler inside a
/// SequentialLR or ChainedScheduler. Serializable with serde (JSON numbers round-trip exactly);
/// [`crate::checkpoint::save_with_schedulers`] stores it in a checkpoint.
///
/// The options are not part of the state, and neither are [`super::LrLambda`]s: load a state into a
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

/// An [`Error::SchedulerState`].
pub(super) fn state_err(
    what: impl Into<String>,
    expected: impl ToString,
    got: impl ToString,
) -> Error {
    Error::SchedulerState {
        what: what.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// `values` has one entry per driven group, each finite (also as f32) and >= 0.
pub(super) fn check_state_values(what: &str, values: &[f64], groups: usize) -> Result<()> {
    if values.len() != groups {
        return Err(state_err(
            what,
            format!("{groups} values (one per driven group)"),
            values.len(),
        ));
    }
    let ok = |v: f64| v.is_finite() && (v as f32).is_finite() && v >= 0.0;
    match values.iter().position(|&v| !ok(v)) {
        Some(i) => Err(state_err(
            format!("{what}[{i}]"),
            "a finite value >= 0 (also as f32)",
            values[i],
        )),
        None => Ok(()),
    }
}

/// `value` is a count in `min..=MAX_STATE_EPOCH`.
pub(super) fn check_state_count(what: &str, value: i64, min: i64) -> Result<()> {
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

/// `groups` is the driven list (compared, never formatted whole: a state may hold any number).
pub(super) fn check_groups(path: &str, ours: &[usize], theirs: &[usize]) -> Result<()> {
    if ours == theirs {
        return Ok(());
    }
    let got = if theirs.len() > 16 {
        format!("{} groups", theirs.len())
    } else {
        format!("{theirs:?}")
    };
    Err(state_err(format!("{path}groups"), format!("{ours:?}"), got))
}

/// The default [`super::rules::Rule::check_state`]: no fields of its own.
pub(super) fn no_own_state(st: &SchedulerState, path: &str) -> Result<()> {
    match (st.t_cur, st.t_i) {
        (None, None) => Ok(()),
        _ => Err(state_err(
            format!("{path}T_cur, T_i"),
            format!("none ({} has neither)", st.kind),
            format!("{:?}, {:?}", st.t_cur, st.t_i),
        )),
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
        let c = &self.core;
        let mut state = SchedulerState {
            kind: c.name.to_string(),
            groups: c.groups.clone(),
            last_epoch: c.last_epoch,
            step_count: c.step_count,
            base_lrs: c.base_lrs.clone(),
            last_lr: c.last_lr.clone(),
            t_cur: None,
            t_i: None,
            momentum: None,
            schedulers: self.rule.subs().iter().map(Scheduler::state_of).collect(),
        };
        self.rule.save_state(&mut state);
        state
    }

    /// Continue from a saved [`Scheduler::state`] (PyTorch's `load_state_dict`): the counters
    /// and lrs of this scheduler and of every scheduler inside it are replaced, and the saved
    /// lrs (and, where the schedule cycles momentum, momenta) are written to the driven groups
    /// of `opt`, so that the next [`crate::LrScheduler::step`] gives the same bits as it would
    /// have given without the interruption. Build the scheduler with the same schedule first
    /// (construction's initial step is overwritten here, so it may come before or after
    /// restoring the optimizer from a checkpoint).
    ///
    /// The state must come from the same kind of schedule, driving the same groups, with the same
    /// chain of schedulers inside, and hold finite lrs and counts below 2^53: anything else is an
    /// [`Error::SchedulerState`], and an `Err` changes neither the scheduler nor `opt`. Any
    /// state, however malformed, gives a result without panicking, and the checks take time in
    /// proportion to the state's size.
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
        let n = self.core.groups.len();
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
                    format!("{} values", m.len()),
                ))
            }
        }
        let groups = &self.core.groups;
        let before = read_vals(opt, groups, None)?;
        let mut after = before.clone();
        after.lr.clone_from(&state.last_lr);
        if let Some(m) = &state.momentum {
            after.momentum = m.iter().map(|&m| Some(m)).collect();
        }
        apply(opt, self.core.name, groups, &before, &after)?;
        self.set_state(state);
        self.momentum = after.momentum;
        Ok(())
    }

    /// Everything [`Scheduler::set_state`] needs holds; `path` prefixes the names in errors.
    fn check_state(&self, st: &SchedulerState, path: &str) -> Result<()> {
        let c = &self.core;
        if st.kind != c.name {
            let got: String = st.kind.chars().take(64).collect();
            return Err(state_err(format!("{path}kind"), c.name, got));
        }
        check_groups(path, &c.groups, &st.groups)?;
        let n = c.groups.len();
        check_state_values(&format!("{path}base_lrs"), &st.base_lrs, n)?;
        check_state_values(&format!("{path}last_lr"), &st.last_lr, n)?;
        check_state_count(&format!("{path}last_epoch"), st.last_epoch, -1)?;
        let step_count = i64::try_from(st.step_count).unwrap_or(i64::MAX);
        check_state_count(&format!("{path}step_count"), step_count, 0)?;
        self.rule.check_state(st, path)?;
        // Momenta are the outermost state's (checked by `load_state`); an inner one has none.
        if !path.is_empty() && st.momentum.is_some() {
            return Err(state_err(
                format!("{path}momentum"),
                "none (only the outermost state holds momenta)",
                "some",
            ));
        }
        let subs = self.rule.subs();
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
        let c: &mut Core = &mut self.core;
        c.last_epoch = st.last_epoch;
        c.step_count = st.step_count;
        c.base_lrs.clone_from(&st.base_lrs);
        c.last_lr.clone_from(&st.last_lr);
        self.rule.load_state(st);
        for (sub, s) in self.rule.subs_mut().iter_mut().zip(&st.schedulers) {
            sub.set_state(s);
        }
    }
}
