// Schedule-Free AdamW (Defazio et al. 2024), as facebookresearch/schedule_free's
// AdamWScheduleFree steps it, torch op for torch op (ATen's `add(alpha=)` is an fma, `lerp` as
// lerp4):
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
//   denom = exp_avg_sq.div(bias_correction2).sqrt_().add_(eps)
//   grad_normalized = grad.div_(denom)
//   grad_normalized.add_(y, alpha=weight_decay)        (if weight_decay != 0)
//   y.lerp_(end=z, weight=ckp1)
//   y.add_(grad_normalized, alpha=lr * (beta1 * (1 - ckp1) - 1))
//   z.sub_(grad_normalized, alpha=lr)
// `z` starts as a copy of the parameter: on the first step it is read from the parameter.
// MODE 1 is the switch between the sequences (train() / eval()): y = lerp(y, z, w), w in ckp1.

override MODE: u32 = 0u;

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let y = load_param(i);
    let z = select(load_z(i), y, s.first != 0u);
    if (MODE == 1u) {
        store_param(i, lerp4(y, z, s.ckp1));
        return;
    }
    let g = prep_grad(load_grad(i));
    let v = addcmul(load_exp_avg_sq(i) * s.beta2, g, g, s.one_minus_beta2);
    store_exp_avg_sq(i, v);
    let u = l2_decay(g / (sqrt(v / s.bias_correction2) + s.eps), y, s.weight_decay);
    store_param(i, add_scaled(lerp4(y, z, s.ckp1), u, s.adaptive_lr));
    store_z(i, add_scaled(z, u, s.neg_lr));
}
