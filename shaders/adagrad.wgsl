// Adagrad (torch.optim.Adagrad, single-tensor path).

struct AdagradScalars {
    neg_clr: f32,          // -lr / (1 + (t - 1) * lr_decay)
    weight_decay: f32,
    eps: f32,
}

// The group's 16 scalars as `OptimizerConfig::scalars` lays them out on the host.
fn unpack(p: array<vec4<f32>, 4>) -> AdagradScalars {
    return AdagradScalars(p[0].x, p[0].y, p[0].z);
}

@group(0) @binding(3) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> sum: array<vec4<f32>>;

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
    let acc = addcmul(sum[i], g, g, 1.0);
    sum[i] = acc;
    let std_ = sqrt(acc) + s.eps;
    param[i] = p + (s.neg_clr * g) / std_;
}
