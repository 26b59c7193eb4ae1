// SGD with momentum / dampening / Nesterov (torch.optim.SGD, single-tensor path).

override MOMENTUM: bool = false;
override NESTEROV: bool = false;

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let p = load_param(i);
    var g = l2_decay(prep_grad(load_grad(i)), p, s.weight_decay);
    if (MOMENTUM) {
        var buf: vec4<f32>;
        if (s.first_step != 0.0) {
            buf = g;
        } else {
            buf = add_scaled(load_momentum_buffer(i) * s.momentum, g, s.one_minus_dampening);
        }
        store_momentum_buffer(i, buf);
        if (NESTEROV) {
            g = add_scaled(g, buf, s.momentum);
        } else {
            g = buf;
        }
    }
    store_param(i, add_scaled(p, g, s.neg_lr));
}
