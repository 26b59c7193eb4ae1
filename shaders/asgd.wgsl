// ASGD (torch.optim.ASGD, single-tensor path). `eta` and `mu`, which torch keeps as per-tensor
// scalars derived from the step count, come in the step scalars.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    var p = param[i];
    let g = l2_decay(prep_grad(grad[i]), p, s.weight_decay);
    // param.mul_(1 - lambd * eta); param.add_(grad, alpha=-eta)
    p = add_scaled(p * s.decay, g, s.neg_eta);
    param[i] = p;
    // mu != 1: ax.add_(param.sub(ax).mul_(mu)); else ax.copy_(param). `s.mu` is uniform.
    if (s.mu != 1.0) {
        let a = ax[i];
        ax[i] = a + (p - a) * s.mu;
    } else {
        ax[i] = p;
    }
}
