//! The optimizers of `torch.optim`, each line by line its single-tensor path
//! (`foreach=False`).

use super::*;

/// One step of `torch.optim.SGD` on one tensor: `buf.mul_(momentum).add_(grad, alpha=1 -
/// dampening)`, `grad.add(buf, alpha=momentum)` and `param.add_(grad, alpha=-lr)` are ATen's
/// fused `add(alpha=)`, as in `shaders/sgd.wgsl`.
pub fn sgd(cfg: &SgdConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let first = state.step == 1;
    let neg_lr = (-widen(cfg.lr)) as f32;
    let one_minus_dampening = (1.0 - widen(cfg.dampening)) as f32;
    let mut buf = state.take("momentum_buffer");
    for i in 0..param.len() {
        let p = param[i];
        let mut g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        if cfg.momentum != 0.0 {
            buf[i] = if first {
                g
            } else {
                add_scaled(buf[i] * cfg.momentum, g, one_minus_dampening)
            };
            g = if cfg.nesterov {
                add_scaled(g, buf[i], cfg.momentum)
            } else {
                buf[i]
            };
        }
        param[i] = add_scaled(p, g, neg_lr);
    }
    state.put("momentum_buffer", buf);
}

/// How the Adam family decays weights: decoupled (`p *= factor`, `factor = 1 - lr * wd`) or
/// L2 on the gradient.
#[derive(Clone, Copy)]
struct AdamDecay {
    decoupled: bool,
    factor: f32,
    weight_decay: f32,
}

/// The first half of Adam, NAdam and RAdam on one element (`shaders/adam_family.wgsl`): weight
/// decay, then `exp_avg.lerp_(g, 1 - beta1)` and `exp_avg_sq.mul_(beta2).addcmul_(g, g,
/// 1 - beta2)`. Returns the decayed param and the gradient the moments saw.
fn adam_moments(
    p: f32,
    g: f32,
    decay: AdamDecay,
    (m, one_minus_beta1): (&mut f32, f32),
    (v, beta2, one_minus_beta2): (&mut f32, f32, f32),
) -> (f32, f32) {
    let (mut p, mut g) = (p, g);
    if decay.decoupled {
        p *= decay.factor;
    } else {
        g = l2(g, p, decay.weight_decay);
    }
    *m = lerp(*m, g, one_minus_beta1);
    *v = addcmul(*v * beta2, g, g, one_minus_beta2);
    (p, g)
}

/// One step of `torch.optim.Adam` (AdamW when `decoupled_weight_decay`) on one tensor.
pub fn adam(cfg: &AdamConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let step = state.step as f64;
    let (lr, wd) = (widen(cfg.lr), widen(cfg.weight_decay));
    let (beta1, beta2) = (widen(cfg.betas.0), widen(cfg.betas.1));
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let neg_step_size = (-(lr / bias_correction1)) as f32;
    let bias_correction2_sqrt = bias_correction2.powf(0.5) as f32;
    let (decay, one_minus_beta1, one_minus_beta2) = (
        (1.0 - lr * wd) as f32,
        (1.0 - beta1) as f32,
        (1.0 - beta2) as f32,
    );
    let (beta2, eps) = (beta2 as f32, cfg.eps);
    let mut exp_avg = state.take("exp_avg");
    let mut exp_avg_sq = state.take("exp_avg_sq");
    let mut max_exp_avg_sq = state.take("max_exp_avg_sq");
    for i in 0..param.len() {
        let decay = AdamDecay {
            decoupled: cfg.decoupled_weight_decay,
            factor: decay,
            weight_decay: cfg.weight_decay,
        };
        let (p, _) = adam_moments(
            param[i],
            maybe_neg(grad[i], cfg.maximize),
            decay,
            (&mut exp_avg[i], one_minus_beta1),
            (&mut exp_avg_sq[i], beta2, one_minus_beta2),
        );
        let denom = if cfg.amsgrad {
            max_exp_avg_sq[i] = max_exp_avg_sq[i].max(exp_avg_sq[i]);
            max_exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps
        } else {
            exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps
        };
        param[i] = p + (neg_step_size * exp_avg[i]) / denom;
    }
    state.put("exp_avg", exp_avg);
    state.put("exp_avg_sq", exp_avg_sq);
    state.put("max_exp_avg_sq", max_exp_avg_sq);
}

/// One step of `torch.optim.RMSprop` on one tensor.
pub fn rmsprop(
    cfg: &RmsPropConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let neg_lr = (-widen(cfg.lr)) as f32;
    let one_minus_alpha = (1.0 - widen(cfg.alpha)) as f32;
    let mut square_avg = state.take("square_avg");
    let mut grad_avg = state.take("grad_avg");
    let mut buf = state.take("momentum_buffer");
    for i in 0..param.len() {
        let p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        square_avg[i] = addcmul(square_avg[i] * cfg.alpha, g, g, one_minus_alpha);
        let avg = if cfg.centered {
            grad_avg[i] = lerp(grad_avg[i], g, one_minus_alpha);
            addcmul(square_avg[i], grad_avg[i], grad_avg[i], -1.0).sqrt() + cfg.eps
        } else {
            square_avg[i].sqrt() + cfg.eps
        };
        if cfg.momentum > 0.0 {
            buf[i] = buf[i] * cfg.momentum + (1.0 * g) / avg;
            param[i] = add_scaled(p, buf[i], neg_lr);
        } else {
            param[i] = p + (neg_lr * g) / avg;
        }
    }
    state.put("square_avg", square_avg);
    state.put("grad_avg", grad_avg);
    state.put("momentum_buffer", buf);
}

/// One step of `torch.optim.Adagrad` on one tensor.
pub fn adagrad(
    cfg: &AdagradConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let step = state.step as f64;
    let clr = widen(cfg.lr) / (1.0 + (step - 1.0) * widen(cfg.lr_decay));
    let neg_clr = (-clr) as f32;
    let mut sum = state.take("sum");
    for i in 0..param.len() {
        let p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        sum[i] = addcmul(sum[i], g, g, 1.0);
        let std = sum[i].sqrt() + cfg.eps;
        param[i] = p + (neg_clr * g) / std;
    }
    state.put("sum", sum);
}

/// One step of `torch.optim.Adadelta` on one tensor.
pub fn adadelta(
    cfg: &crate::optim::AdadeltaConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let neg_lr = (-widen(cfg.lr)) as f32;
    let one_minus_rho = (1.0 - widen(cfg.rho)) as f32;
    let (rho, eps) = (cfg.rho, cfg.eps);
    let mut square_avg = state.take("square_avg");
    let mut acc_delta = state.take("acc_delta");
    for i in 0..param.len() {
        let p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        square_avg[i] = addcmul(square_avg[i] * rho, g, g, one_minus_rho);
        let std = (square_avg[i] + eps).sqrt();
        let delta = ((acc_delta[i] + eps).sqrt() / std) * g;
        acc_delta[i] = addcmul(acc_delta[i] * rho, delta, delta, one_minus_rho);
        param[i] = add_scaled(p, delta, neg_lr);
    }
    state.put("square_avg", square_avg);
    state.put("acc_delta", acc_delta);
}

/// One step of `torch.optim.Rprop` on one tensor (`step_size` starts at `lr`, see
/// [`State::new`]).
pub fn rprop(
    cfg: &crate::optim::RpropConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let (etaminus, etaplus) = cfg.etas;
    let (step_size_min, step_size_max) = cfg.step_sizes;
    let mut prev = state.take("prev");
    let mut step_size = state.take("step_size");
    for i in 0..param.len() {
        let mut g = maybe_neg(grad[i], cfg.maximize);
        let sign = g * prev[i];
        let factor = if sign > 0.0 {
            etaplus
        } else if sign < 0.0 {
            etaminus
        } else {
            1.0
        };
        step_size[i] = (step_size[i] * factor)
            .max(step_size_min)
            .min(step_size_max);
        if sign < 0.0 {
            g = 0.0;
        }
        let dir = if g > 0.0 {
            1.0
        } else if g < 0.0 {
            -1.0
        } else {
            0.0
        };
        param[i] = addcmul(param[i], dir, step_size[i], -1.0);
        prev[i] = g;
    }
    state.put("prev", prev);
    state.put("step_size", step_size);
}

/// One step of `torch.optim.ASGD` on one tensor. torch's per-tensor `eta` and `mu` are what
/// [`crate::AsgdConfig::eta`] and [`crate::AsgdConfig::mu`] give for the steps taken before.
pub fn asgd(
    cfg: &crate::optim::AsgdConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    let (eta, mu) = (cfg.eta(state.step), cfg.mu(state.step));
    state.step += 1;
    let decay = (1.0 - widen(cfg.lambd) * eta as f64) as f32;
    let neg_eta = (-(eta as f64)) as f32;
    let mut ax = state.take("ax");
    for i in 0..param.len() {
        let mut p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        p *= decay;
        p = add_scaled(p, g, neg_eta);
        param[i] = p;
        ax[i] = if mu != 1.0 {
            ax[i] + (p - ax[i]) * mu
        } else {
            p
        };
    }
    state.put("ax", ax);
}

/// One step of `torch.optim.Adamax` on one tensor.
pub fn adamax(cfg: &AdamaxConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let step = state.step as f64;
    let (lr, beta1) = (widen(cfg.lr), widen(cfg.betas.0));
    let bias_correction = 1.0 - beta1.powf(step);
    let clr = lr / bias_correction;
    let neg_clr = (-clr) as f32;
    let one_minus_beta1 = (1.0 - beta1) as f32;
    let mut exp_avg = state.take("exp_avg");
    let mut exp_inf = state.take("exp_inf");
    for i in 0..param.len() {
        let p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        exp_avg[i] = lerp(exp_avg[i], g, one_minus_beta1);
        // torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        exp_inf[i] = (exp_inf[i] * cfg.betas.1).max(g.abs() + cfg.eps);
        // param.addcdiv_(exp_avg, exp_inf, value=-clr)
        param[i] = p + (neg_clr * exp_avg[i]) / exp_inf[i];
    }
    state.put("exp_avg", exp_avg);
    state.put("exp_inf", exp_inf);
}

/// One step of `torch.optim.RAdam` on one tensor.
pub fn radam(cfg: &RAdamConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let step = state.step as f64;
    let (lr, wd) = (widen(cfg.lr), widen(cfg.weight_decay));
    let (beta1, beta2) = (widen(cfg.betas.0), widen(cfg.betas.1));
    let decay = (1.0 - lr * wd) as f32;
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    // rho_inf, rho_t and the rectification term, in f64 on the host.
    let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    let rho_t = rho_inf - 2.0 * step * beta2.powf(step) / bias_correction2;
    let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        .powf(0.5) as f32;
    let (one_minus_beta1, one_minus_beta2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
    let (bc1, bc2_sqrt) = (bias_correction1 as f32, bias_correction2.powf(0.5) as f32);
    let mut exp_avg = state.take("exp_avg");
    let mut exp_avg_sq = state.take("exp_avg_sq");
    for i in 0..param.len() {
        let decay = AdamDecay {
            decoupled: cfg.decoupled_weight_decay,
            factor: decay,
            weight_decay: cfg.weight_decay,
        };
        let (p, _) = adam_moments(
            param[i],
            maybe_neg(grad[i], cfg.maximize),
            decay,
            (&mut exp_avg[i], one_minus_beta1),
            (&mut exp_avg_sq[i], cfg.betas.1, one_minus_beta2),
        );
        let bias_corrected_exp_avg = exp_avg[i] / bc1;
        param[i] = if rho_t > 5.0 {
            // (bias_correction2 ** 0.5) / exp_avg_sq_sqrt: `Tensor.__rtruediv__`, a reciprocal
            // times the scalar.
            let adaptive_lr = (1.0 / (exp_avg_sq[i].sqrt() + cfg.eps)) * bc2_sqrt;
            p - bias_corrected_exp_avg * cfg.lr * adaptive_lr * rect
        } else {
            p - bias_corrected_exp_avg * cfg.lr
        };
    }
    state.put("exp_avg", exp_avg);
    state.put("exp_avg_sq", exp_avg_sq);
}

/// One step of `torch.optim.NAdam` on one tensor (`mu_product` as torch's float32 scalar:
/// [`NAdamConfig::mu_product`]).
pub fn nadam(cfg: &NAdamConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let step = state.step as f64;
    let (lr, wd) = (widen(cfg.lr), widen(cfg.weight_decay));
    let (beta1, beta2, md) = (
        widen(cfg.betas.0),
        widen(cfg.betas.1),
        widen(cfg.momentum_decay),
    );
    let decay = (1.0 - lr * wd) as f32;
    let bias_correction2 = (1.0 - beta2.powf(step)) as f32;
    let mu = beta1 * (1.0 - 0.5 * 0.96f64.powf(step * md));
    let mu_next = beta1 * (1.0 - 0.5 * 0.96f64.powf((step + 1.0) * md));
    // mu_product *= mu, in float32, from 1 over every step so far.
    let mut mu_product = 1.0f32;
    for k in 1..=state.step {
        mu_product *= (beta1 * (1.0 - 0.5 * 0.96f64.powf(k as f64 * md))) as f32;
    }
    let mu_product = mu_product as f64;
    let mu_product_next = mu_product * mu_next;
    let grad_coef = (-lr * (1.0 - mu) / (1.0 - mu_product)) as f32;
    let exp_avg_coef = ((-lr * mu_next) / (1.0 - mu_product_next)) as f32;
    let (one_minus_beta1, one_minus_beta2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
    let mut exp_avg = state.take("exp_avg");
    let mut exp_avg_sq = state.take("exp_avg_sq");
    for i in 0..param.len() {
        let decay = AdamDecay {
            decoupled: cfg.decoupled_weight_decay,
            factor: decay,
            weight_decay: cfg.weight_decay,
        };
        let (mut p, g) = adam_moments(
            param[i],
            maybe_neg(grad[i], cfg.maximize),
            decay,
            (&mut exp_avg[i], one_minus_beta1),
            (&mut exp_avg_sq[i], cfg.betas.1, one_minus_beta2),
        );
        let denom = (exp_avg_sq[i] / bias_correction2).sqrt() + cfg.eps;
        p += (grad_coef * g) / denom;
        param[i] = p + (exp_avg_coef * exp_avg[i]) / denom;
    }
    state.put("exp_avg", exp_avg);
    state.put("exp_avg_sq", exp_avg_sq);
}

/// One step of Adafactor on one tensor, as `torch.optim.Adafactor`'s single-tensor path and
/// `shaders/adafactor.wgsl` (see [`AdafactorConfig`] for the algorithm). The tensor's shape
/// and pieces come from [`State::with_layout`] (a vector in one piece without it). The sums
/// are added up in the GPU's order: a row's or a column's `g * g` by `fma` in index order
/// within each task (at most 256 elements, in one piece), then the tasks' sums in order; the
/// row mean over the rows in order;
/// the norms of `p` and `u` by [`tensor_sum`].
pub fn adafactor(
    cfg: &AdafactorConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let s = cfg.scalars(state.step);
    let n = param.len();
    let (shape, pieces) = state.layout.clone().unwrap_or_else(|| (vec![n], vec![n]));
    // Each piece as a tensor-local range.
    let mut ranges = Vec::with_capacity(pieces.len());
    let mut at = 0;
    for len in pieces {
        ranges.push(at..at + len);
        at += len;
    }
    let grad: Array1<f32> = grad.mapv(|g| maybe_neg(g, cfg.maximize));
    // A task of main_partials: at most FACTORED_TASK_LEN elements, all in one piece.
    let sq_sum = |elems: &mut dyn Iterator<Item = usize>| -> f32 {
        let mut total = 0.0f32;
        let mut part = None;
        let (mut piece, mut len) = (usize::MAX, 0);
        for j in elems {
            let k = ranges
                .iter()
                .position(|r| r.contains(&j))
                .expect("in a piece");
            if k != piece || len == crate::optim::FACTORED_TASK_LEN {
                total += part.take().unwrap_or(0.0);
                (piece, len) = (k, 0);
                part = Some(0.0f32);
            }
            len += 1;
            part = part.map(|acc| fma(grad[j], grad[j], acc));
        }
        total + part.unwrap_or(0.0)
    };
    let pp = tensor_sum(&param.iter().map(|p| p * p).collect::<Vec<f32>>());
    let mut v = vec![0.0f32; n];
    if shape.len() >= 2 {
        let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let batch = n / (rows * cols);
        let mut row_var = state.take_or_zeros("row_var", batch * rows);
        let mut col_var = state.take_or_zeros("col_var", batch * cols);
        let mean = |sum: f32, over: usize| sum / over as f32;
        for o in 0..batch * rows {
            let sum = sq_sum(&mut (o * cols..(o + 1) * cols));
            row_var[o] = lerp(row_var[o], mean(sum, cols), s.beta2_weight);
        }
        for o in 0..batch * cols {
            let j0 = (o / cols) * rows * cols + o % cols;
            let sum = sq_sum(&mut (0..rows).map(|r| j0 + r * cols));
            col_var[o] = lerp(col_var[o], mean(sum, rows), s.beta2_weight);
        }
        let row_mean: Vec<f32> = (0..batch)
            .map(|b| {
                let sum = row_var
                    .iter()
                    .skip(b * rows)
                    .take(rows)
                    .fold(0.0f32, |a, &x| a + x);
                (sum / rows as f32).max(s.eps1)
            })
            .collect();
        for (j, v) in v.iter_mut().enumerate() {
            let b = j / (rows * cols);
            *v = (row_var[j / cols] * col_var[b * cols + j % cols]) / row_mean[b];
        }
        state.put("row_var", row_var);
        state.put("col_var", col_var);
    } else {
        let mut variance = state.take_or_zeros("variance", n);
        for j in 0..n {
            variance[j] = lerp(variance[j], grad[j] * grad[j], s.beta2_weight);
            v[j] = variance[j];
        }
        state.put("variance", variance);
    }
    let u: Vec<f32> = (0..n)
        .map(|j| (1.0 / v[j].max(s.eps1_sq).sqrt()) * grad[j])
        .collect();
    let uu = tensor_sum(&u.iter().map(|u| u * u).collect::<Vec<f32>>());
    let sqrt_numel = (n as f64).sqrt() as f32;
    let alpha = s.eps2.max(pp.sqrt() / sqrt_numel) * s.rho;
    let denom = 1.0f32.max(uu.sqrt() / (sqrt_numel * s.d));
    for j in 0..n {
        param[j] = add_scaled(param[j] * s.decay, u[j], -(alpha / denom));
    }
}
