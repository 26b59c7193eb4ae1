// RMSprop, optionally centered and with momentum (torch.optim.RMSprop, single-tensor path).

override CENTERED: bool = false;
override MOMENTUM: bool = false;

struct RmsPropScalars {
    neg_lr: f32,
    weight_decay: f32,
    alpha: f32,
    one_minus_alpha: f32,
    lerp_w: f32,           // 1 - alpha (grad_avg.lerp_)
    eps: f32,
    momentum: f32,
}

// The group's 16 scalars as `OptimizerConfig::scalars` lays them out on the host.
fn unpack(p: array<vec4<f32>, 4>) -> RmsPropScalars {
    return RmsPropScalars(p[0].x, p[0].y, p[0].z, p[0].w, p[1].x, p[1].z, p[1].w);
}

@group(0) @binding(3) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> square_avg: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> momentum_buffer: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> grad_avg: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = vec_index(wid, nwg, lid);
    let n = arrayLength(&param);
    let s = unpack(begin(i, n));
    if (i >= n || step_skipped()) {
        return;
    }
    let p = param[i];
    let g = l2_decay(prep_grad(grad[i]), p, s.weight_decay);
    let sq = addcmul(square_avg[i] * s.alpha, g, g, s.one_minus_alpha);
    square_avg[i] = sq;
    var avg: vec4<f32>;
    if (CENTERED) {
        let ga = lerp4(grad_avg[i], g, s.lerp_w);
        grad_avg[i] = ga;
        avg = sqrt(addcmul(sq, ga, ga, -1.0)) + s.eps;
    } else {
        avg = sqrt(sq) + s.eps;
    }
    if (MOMENTUM) {
        let buf = momentum_buffer[i] * s.momentum + (1.0 * g) / avg;
        momentum_buffer[i] = buf;
        param[i] = add_scaled(p, buf, s.neg_lr);
    } else {
        param[i] = p + (s.neg_lr * g) / avg;
    }
}
