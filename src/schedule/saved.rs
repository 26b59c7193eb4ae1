//! [`SchedulerState`] (PyTorch's `state_dict()` of a [`super::Scheduler`]) and the checks every
//! loaded state passes before anything changes. A scheduler's own fields beyond the common ones
//! are its rule's (`save_state`, `check_state`, `load_state`); [`super::PlateauState`] is in the
//! plateau file.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Largest epoch or counter a loaded state may hold: far beyond any schedule, and far enough
/// below `i64::MAX` that stepping on cannot overflow.
pub(super) const MAX_STATE_EPOCH: i64 = 1 << 53;

/// What a [`super::Scheduler`] needs to continue exactly where it was (PyTorch's
/// `scheduler.state_dict()`): its counters and lrs, and those of every scheduler inside a
/// SequentialLR or ChainedScheduler. Serializable with serde (JSON numbers round-trip exactly);
/// [`crate::checkpoint::SaveOptions::schedulers`] stores it in a checkpoint.
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
