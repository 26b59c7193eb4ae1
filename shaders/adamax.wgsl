// Adamax (torch.optim.Adamax, single-tensor path). Order of operations as in ATen.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let p = load_param(i);
    let g = l2_decay(prep_grad(load_grad(i)), p, s.weight_decay);
    let m = lerp4(load_exp_avg(i), g, s.lerp_w);
    store_exp_avg(i, m);
    // torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps))
    let u = max(load_exp_inf(i) * s.beta2, abs(g) + s.eps);
    store_exp_inf(i, u);
    // param.addcdiv_(exp_avg, exp_inf, value=-clr)
    store_param(i, p + (s.neg_clr * m) / u);
}
