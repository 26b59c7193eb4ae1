// The first half of the Adam family's update (Adam, NAdam, RAdam), put in front of their own
// files: weight decay, decoupled (`p *= 1 - lr * weight_decay`, AdamW) or L2 on the gradient,
// then `exp_avg.lerp_(g, 1 - beta1)` and `exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)`,
// stored; returns them. Each family's scalars carry the fields it reads under the same names.

override DECOUPLED: bool = false;

// The decayed param, the gradient as the moments saw it (prepared, L2-decayed), the moments.
struct Moments {
    p: vec4<f32>,
    g: vec4<f32>,
    m: vec4<f32>,
    v: vec4<f32>,
}

fn adam_moments(i: u32, decay_factor: f32, weight_decay: f32, lerp_w: f32, beta2: f32,
                one_minus_beta2: f32) -> Moments {
    var p = load_param(i);
    var g = prep_grad(load_grad(i));
    if (DECOUPLED) {
        p = p * decay_factor;
    } else {
        g = l2_decay(g, p, weight_decay);
    }
    let m = lerp4(load_exp_avg(i), g, lerp_w);
    store_exp_avg(i, m);
    let v = addcmul(load_exp_avg_sq(i) * beta2, g, g, one_minus_beta2);
    store_exp_avg_sq(i, v);
    return Moments(p, g, m, v);
}
