// LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning") as optax.lamb chains it:
// scale_by_adam, add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate:
//   m = beta1 * m + (1 - beta1) * g,  v = beta2 * v + (1 - beta2) * g * g
//   u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p
//   r = ||p|| / ||u|| over the tensor (1 where either is 0)
//   p = p - lr * (r * u)
// Two passes (OptimizerConfig::TENSOR_SUMS = 2): MODE 0 updates the moments and adds up p * p
// and u * u per tensor; MODE 2 reads the sums and writes the parameter. Both compute u from
// the stored moments, so they agree on it.

override MODE: u32 = 0u;

fn direction(i: u32, p: vec4<f32>, s: Scalars) -> vec4<f32> {
    let m_hat = load_exp_avg(i) / s.bias_correction1;
    let v_hat = load_exp_avg_sq(i) / s.bias_correction2;
    return add_scaled(m_hat / (sqrt(v_hat) + s.eps), p, s.weight_decay);
}

// Called by the entry points for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let p = load_param(i);
    if (MODE == 0u) {
        let g = prep_grad(load_grad(i));
        store_exp_avg(i, add_scaled(load_exp_avg(i) * s.beta1, g, s.one_minus_beta1));
        store_exp_avg_sq(i, addcmul(load_exp_avg_sq(i) * s.beta2, g, g, s.one_minus_beta2));
        let u = direction(i, p, s);
        accumulate(0u, p * p);
        accumulate(1u, u * u);
        return;
    }
    let u = direction(i, p, s);
    let pp = tensor_sum(i, 0u);
    let uu = tensor_sum(i, 1u);
    var ratio = 1.0;
    if (pp > 0.0 && uu > 0.0) {
        ratio = sqrt(pp) / sqrt(uu);
    }
    store_param(i, add_scaled(p, u * ratio, s.neg_lr));
}
