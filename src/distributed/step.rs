//! The data-parallel step: the gradients averaged over the ranks, the global norm from every
//! rank's partials, the fused update of this rank's shard, and the all-gather of the
//! parameters.

use super::comm::{self, agree, Fnv};
use super::{bits, config_hash, copy_shard, flat_pieces, write_flat, Sharded, StepStats};
use crate::arena;
use crate::error::{Error, Result};
use crate::norm::NormType;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::params::Params;
use crate::scaler::GradScaler;
use std::time::Instant;

impl<C: OptimizerConfig> Sharded<C> {
    fn norm_active(&self) -> bool {
        self.max_grad_norm.is_some() || self.skip_nonfinite || self.scaler.is_some()
    }

    /// Everything the ranks' next step must agree on.
    fn settings_hash(&self, scaler_state: Option<(f32, u32)>) -> u64 {
        let mut h = Fnv::new()
            .u64(config_hash(&self.config))
            .u64(self.submitted)
            .u64(self.max_grad_norm.map_or(u64::MAX, |m| m.to_bits() as u64))
            .u64(self.norm_type.p().to_bits() as u64)
            .u64(self.skip_nonfinite as u64);
        if let (Some(s), Some((scale, tracker))) = (&self.scaler, scaler_state) {
            let c = s.config();
            h = h
                .u64(scale.to_bits() as u64)
                .u64(tracker as u64)
                .u64(c.growth_factor.to_bits() as u64)
                .u64(c.backoff_factor.to_bits() as u64)
                .u64(c.growth_interval as u64);
        }
        h.finish()
    }

    /// One data-parallel step (collective): average the gradients every rank's [`Params`] holds
    /// over the ranks, clip/unscale/skip by the global norm, update this rank's shard with the
    /// fused kernels, and all-gather the parameters, so that every rank's `params` hold the same
    /// updated values. Gradients are left as they were.
    ///
    /// An invalid call on any rank (another parameter set, an invalid option, settings that
    /// differ between ranks) is an error on every rank before anything changes. A failure in
    /// the middle of the step (a lost device) is reported on every rank at its end; parameters
    /// may then differ between ranks: restore from a checkpoint.
    pub fn step(&mut self, params: &mut Params) -> Result<()> {
        let start = Instant::now();
        let mut stats = StepStats::default();
        let scaler_state = match &self.scaler {
            Some(s) => s
                .scale()
                .and_then(|scale| Ok(Some((scale, s.growth_tracker()?)))),
            None => Ok(None),
        };
        let local = self
            .check_params(params)
            .and_then(|_| self.config.validate())
            .and_then(|_| scaler_state.clone().map(|_| ()));
        let hash = self.settings_hash(scaler_state.clone().ok().flatten());
        agree(&self.comm, local, [hash, 0], ["optimizer settings", ""])?;
        let scaler_state = scaler_state.expect("agreed: no rank failed");
        let n = self.ranks();
        let me = self.plan.shard_range(self.rank);
        let c = me.len();
        let mut failure: Option<Error> = None;

        // 1. Gradients back to the host, every rank's run to its owner, summed in rank order.
        let t = Instant::now();
        let grads = self
            .gpu
            .read_pieces(&flat_pieces(&params.layout, &params.grad_bufs))
            .unwrap_or_else(|e| {
                failure.get_or_insert(e);
                vec![0.0; self.plan.total_len()]
            });
        stats.read_back = t.elapsed();
        let t = Instant::now();
        let mut recv = vec![0u32; n * c];
        let runs = (&self.runs.0[..], &self.runs.1[..]);
        comm::scatter_runs(&self.comm, bits(&grads), runs, &mut recv);
        stats.reduce_scatter = t.elapsed();
        drop(grads);
        let t = Instant::now();
        let mut avg: Vec<f32> = bytemuck::cast_slice(&recv[..c]).to_vec();
        for r in 1..n {
            let run: &[f32] = bytemuck::cast_slice(&recv[r * c..(r + 1) * c]);
            for (a, g) in avg.iter_mut().zip(run) {
                *a += *g;
            }
        }
        let ranks = n as f32;
        for a in &mut avg {
            *a /= ranks;
        }
        drop(recv);
        stats.host_math += t.elapsed();
        let total = self.plan.total_len() as u64;
        stats.bytes_received += ((n - 1) * c * 4) as u64;
        stats.bytes_sent += (total - c as u64) * 4;

        // 2. The global norm from every rank's granule partials, in granule order.
        let mut skip = false;
        self.last_norm = None;
        if self.norm_active() {
            let t = Instant::now();
            let inv = scaler_state.map_or(1.0, |(scale, _)| 1.0 / scale);
            let mine: Vec<u64> = self
                .granules
                .iter()
                .map(|g| partial(self.norm_type, &avg[g.clone()], inv).to_bits())
                .collect();
            stats.host_math += t.elapsed();
            let t = Instant::now();
            let all_count = self.granule_runs.0.iter().map(|&k| k as usize).sum();
            let mut all = vec![0u64; all_count];
            let granule_runs = (&self.granule_runs.0[..], &self.granule_runs.1[..]);
            comm::gather_runs(&self.comm, &mine, granule_runs, &mut all);
            stats.norm_exchange = t.elapsed();
            stats.bytes_received += ((all_count - mine.len()) * 8) as u64;
            stats.bytes_sent += (mine.len() * 8 * (n - 1)) as u64;
            let t = Instant::now();
            let sum = all.iter().fold(0.0f64, |acc, &p| {
                combine(self.norm_type, acc, f64::from_bits(p))
            });
            let norm = match self.norm_type {
                NormType::L2 => sum.sqrt(),
                _ => sum,
            } as f32;
            let found_inf = !sum.is_finite();
            let clip = self.max_grad_norm;
            skip = found_inf && (self.skip_nonfinite || clip.is_some() || self.scaler.is_some());
            // As shaders/norm.wgsl's finalize: grad_mul = 1/scale * min(1, max_norm / (norm + 1e-6)).
            let mut mul = inv;
            if let Some(max) = clip {
                mul *= (max / (norm + 1e-6)).min(1.0);
            }
            if (clip.is_some() || self.scaler.is_some()) && !skip {
                for a in &mut avg {
                    *a *= mul;
                }
            }
            if let (Some(s), Some((scale, tracker))) = (&self.scaler, scaler_state) {
                let (scale, tracker) = next_scale(s, scale, tracker, found_inf);
                if let Err(e) = s.set_state(scale, tracker) {
                    failure.get_or_insert(e);
                }
            }
            self.last_norm = Some(norm);
            stats.host_math += t.elapsed();
        }
        self.submitted += 1;
        self.last_skipped = skip;

        // 3. The fused update of this rank's shard, and 4. the parameters' all-gather.
        if !skip {
            self.applied += 1;
            let t = Instant::now();
            let mine: Vec<f32> = match &mut self.shard {
                Some((sp, opt)) => {
                    let updated = self
                        .gpu
                        .scoped(|| {
                            // The full parameter set is the truth: its shard, copied on the GPU.
                            copy_shard(&self.gpu, &self.plan, self.rank, params, sp);
                            let mut at = 0;
                            for slot in &sp.layout.slots {
                                arena::write_slot(
                                    &self.gpu,
                                    &sp.grad_bufs,
                                    slot,
                                    crate::DType::F32,
                                    &avg[at..at + slot.len],
                                );
                                at += slot.len;
                            }
                            Ok(())
                        })
                        .and_then(|_| opt.step(sp))
                        .and_then(|_| {
                            self.gpu
                                .read_pieces(&flat_pieces(&sp.layout, &sp.param_bufs))
                        });
                    updated.unwrap_or_else(|e| {
                        failure.get_or_insert(e);
                        vec![0.0; c]
                    })
                }
                None => Vec::new(),
            };
            stats.update = t.elapsed();
            let t = Instant::now();
            let mut flat = vec![0u32; self.plan.total_len()];
            let runs = (&self.runs.0[..], &self.runs.1[..]);
            comm::gather_runs(&self.comm, bits(&mine), runs, &mut flat);
            stats.all_gather = t.elapsed();
            stats.bytes_received += (total - c as u64) * 4;
            stats.bytes_sent += (c * 4 * (n - 1)) as u64;
            let t = Instant::now();
            if let Err(e) = self.gpu.scoped(|| {
                write_flat(&self.gpu, &params.layout, &params.param_bufs, &flat);
                Ok(())
            }) {
                failure.get_or_insert(e);
            }
            stats.upload = t.elapsed();
        }
        stats.total = start.elapsed();
        self.stats = stats;
        let done = failure.map_or(Ok(()), Err);
        agree(&self.comm, done, [0; 2], ["", ""])
    }
}

/// `a` and `b` folded by the norm: a sum (L1, L2 of squares) or a maximum (inf), NaN kept NaN.
fn combine(norm: NormType, a: f64, b: f64) -> f64 {
    match norm {
        NormType::Inf if a.is_nan() || b.is_nan() => f64::NAN,
        NormType::Inf => a.max(b),
        _ => a + b,
    }
}

/// One granule's partial of the norm of `g * inv` (each product rounded to f32, as the
/// gradient the update reads): the sum of squares (L2), of magnitudes (L1) or the largest
/// magnitude (inf), in f64 in element order. Squares of f32 are exact in f64.
fn partial(norm: NormType, g: &[f32], inv: f32) -> f64 {
    g.iter().fold(0.0f64, |acc, &x| {
        let u = (x * inv) as f64;
        match norm {
            NormType::L2 => acc + u * u,
            _ => combine(norm, acc, u.abs()),
        }
    })
}

/// `torch.amp`'s `_amp_update_scale_`, as shaders/norm.wgsl's finalize does it: back off on an
/// overflow, grow after `growth_interval` clean steps (unless that overflows f32). A tracker
/// at or past the interval grows nothing; it counts up to `u32::MAX` and stays there.
fn next_scale(s: &GradScaler, scale: f32, tracker: u32, found_inf: bool) -> (f32, u32) {
    let c = s.config();
    if found_inf {
        return (scale * c.backoff_factor, 0);
    }
    if tracker.checked_add(1) == Some(c.growth_interval) {
        let grown = scale * c.growth_factor;
        (if grown.is_finite() { grown } else { scale }, 0)
    } else {
        (scale, tracker.saturating_add(1))
    }
}
