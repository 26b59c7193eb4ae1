// Adagrad (torch.optim.Adagrad, single-tensor path).

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let p = param[i];
    let g = l2_decay(prep_grad(grad[i]), p, s.weight_decay);
    let acc = addcmul(sum[i], g, g, 1.0);
    sum[i] = acc;
    let std_ = sqrt(acc) + s.eps;
    param[i] = p + (s.neg_clr * g) / std_;
}
