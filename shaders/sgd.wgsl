// SGD with momentum / dampening / Nesterov (torch.optim.SGD, single-tensor path).

override MOMENTUM: bool = false;
override NESTEROV: bool = false;

struct SgdScalars {
    neg_lr: f32,
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
    first_step: f32,       // 1 on the step that creates the momentum buffer (buf = grad)
}

// The group's 16 scalars as `OptimizerConfig::scalars` lays them out on the host.
fn unpack(p: array<vec4<f32>, 4>) -> SgdScalars {
    return SgdScalars(p[0].x, p[0].y, p[0].z, p[0].w, p[1].x);
}

@group(0) @binding(3) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> momentum_buffer: array<vec4<f32>>;

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
    var g = l2_decay(prep_grad(grad[i]), p, s.weight_decay);
    if (MOMENTUM) {
        var buf: vec4<f32>;
        if (s.first_step != 0.0) {
            buf = g;
        } else {
            buf = add_scaled(momentum_buffer[i] * s.momentum, g, s.one_minus_dampening);
        }
        momentum_buffer[i] = buf;
        if (NESTEROV) {
            g = add_scaled(g, buf, s.momentum);
        } else {
            g = buf;
        }
    }
    param[i] = add_scaled(p, g, s.neg_lr);
}
