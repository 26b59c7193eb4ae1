// Adam / AdamW (torch.optim.Adam, single-tensor path). Order of operations as in ATen.

override AMSGRAD: bool = false;
// DECOUPLED and adam_moments: shaders/adam_family.wgsl.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let mo = adam_moments(i, s.decay_factor, s.weight_decay, s.lerp_w, s.beta2, s.one_minus_beta2);
    let p = mo.p;
    let m = mo.m;
    let v = mo.v;
    var denom: vec4<f32>;
    if (AMSGRAD) {
        let vmax = max(load_max_exp_avg_sq(i), v);
        store_max_exp_avg_sq(i, vmax);
        denom = sqrt(vmax) / s.bc2_sqrt + s.eps;
    } else {
        denom = sqrt(v) / s.bc2_sqrt + s.eps;
    }
    store_param(i, p + (s.neg_step_size * m) / denom);
}
