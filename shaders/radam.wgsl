// RAdam (torch.optim.RAdam, single-tensor path). Order of operations as in ATen; whether the
// step is rectified (rho_t > 5) is decided on the host (`s.rectify`), uniformly for the dispatch.

// DECOUPLED and adam_moments: shaders/adam_family.wgsl.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let mo = adam_moments(i, s.decay_factor, s.weight_decay, s.lerp_w, s.beta2, s.one_minus_beta2);
    let p = mo.p;
    let m = mo.m;
    let v = mo.v;
    // bias_corrected_exp_avg * lr
    let step = (m / s.bias_correction1) * s.lr;
    if (s.rectify != 0.0) {
        // (bc2 ** 0.5) / (sqrt(v) + eps) is Tensor.__rtruediv__: reciprocal, then the product.
        let adaptive_lr = (1.0 / (sqrt(v) + s.eps)) * s.bc2_sqrt;
        store_param(i, p - (step * adaptive_lr) * s.rect);
    } else {
        store_param(i, p - step);
    }
}
