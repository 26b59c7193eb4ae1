// Adam / AdamW (torch.optim.Adam, single-tensor path). Order of operations as in ATen.

override AMSGRAD: bool = false;
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
    var denom: vec4<f32>;
    if (AMSGRAD) {
        let vmax = max(max_exp_avg_sq[i], v);
        max_exp_avg_sq[i] = vmax;
        denom = sqrt(vmax) / s.bc2_sqrt + s.eps;
    } else {
        denom = sqrt(v) / s.bc2_sqrt + s.eps;
    }
    param[i] = p + (s.neg_step_size * m) / denom;
}
