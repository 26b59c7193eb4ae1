//! The cycling schedulers: OneCycleLR and CyclicLR (closed forms; both cycle the momentum
//! the opposite way to the lr).

use super::rules::Scheduler;
use super::rules::{bad, ensure, ensure_count, epoch_of, Attach, Core, Options, Rule, Vals};
use super::PerGroup;
use crate::error::{Error, Result};
use std::f64::consts::PI;

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

/// The momentum options OneCycleLR and CyclicLR share, and what both do with them.
trait CycledMomentum {
    /// `(cycle_momentum, base_momentum, max_momentum)`.
    fn momentum_options(&self) -> (bool, &PerGroup, &PerGroup);

    /// When cycling, both bounds resolve for `groups` groups and are >= 0.
    fn check_momentum(&self, groups: usize) -> Result<()> {
        let (cycle, base, max) = self.momentum_options();
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

    /// When cycling, the (base, max) momentum per group, and the groups' momenta set to the
    /// max (where both schedulers start).
    fn start_momentum(
        &self,
        at: &mut Attach<'_>,
        scheduler: &'static str,
    ) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
        let (cycle, base, max) = self.momentum_options();
        if !cycle {
            return Ok(None);
        }
        let n = at.groups.len();
        let (base, max) = (
            base.resolve("base_momentum", n)?,
            max.resolve("max_momentum", n)?,
        );
        at.start_momentum(scheduler, &max)?;
        Ok(Some((base, max)))
    }
}

impl CycledMomentum for OneCycleLR {
    fn momentum_options(&self) -> (bool, &PerGroup, &PerGroup) {
        (self.cycle_momentum, &self.base_momentum, &self.max_momentum)
    }
}

impl CycledMomentum for CyclicLR {
    fn momentum_options(&self) -> (bool, &PerGroup, &PerGroup) {
        (self.cycle_momentum, &self.base_momentum, &self.max_momentum)
    }
}

impl Options for OneCycleLR {
    fn name(&self) -> &'static str {
        "OneCycleLR"
    }

    fn validate(&self, groups: usize) -> Result<()> {
        ensure_count("total_steps", self.total_steps, 1, "must be >= 1")?;
        ensure(
            "pct_start",
            self.pct_start,
            (0.0..=1.0).contains(&self.pct_start),
            "must be in [0, 1]",
        )?;
        for v in self.max_lr.resolve("max_lr", groups)? {
            ensure("max_lr", v, v > 0.0, "must be > 0")?;
        }
        ensure(
            "div_factor",
            self.div_factor,
            self.div_factor > 0.0,
            "must be > 0",
        )?;
        ensure(
            "final_div_factor",
            self.final_div_factor,
            self.final_div_factor > 0.0,
            "must be > 0",
        )?;
        self.check_momentum(groups)
    }

    fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler> {
        let max_lr = self.max_lr.resolve("max_lr", at.groups.len())?;
        let initial_lr: Vec<f64> = max_lr.iter().map(|m| m / self.div_factor).collect();
        let min_lr = initial_lr
            .iter()
            .map(|l| l / self.final_div_factor)
            .collect();
        for (slot, &l) in at.vals.initial_lr.iter_mut().zip(&initial_lr) {
            *slot = Some(l);
        }
        let momentum = self.start_momentum(at, self.name())?;
        let t = self.total_steps as f64;
        let p = |end_step, start_lr, end_lr, start_momentum, end_momentum| Phase {
            end_step,
            start_lr,
            end_lr,
            start_momentum,
            end_momentum,
        };
        use Pt::*;
        let up = p(
            self.pct_start * t - 1.0,
            InitialLr,
            MaxLr,
            MaxMomentum,
            BaseMomentum,
        );
        let phases = if self.three_phase {
            vec![
                up,
                p(
                    2.0 * self.pct_start * t - 2.0,
                    MaxLr,
                    InitialLr,
                    BaseMomentum,
                    MaxMomentum,
                ),
                p(t - 1.0, InitialLr, MinLr, MaxMomentum, MaxMomentum),
            ]
        } else {
            vec![up, p(t - 1.0, MaxLr, MinLr, BaseMomentum, MaxMomentum)]
        };
        let rule = OneCycle {
            cfg: self.clone(),
            initial_lr,
            max_lr,
            min_lr,
            momentum,
            phases,
        };
        at.standard(self.name(), rule)
    }
}

/// One phase of OneCycleLR: where it ends and the named points it anneals between.
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

/// A built OneCycleLR: its options and what PyTorch's `__init__` derives from them.
#[derive(Clone, Debug)]
struct OneCycle {
    cfg: OneCycleLR,
    initial_lr: Vec<f64>,
    max_lr: Vec<f64>,
    min_lr: Vec<f64>,
    /// (base, max) momentum per group when cycling.
    momentum: Option<(Vec<f64>, Vec<f64>)>,
    phases: Vec<Phase>,
}

impl OneCycle {
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

impl Rule for OneCycle {
    fn get_lr(&self, core: &Core, vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        let (e, s) = (core.last_epoch, &self.cfg);
        if e > epoch_of(s.total_steps) {
            return Err(Error::ScheduleExhausted {
                scheduler: core.name,
                step: e,
                total_steps: s.total_steps,
            });
        }
        let step_num = e as f64;
        let anneal = |start: f64, end: f64, pct: f64| match s.anneal_strategy {
            AnnealStrategy::Cos => end + (start - end) / 2.0 * ((PI * pct).cos() + 1.0),
            AnnealStrategy::Linear => (end - start) * pct + start,
        };
        let mut lrs = Vec::with_capacity(vals.lr.len());
        for g in 0..vals.lr.len() {
            let mut start_step = 0.0;
            let last = self.phases.len() - 1;
            for (i, ph) in self.phases.iter().enumerate() {
                if step_num <= ph.end_step || i == last {
                    if ph.end_step == start_step {
                        return Err(bad(
                            "pct_start",
                            s.pct_start,
                            "gives OneCycleLR a phase of zero steps (PyTorch divides by zero)",
                        ));
                    }
                    let pct = (step_num - start_step) / (ph.end_step - start_step);
                    let lr = anneal(self.point(ph.start_lr, g), self.point(ph.end_lr, g), pct);
                    // Only the extrapolated step `total_steps` of a linear schedule can go
                    // below zero (see the module docs).
                    lrs.push(lr.max(0.0));
                    if self.momentum.is_some() {
                        vals.momentum[g] = Some(anneal(
                            self.point(ph.start_momentum, g),
                            self.point(ph.end_momentum, g),
                            pct,
                        ));
                    }
                    break;
                }
                start_step = ph.end_step;
            }
        }
        Ok(lrs)
    }

    fn cycles_momentum(&self) -> bool {
        self.momentum.is_some()
    }
}

impl Options for CyclicLR {
    fn name(&self) -> &'static str {
        "CyclicLR"
    }

    fn validate(&self, groups: usize) -> Result<()> {
        ensure_count("step_size_up", self.step_size_up, 1, "must be >= 1")?;
        let base = self.base_lr.resolve("base_lr", groups)?;
        let max = self.max_lr.resolve("max_lr", groups)?;
        for (b, m) in base.iter().zip(&max) {
            ensure("base_lr", *b, *b >= 0.0, "must be >= 0")?;
            ensure("max_lr", *m, *m >= *b, "must be >= base_lr")?;
        }
        ensure("gamma", self.gamma, self.gamma > 0.0, "must be > 0")?;
        self.check_momentum(groups)
    }

    fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler> {
        let n = at.groups.len();
        let base_lrs = self.base_lr.resolve("base_lr", n)?;
        at.vals.lr.clone_from(&base_lrs);
        let up = self.step_size_up as f64;
        let down = self.step_size_down.map_or(up, |d| d as f64);
        let total_size = up + down;
        let momentum = self.start_momentum(at, self.name())?;
        let rule = Cyclic {
            cfg: self.clone(),
            max_lrs: self.max_lr.resolve("max_lr", n)?,
            total_size,
            step_ratio: up / total_size,
            momentum,
        };
        let mut sched = at.standard(self.name(), rule)?;
        // CyclicLR sets its base lrs after its (initial-lr based) initial step.
        sched.core.base_lrs = base_lrs;
        Ok(sched)
    }
}

/// A built CyclicLR: its options and what PyTorch's `__init__` derives from them.
#[derive(Clone, Debug)]
struct Cyclic {
    cfg: CyclicLR,
    max_lrs: Vec<f64>,
    total_size: f64,
    step_ratio: f64,
    /// (base, max) momentum per group when cycling.
    momentum: Option<(Vec<f64>, Vec<f64>)>,
}

impl Rule for Cyclic {
    fn get_lr(&self, core: &Core, vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        let e = core.last_epoch;
        let q = e as f64 / self.total_size;
        let cycle = (1.0 + q).floor();
        let x = 1.0 + q - cycle;
        let scale_factor = if x <= self.step_ratio {
            x / self.step_ratio
        } else {
            (x - 1.0) / (self.step_ratio - 1.0)
        };
        let scale = match self.cfg.mode {
            CyclicMode::Triangular => 1.0,
            CyclicMode::Triangular2 => 1.0 / 2f64.powf(cycle - 1.0),
            CyclicMode::ExpRange => self.cfg.gamma.powf(e as f64),
        };
        if let Some((bm, mm)) = &self.momentum {
            for (i, slot) in vals.momentum.iter_mut().enumerate() {
                let h = (mm[i] - bm[i]) * scale_factor;
                *slot = Some(mm[i] - h * scale);
            }
        }
        Ok(core
            .base_lrs
            .iter()
            .zip(&self.max_lrs)
            .map(|(b, m)| b + (m - b) * scale_factor * scale)
            .collect())
    }

    fn cycles_momentum(&self) -> bool {
        self.momentum.is_some()
    }
}
