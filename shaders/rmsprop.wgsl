// RMSprop, optionally centered and with momentum (torch.optim.RMSprop, single-tensor path).

override CENTERED: bool = false;
override MOMENTUM: bool = false;

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let p = load_param(i);
    let g = l2_decay(prep_grad(load_grad(i)), p, s.weight_decay);
    let sq = addcmul(load_square_avg(i) * s.alpha, g, g, s.one_minus_alpha);
    store_square_avg(i, sq);
    var avg: vec4<f32>;
    if (CENTERED) {
        let ga = lerp4(load_grad_avg(i), g, s.one_minus_alpha);
        store_grad_avg(i, ga);
        avg = sqrt(addcmul(sq, ga, ga, -1.0)) + s.eps;
    } else {
        avg = sqrt(sq) + s.eps;
    }
    if (MOMENTUM) {
        let buf = load_momentum_buffer(i) * s.momentum + (1.0 * g) / avg;
        store_momentum_buffer(i, buf);
        store_param(i, add_scaled(p, buf, s.neg_lr));
    } else {
        store_param(i, p + (s.neg_lr * g) / avg);
    }
}
