// Adagrad (torch.optim.Adagrad, single-tensor path).

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let p = load_param(i);
    let g = l2_decay(prep_grad(load_grad(i)), p, s.weight_decay);
    let acc = addcmul(load_sum(i), g, g, 1.0);
    store_sum(i, acc);
    let std_ = sqrt(acc) + s.eps;
    store_param(i, p + (s.neg_clr * g) / std_);
}
