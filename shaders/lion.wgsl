// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), as lucidrains'
// lion-pytorch steps it, torch op for torch op (ATen's `add(alpha=)` is an fma):
//   p.data.mul_(1 - lr * wd)
//   update = exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sign_()
//   p.add_(update, alpha=-lr)
//   exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
// WGSL's sign(0) is 0, as torch's.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let g = prep_grad(load_grad(i));
    let m = load_exp_avg(i);
    let c = add_scaled(m * s.beta1, g, s.one_minus_beta1);
    store_param(i, add_scaled(load_param(i) * s.decay_factor, sign(c), s.neg_lr));
    store_exp_avg(i, add_scaled(m * s.beta2, g, s.one_minus_beta2));
}
