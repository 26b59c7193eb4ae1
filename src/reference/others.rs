//! Optimizers from outside `torch.optim`, each as the implementation its users know: Lion
//! (lion-pytorch), LAMB (`optax.lamb`) and Schedule-Free AdamW (`schedulefree`).

use super::*;

/// `torch.sign` (and WGSL's `sign`): -1, 0 or 1, 0 for both zeros (`f32::signum` gives 1 for
/// +0); NaN stays NaN.
pub fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x * 0.0
    }
}

/// One step of Lion on one tensor, as lion-pytorch's `update_fn` (and `shaders/lion.wgsl`):
/// `p.mul_(1 - lr * wd)`, `update = exp_avg * beta1` then `.add(grad, alpha=1 - beta1).sign_()`,
/// `p.add_(update, alpha=-lr)`, `exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)`.
pub fn lion(cfg: &LionConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let (lr, wd) = (widen(cfg.lr), widen(cfg.weight_decay));
    let (b1, b2) = (cfg.betas.0, cfg.betas.1);
    let decay = (1.0 - lr * wd) as f32;
    let one_minus_b1 = (1.0 - widen(b1)) as f32;
    let one_minus_b2 = (1.0 - widen(b2)) as f32;
    let neg_lr = (-lr) as f32;
    let mut exp_avg = state.take("exp_avg");
    for i in 0..param.len() {
        let g = maybe_neg(grad[i], cfg.maximize);
        let m = exp_avg[i];
        let update = sign(add_scaled(m * b1, g, one_minus_b1));
        param[i] = add_scaled(param[i] * decay, update, neg_lr);
        exp_avg[i] = add_scaled(m * b2, g, one_minus_b2);
    }
    state.put("exp_avg", exp_avg);
}

/// One step of LAMB on one tensor, as `optax.lamb` (and `shaders/lamb.wgsl`): the moments,
/// `u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p`, the trust
/// ratio `sqrt(sum p^2) / sqrt(sum u^2)` over the tensor (1 where either sum is 0, each sum
/// as [`tensor_sum`] adds it up), then `p = p - lr * (ratio * u)`.
pub fn lamb(cfg: &LambConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let s = cfg.scalars(state.step);
    let mut m = state.take("exp_avg");
    let mut v = state.take("exp_avg_sq");
    let n = param.len();
    for i in 0..n {
        let g = grad[i];
        m[i] = add_scaled(m[i] * s.beta1, g, s.one_minus_beta1);
        v[i] = addcmul(v[i] * s.beta2, g, g, s.one_minus_beta2);
    }
    // The direction is computed from the moments as stored (both passes read them back).
    state.round_as_stored(0, m.as_slice_mut().expect("contiguous"));
    state.round_as_stored(1, v.as_slice_mut().expect("contiguous"));
    let mut u = vec![0.0f32; n];
    for i in 0..n {
        let (m_hat, v_hat) = (m[i] / s.bias_correction1, v[i] / s.bias_correction2);
        u[i] = add_scaled(m_hat / (v_hat.sqrt() + s.eps), param[i], s.weight_decay);
    }
    let pp = tensor_sum(&param.iter().map(|p| p * p).collect::<Vec<f32>>());
    let uu = tensor_sum(&u.iter().map(|u| u * u).collect::<Vec<f32>>());
    let ratio = if pp > 0.0 && uu > 0.0 {
        pp.sqrt() / uu.sqrt()
    } else {
        1.0
    };
    for i in 0..n {
        param[i] = add_scaled(param[i], u[i] * ratio, s.neg_lr);
    }
    state.put("exp_avg", m);
    state.put("exp_avg_sq", v);
}

/// One step of Schedule-Free AdamW on one tensor, as `schedulefree.AdamWScheduleFree.step`
/// (and `shaders/schedule_free.wgsl`): with `c` = [`ScheduleFreeAdamWConfig::ckp1`] and `lr_t`
/// = [`ScheduleFreeAdamWConfig::scheduled_lr`] of this step,
///
/// ```text
/// z = param                                   (first step)
/// v = beta2 * v + (1 - beta2) * g * g
/// u = g / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * y
/// y = lerp(y, z, c) + lr_t * (beta1 * (1 - c) - 1) * u
/// z = z - lr_t * u
/// ```
pub fn schedule_free_adamw(
    cfg: &ScheduleFreeAdamWConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let s = cfg.scalars(state.step);
    let mut z = state.take("z");
    let mut v = state.take("exp_avg_sq");
    if s.first != 0 {
        z.assign(param);
    }
    for i in 0..param.len() {
        let g = grad[i];
        v[i] = addcmul(v[i] * s.beta2, g, g, s.one_minus_beta2);
        let mut u = g / ((v[i] / s.bias_correction2).sqrt() + s.eps);
        if s.weight_decay != 0.0 {
            u = add_scaled(u, param[i], s.weight_decay);
        }
        param[i] = add_scaled(lerp(param[i], z[i], s.ckp1), u, s.adaptive_lr);
        z[i] = add_scaled(z[i], u, s.neg_lr);
    }
    state.put("z", z);
    state.put("exp_avg_sq", v);
}

/// Schedule-Free's switch between its sequences on one tensor: `param = lerp(param, z, w)`
/// (`w` = `1 - beta1` for `train()`, `1 - 1 / beta1` for `eval()`, rounded to f32).
pub fn schedule_free_switch(param: &mut Array1<f32>, z: &Array1<f32>, w: f32) {
    param.zip_mut_with(z, |p, &z| *p = lerp(*p, z, w));
}
