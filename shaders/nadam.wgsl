// NAdam (torch.optim.NAdam, single-tensor path). Order of operations as in ATen; the momentum
// schedule and mu_product are host-side scalars (grad_coef, exp_avg_coef).

// DECOUPLED and adam_moments: shaders/adam_family.wgsl.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let mo = adam_moments(i, s.decay_factor, s.weight_decay, s.lerp_w, s.beta2, s.one_minus_beta2);
    let m = mo.m;
    let v = mo.v;
    // exp_avg_sq.div(bias_correction2).sqrt().add_(eps)
    let denom = sqrt(v / s.bias_correction2) + s.eps;
    // two addcdiv_: the gradient's term, then the momentum's
    let p = mo.p + (s.grad_coef * mo.g) / denom;
    store_param(i, p + (s.exp_avg_coef * m) / denom);
}
