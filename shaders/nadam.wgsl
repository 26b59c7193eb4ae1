// NAdam (torch.optim.NAdam, single-tensor path). Order of operations as in ATen; the momentum
// schedule and mu_product are host-side scalars (grad_coef, exp_avg_coef).

override DECOUPLED: bool = false;

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    var p = param[i];
    var g = prep_grad(grad[i]);
    if (DECOUPLED) {
        p = p * s.decay_factor;
    } else {
        g = l2_decay(g, p, s.weight_decay);
    }
    let m = lerp4(exp_avg[i], g, s.lerp_w);
    exp_avg[i] = m;
    let v = addcmul(exp_avg_sq[i] * s.beta2, g, g, s.one_minus_beta2);
    exp_avg_sq[i] = v;
    // exp_avg_sq.div(bias_correction2).sqrt().add_(eps)
    let denom = sqrt(v / s.bias_correction2) + s.eps;
    // two addcdiv_: the gradient's term, then the momentum's
    p = p + (s.grad_coef * g) / denom;
    param[i] = p + (s.exp_avg_coef * m) / denom;
}
