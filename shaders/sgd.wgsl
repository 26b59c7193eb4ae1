// SGD with momentum / dampening / Nesterov (torch.optim.SGD, single-tensor path).

override MOMENTUM: bool = false;
override NESTEROV: bool = false;

struct SgdScalars {
    neg_lr: f32,
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
    first_step: f32,       // 1 on the step that creates the momentum buffer (buf = grad)
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: f32,
    _pad4: f32,
    _pad5: f32,
    _pad6: f32,
    _pad7: f32,
    _pad8: f32,
    _pad9: f32,
    _pad10: f32,
}

@group(0) @binding(0) var<storage, read> scal: array<SgdScalars>;
@group(0) @binding(3) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> momentum_buffer: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = vec_index(wid, nwg, lid);
    let n = arrayLength(&param);
    let s = scal[begin(i, n)];
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
