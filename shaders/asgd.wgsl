// ASGD (torch.optim.ASGD, single-tensor path). `eta` and `mu`, which torch keeps as per-tensor
// scalars derived from the step count, come in the step scalars.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    var p = load_param(i);
    let g = l2_decay(prep_grad(load_grad(i)), p, s.weight_decay);
    // param.mul_(1 - lambd * eta); param.add_(grad, alpha=-eta)
    p = add_scaled(p * s.decay, g, s.neg_eta);
    store_param(i, p);
    // mu != 1: ax.add_(param.sub(ax).mul_(mu)); else ax.copy_(param). `s.mu` is uniform.
    if (s.mu != 1.0) {
        let a = load_ax(i);
        store_ax(i, a + (p - a) * s.mu);
    } else {
        store_ax(i, p);
    }
}
