//! Saving and loading a [`Scheduler`]: [`Scheduler::state`] and [`Scheduler::load_state`], with
//! the checks of `saved.rs` run before anything changes.

use super::rules::{Core, Scheduler};
use super::runtime::{apply, read_vals};
use super::saved::{
    check_groups, check_state_count, check_state_values, state_err, SchedulerState,
};
use crate::error::Result;
use crate::optim::Optimizer;

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
    /// [`crate::Error::SchedulerState`], and an `Err` changes neither the scheduler nor `opt`. Any
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
