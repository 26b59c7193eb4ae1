// RAdam (torch.optim.RAdam, single-tensor path). Order of operations as in ATen; whether the
// step is rectified (rho_t > 5) is decided on the host (`s.rectify`), uniformly for the dispatch.

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
    // bias_corrected_exp_avg * lr
    let step = (m / s.bias_correction1) * s.lr;
    if (s.rectify != 0.0) {
        // (bc2 ** 0.5) / (sqrt(v) + eps) is Tensor.__rtruediv__: reciprocal, then the product.
        let adaptive_lr = (1.0 / (sqrt(v) + s.eps)) * s.bc2_sqrt;
        param[i] = p - (step * adaptive_lr) * s.rect;
    } else {
        param[i] = p - step;
    }
}
