//! The cosine schedulers: CosineAnnealingLR (recursive form) and CosineAnnealingWarmRestarts
//! (SGDR, closed form, with its own `step` and state fields `T_cur`, `T_i`).

use super::rules::Scheduler;
use super::rules::{
    advance_default, ensure, ensure_count, epoch_of, Attach, Core, How, Options, Rule, Vals,
};
use super::saved::{check_state_count, state_err, SchedulerState};
use crate::error::Result;
use std::f64::consts::PI;

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

impl Options for CosineAnnealingLR {
    fn name(&self) -> &'static str {
        "CosineAnnealingLR"
    }

    fn validate(&self, _groups: usize) -> Result<()> {
        ensure_count("T_max", self.t_max, 1, "must be >= 1")?;
        ensure("eta_min", self.eta_min, self.eta_min >= 0.0, "must be >= 0")
    }

    fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler> {
        at.standard(self.name(), self.clone())
    }
}

impl Rule for CosineAnnealingLR {
    fn get_lr(&self, core: &Core, vals: &mut Vals, initial: bool) -> Result<Vec<f64>> {
        let (e, t, eta) = (core.last_epoch, self.t_max as f64, self.eta_min);
        let (cur, base) = (&vals.lr, &core.base_lrs);
        // The period test in i128: any T_max against any epoch.
        let t_max = self.t_max as i128;
        Ok(if initial {
            cur.clone()
        } else if core.step_count == 1 && e > 0 {
            base.iter()
                .map(|b| eta + (b - eta) * (1.0 + (e as f64 * PI / t).cos()) / 2.0)
                .collect()
        } else if (e as i128 - 1 - t_max).rem_euclid(2 * t_max) == 0 {
            let c = (PI / t).cos();
            cur.iter()
                .zip(base)
                .map(|(lr, b)| lr + (b - eta) * (1.0 - c) / 2.0)
                .collect()
        } else {
            let ratio = (1.0 + (PI * e as f64 / t).cos()) / (1.0 + (PI * (e - 1) as f64 / t).cos());
            cur.iter().map(|lr| ratio * (lr - eta) + eta).collect()
        })
    }

    fn closed_form(&self, core: &Core) -> Option<Vec<f64>> {
        let (e, eta) = (core.last_epoch as f64, self.eta_min);
        Some(
            core.base_lrs
                .iter()
                .map(|&b| eta + (b - eta) * (1.0 + (PI * e / self.t_max as f64).cos()) / 2.0)
                .collect(),
        )
    }
}

impl Options for CosineAnnealingWarmRestarts {
    fn name(&self) -> &'static str {
        "CosineAnnealingWarmRestarts"
    }

    fn validate(&self, _groups: usize) -> Result<()> {
        ensure_count("T_0", self.t_0, 1, "must be >= 1")?;
        ensure_count("T_mult", self.t_mult, 1, "must be >= 1")?;
        ensure("eta_min", self.eta_min, self.eta_min >= 0.0, "must be >= 0")
    }

    fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler> {
        let rule = WarmRestarts {
            cfg: self.clone(),
            t_cur: -1,
            t_i: epoch_of(self.t_0),
        };
        at.standard(self.name(), rule)
    }
}

/// A built CosineAnnealingWarmRestarts: its options and PyTorch's `T_cur`, `T_i`.
#[derive(Clone, Debug)]
struct WarmRestarts {
    cfg: CosineAnnealingWarmRestarts,
    t_cur: i64,
    t_i: i64,
}

impl Rule for WarmRestarts {
    fn get_lr(&self, core: &Core, _vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        let eta = self.cfg.eta_min;
        let c = (PI * self.t_cur as f64 / self.t_i as f64).cos();
        Ok(core
            .base_lrs
            .iter()
            .map(|b| eta + (b - eta) * (1.0 + c) / 2.0)
            .collect())
    }

    /// PyTorch overrides `step` (not `_update_lr`, which SequentialLR's restart uses: that one
    /// keeps the stale `T_cur`, as in PyTorch).
    fn advance(&mut self, core: &mut Core, vals: &mut Vals, how: How) -> Result<()> {
        if how == How::ZeroEpoch {
            return advance_default(self, core, vals, how);
        }
        if core.last_epoch < 0 {
            self.t_i = epoch_of(self.cfg.t_0);
            self.t_cur = 0;
            core.last_epoch = 0;
        } else {
            core.last_epoch += 1;
            self.t_cur += 1;
            if self.t_cur >= self.t_i {
                self.t_cur %= self.t_i;
                self.t_i = self.t_i.saturating_mul(epoch_of(self.cfg.t_mult));
            }
        }
        let lrs = self.get_lr(core, vals, false)?;
        core.set_lrs(vals, lrs);
        Ok(())
    }

    fn save_state(&self, state: &mut SchedulerState) {
        state.t_cur = Some(self.t_cur);
        state.t_i = Some(self.t_i);
    }

    /// `T_cur` and `T_i` both present; `T_i >= 1` (a divisor).
    fn check_state(&self, st: &SchedulerState, path: &str) -> Result<()> {
        match (st.t_cur, st.t_i) {
            (Some(t_cur), Some(t_i)) => {
                check_state_count(&format!("{path}T_cur"), t_cur, -1)?;
                check_state_count(&format!("{path}T_i"), t_i, 1)
            }
            _ => Err(state_err(
                format!("{path}T_cur, T_i"),
                "both (CosineAnnealingWarmRestarts)",
                "none or one",
            )),
        }
    }

    fn load_state(&mut self, st: &SchedulerState) {
        self.t_cur = st.t_cur.unwrap_or(self.t_cur);
        self.t_i = st.t_i.unwrap_or(self.t_i);
    }
}
