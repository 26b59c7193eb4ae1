// Rprop (torch.optim.Rprop, single-tensor path). The per-element branch on sign(grad * prev)
// is a `select`, so every lane runs the same code.

// Called by common.wgsl's entry point for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let g = prep_grad(load_grad(i));
    // sign = grad.mul(prev).sign(); sign > 0 -> etaplus, sign < 0 -> etaminus, 0 -> 1
    let prod = g * load_prev(i);
    let flipped = prod < vec4<f32>(0.0);
    let factor = select(select(vec4<f32>(1.0), vec4<f32>(s.etaplus), prod > vec4<f32>(0.0)),
                        vec4<f32>(s.etaminus), flipped);
    // step_size.mul_(sign).clamp_(step_size_min, step_size_max)
    let ss = min(max(load_step_size(i) * factor, vec4<f32>(s.step_size_min)),
                 vec4<f32>(s.step_size_max));
    store_step_size(i, ss);
    // grad[sign == etaminus] = 0
    let g2 = select(g, vec4<f32>(0.0), flipped);
    // param.addcmul_(grad.sign(), step_size, value=-1)
    store_param(i, addcmul(load_param(i), sign(g2), ss, -1.0));
    store_prev(i, g2);
}
