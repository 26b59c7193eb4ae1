//! Norms, sums and the scaler: the global gradient norm and clipping multiplier, the tensor sum
//! in the GPU's order, the L1 term and `GradScaler`'s update.

use super::*;

/// Total norm of all gradients (each multiplied by `inv_scale` first, as `GradScaler.unscale_`
/// does), accumulated in f64: `norm_type` 2, 1 or inf. `None` when a gradient is inf or NaN.
pub fn grad_norm(grads: &[&Array1<f32>], norm: crate::NormType, inv_scale: f32) -> Option<f64> {
    let mut acc = 0.0f64;
    for g in grads {
        for &x in g.iter() {
            let x = x * inv_scale;
            if !x.is_finite() {
                return None;
            }
            let x = x as f64;
            match norm {
                crate::NormType::L2 => acc += x * x,
                crate::NormType::L1 => acc += x.abs(),
                crate::NormType::Inf => acc = acc.max(x.abs()),
            }
        }
    }
    Some(if norm == crate::NormType::L2 {
        acc.sqrt()
    } else {
        acc
    })
}

/// The sum of `values` (one tensor's) in the order the GPU adds them up
/// ([`crate::OptimizerConfig::TENSOR_SUMS`]): each group of four lanes `((a + b) + c) + d`
/// (lanes past the end as 0), each granule of 64 elements its 16 groups in order, then thread
/// `j` of 256 the granules `j, j + 256, ...` in order, then a tree over the threads (stride
/// 128, 64, ..., 1).
///
/// ```
/// let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
/// assert_eq!(wgpu_optim::reference::tensor_sum(&v), 499500.0);
/// ```
pub fn tensor_sum(values: &[f32]) -> f32 {
    let n = values.len();
    let lane = |e: usize| if e < n { values[e] } else { 0.0 };
    let granules: Vec<f32> = (0..n.div_ceil(64))
        .map(|g| {
            let mut acc = 0.0f32;
            for t in 0..16 {
                let e = g * 64 + t * 4;
                acc += ((lane(e) + lane(e + 1)) + lane(e + 2)) + lane(e + 3);
            }
            acc
        })
        .collect();
    let mut parts = [0.0f32; 256];
    for (j, part) in parts.iter_mut().enumerate() {
        *part = granules
            .iter()
            .skip(j)
            .step_by(256)
            .fold(0.0, |a, &g| a + g);
    }
    let mut stride = 128;
    while stride > 0 {
        for l in 0..stride {
            parts[l] += parts[l + stride];
        }
        stride /= 2;
    }
    parts[0]
}

/// The gradient with L1 regularisation, as the kernels form it
/// ([`crate::FusedOptimizer::set_l1`]): `grad + l1 * sign(param)` after `maximize`'s negation.
/// The reference steps negate the gradient themselves when `maximize` is on, so this returns
/// what they must be given: `grad - l1 * sign(param)` then (its negation is `-grad + l1 *
/// sign(param)`, exactly, as the kernel computes it). `param` is the value the sign is taken of
/// (the f32 master copy where there is one); `sign(0)` is 0.
///
/// ```
/// use ndarray::array;
/// let g = wgpu_optim::reference::l1_grad(&array![2.0, -1.0, 0.0], &array![0.5, 0.5, 0.5], 0.25, false);
/// assert_eq!(g, array![0.75, 0.25, 0.5]);
/// ```
pub fn l1_grad(param: &Array1<f32>, grad: &Array1<f32>, l1: f32, maximize: bool) -> Array1<f32> {
    let s = if maximize { -l1 } else { l1 };
    ndarray::Zip::from(grad).and(param).map_collect(|&g, &p| {
        let sign = if p > 0.0 {
            1.0
        } else if p < 0.0 {
            -1.0
        } else {
            0.0
        };
        g + s * sign
    })
}

/// `clip_grad_norm_`'s multiplier in f32: `min(1, max_norm / (total_norm + 1e-6))`.
pub fn clip_coef(total_norm: f32, max_norm: f32) -> f32 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// `torch.amp.GradScaler`'s scale and growth tracker, updated as `_amp_update_scale_` does.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerState {
    /// Current scale.
    pub scale: f32,
    /// Clean steps since the last change.
    pub growth_tracker: u32,
}

impl ScalerState {
    /// The starting state of a scaler with `config`.
    pub fn new(config: &crate::ScalerConfig) -> Self {
        ScalerState {
            scale: config.init_scale,
            growth_tracker: 0,
        }
    }

    /// One `scaler.update()` after a step that did (or did not) find an inf/NaN gradient.
    ///
    /// As torch, the scale grows when a clean step brings the tracker to `growth_interval`, so a
    /// tracker already at or past it ([`crate::GradScaler::set_state`]) grows nothing until an
    /// overflow resets it; the tracker counts up to `u32::MAX` and stays there.
    pub fn update(&mut self, found_inf: bool, config: &crate::ScalerConfig) {
        if found_inf {
            self.scale *= config.backoff_factor;
            self.growth_tracker = 0;
        } else if self.growth_tracker.checked_add(1) == Some(config.growth_interval) {
            let grown = self.scale * config.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        } else {
            self.growth_tracker = self.growth_tracker.saturating_add(1);
        }
    }
}
