//! ReduceLROnPlateau: stepped with a metric rather than by epoch ([`PlateauScheduler`]), with
//! its own state type ([`PlateauState`]).

use super::rules::ensure;
use super::runtime::{apply, read_vals};
use super::saved::{check_groups, check_state_count, check_state_values, state_err};
use super::PerGroup;
use crate::error::Result;
use crate::optim::Optimizer;
use serde::{Deserialize, Serialize};

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
    /// [`crate::Error::SchedulerState`], and an `Err` changes neither the scheduler nor `opt`.
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
            let got: String = state.kind.chars().take(64).collect();
            return Err(state_err("kind", "ReduceLROnPlateau", got));
        }
        check_groups("", &self.groups, &state.groups)?;
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
