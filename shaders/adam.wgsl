// Adam / AdamW (torch.optim.Adam, single-tensor path). Order of operations as in ATen.

override AMSGRAD: bool = false;
override DECOUPLED: bool = false;

struct AdamScalars {
    weight_decay: f32,     // L2 decay added to the gradient (Adam)
    decay_factor: f32,     // 1 - lr * weight_decay (AdamW)
    lerp_w: f32,           // 1 - beta1
    beta2: f32,
    one_minus_beta2: f32,
    neg_step_size: f32,    // -lr / (1 - beta1^t)
    bc2_sqrt: f32,         // sqrt(1 - beta2^t)
    eps: f32,
}

// The group's 16 scalars as `OptimizerConfig::scalars` lays them out on the host.
fn unpack(p: array<vec4<f32>, 4>) -> AdamScalars {
    return AdamScalars(p[0].x, p[0].y, p[0].z, p[1].x, p[1].y, p[1].z, p[1].w, p[2].x);
}

@group(0) @binding(3) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> max_exp_avg_sq: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = vec_index(wid, nwg, lid);
    let n = arrayLength(&param);
    let s = unpack(begin(i, n));
    if (i >= n || step_skipped()) {
        return;
    }
    var p = param[i];
    var g = prep_grad(grad[i]);
    if (DECOUPLED) {
        p = p * s.decay_factor;
    } else {
        g = l2_decay(g, p, s.weight_decay);
    }
    let m = lerp4(exp_avg[i], g, s.lerp_w);
    exp_avg[i] = m;
    let v = addcmul(exp_avg_sq[i] * s.beta2, g, g, s.one_minus_beta2);
    exp_avg_sq[i] = v;
    var denom: vec4<f32>;
    if (AMSGRAD) {
        let vmax = max(max_exp_avg_sq[i], v);
        max_exp_avg_sq[i] = vmax;
        denom = sqrt(vmax) / s.bc2_sqrt + s.eps;
    } else {
        denom = sqrt(v) / s.bc2_sqrt + s.eps;
    }
    param[i] = p + (s.neg_step_size * m) / denom;
}
