// Adadelta (torch.optim.Adadelta, single-tensor path). Order of operations as in ATen.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let p = load_param(i);
    let g = l2_decay(prep_grad(load_grad(i)), p, s.weight_decay);
    // square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
    let sq = addcmul(load_square_avg(i) * s.rho, g, g, s.one_minus_rho);
    store_square_avg(i, sq);
    // std = square_avg.add(eps).sqrt_(); delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
    let std_ = sqrt(sq + s.eps);
    let acc = load_acc_delta(i);
    let delta = (sqrt(acc + s.eps) / std_) * g;
    // acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    store_acc_delta(i, addcmul(acc * s.rho, delta, delta, s.one_minus_rho));
    // param.add_(delta, alpha=-lr)
    store_param(i, add_scaled(p, delta, s.neg_lr));
}
