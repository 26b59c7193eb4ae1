// Global gradient norm and non-finite check, deterministic: a fixed reduction tree, no atomics.
//
//   first:    one workgroup per block of up to 32768 elements of one tensor -> one partial
//             (value, flag); blocks start at each tensor's start
//   first_small: tensors (or pieces) of at most 1024 elements, a team of 8 lanes each, 32
//             tensors per workgroup -> one partial each, so tiny tensors do not each cost a
//             workgroup (10,000 of them take 313 workgroups, not 10,000)
//             Every partial covers one tensor's elements in an order fixed by that tensor alone,
//             and partials are stored in tensor order, so every bit of the result is the same
//             however tensors are packed into buffers or how many share a workgroup
//   reduce:   one workgroup per 1024 partials -> one partial; repeated until one is left
//   finalize: norm, clip coefficient, skip decision, loss-scale update, into ctrl
// Partials are (value, non-finite flag); value is sum g^2 (L2), sum |g| (L1) or max |g| (inf),
// of the gradient divided by the loss scale when a scaler is attached.

override NORM: u32 = 2u;
override SCALED: bool = false;

// Ctrl, ScalerState, NormLevel and NormSettings are generated from their Rust definitions
// (src/shader/mod.rs, src/scaler.rs, src/norm.rs) and put in front of this file.

// Binding 0, `grad`, and binding 6, `grad_rw`, are generated for the gradients' dtype
// (src/shader/kernel.rs, with dtype.wgsl): read through `load_grad(i)`, `load_grad_rw(i)`,
// `store_grad_rw(i, v)`, four elements at a time.
@group(0) @binding(1) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> scaler: ScalerState;
@group(0) @binding(3) var<uniform> level: NormLevel;
@group(0) @binding(4) var<storage, read_write> ctrl: Ctrl;
@group(0) @binding(5) var<uniform> cfg: NormSettings;

// Per segment: (index of its first vec4 in the chunk, elements, index of its partial, unused).
@group(0) @binding(7) var<storage, read> segments: array<vec4<u32>>;

var<workgroup> tree: array<vec2<f32>, 256>;

fn combine(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    if (NORM == 0u) {
        return vec2<f32>(max(a.x, b.x), max(a.y, b.y));
    }
    return vec2<f32>(a.x + b.x, max(a.y, b.y));
}

fn inv_scale() -> f32 {
    if (SCALED) {
        return 1.0 / scaler.scale;
    }
    return 1.0;
}

// Fixed-order reduction over the workgroup, returning the workgroup's value in thread 0:
// 16 threads each fold 16 consecutive values in order, then thread 0 folds those 16. Two
// barriers instead of a binary tree's nine (a barrier is a costly context switch on CPU
// drivers such as llvmpipe; on GPUs the 16-long chains in shared memory cost next to nothing).
fn reduce_workgroup(lid: u32, v: vec2<f32>) -> vec2<f32> {
    tree[lid] = v;
    workgroupBarrier();
    if (lid < 16u) {
        var s = tree[lid * 16u];
        for (var j = 1u; j < 16u; j = j + 1u) {
            s = combine(s, tree[lid * 16u + j]);
        }
        tree[lid * 16u] = s;
    }
    workgroupBarrier();
    var t = vec2<f32>(0.0);
    if (lid == 0u) {
        t = tree[0];
        for (var j = 1u; j < 16u; j = j + 1u) {
            t = combine(t, tree[j * 16u]);
        }
    }
    return t;
}

// Fold one vec4 into the running per-lane value. Non-finite values are tracked apart, by the
// largest magnitude bits seen (`magnitude_bits`): 0x7f800000 is an infinity, anything above is
// a NaN. That is exact, costs two integer ops per element, and does not rely on float
// comparisons with NaN (drivers may assume there are none). The value itself may become inf or
// NaN then; finalize ignores it when the flag is set.
fn fold(acc: vec4<f32>, g: vec4<f32>) -> vec4<f32> {
    if (NORM == 2u) {
        return fma(g, g, acc);
    }
    if (NORM == 1u) {
        return acc + abs(g);
    }
    return max(acc, abs(g));
}

fn magnitude_bits(g: vec4<f32>) -> vec4<u32> {
    return bitcast<vec4<u32>>(g) & vec4<u32>(0x7fffffffu);
}

// A lane's running fold: the norm's value per component, and the largest magnitude bits seen.
struct Acc {
    v: vec4<f32>,
    bits: vec4<u32>,
}

fn add(a: Acc, g: vec4<f32>) -> Acc {
    return Acc(fold(a.v, g), max(a.bits, magnitude_bits(g)));
}

// A gradient vec4 divided by the loss scale when a scaler is attached (`inv` = inv_scale()).
fn scaled(g: vec4<f32>, inv: f32) -> vec4<f32> {
    if (SCALED) {
        return g * inv;
    }
    return g;
}

// Fold in a segment's last, partial vec4 (if any): elements past its end (padding) count as 0.
fn add_tail(a: Acc, seg: vec4<u32>, inv: f32) -> Acc {
    let whole = seg.y / 4u;
    if (whole * 4u == seg.y) {
        return a;
    }
    let tail = seg.y - whole * 4u;
    let g = scaled(load_grad(seg.x + whole), inv);
    return add(a, select(vec4<f32>(0.0), g, vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(tail)));
}

// The lane's (value, flag): flag 1 for an infinity, 2 for a NaN.
fn lane_partial(a: Acc) -> vec2<f32> {
    var v = a.v.x + a.v.y + a.v.z + a.v.w;
    if (NORM == 0u) {
        v = max(max(a.v.x, a.v.y), max(a.v.z, a.v.w));
    }
    let big = max(max(a.bits.x, a.bits.y), max(a.bits.z, a.bits.w));
    let flag = select(select(0.0, 1.0, big >= 0x7f800000u), 2.0, big > 0x7f800000u);
    return vec2<f32>(v, flag);
}

@compute @workgroup_size(256)
fn first(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let w = wid.y * nwg.x + wid.x;
    if (w >= level.count) {
        return;
    }
    let seg = segments[w];
    let inv = inv_scale();
    let whole = seg.y / 4u; // vec4s entirely inside the tensor
    var acc = Acc(vec4<f32>(0.0), vec4<u32>(0u));
    // Each thread folds up to 32 vec4s, 256 apart (coalesced), before the workgroup reduction:
    // fewer partials and far fewer barriers per element than one vec4 per thread.
    for (var k = 0u; k < 32u; k = k + 1u) {
        let q = lid + k * 256u;
        if (q < whole) {
            acc = add(acc, scaled(load_grad(seg.x + q), inv));
        }
    }
    if (lid == 0u) {
        acc = add_tail(acc, seg, inv);
    }
    let total = reduce_workgroup(lid, lane_partial(acc));
    if (lid == 0u) {
        partials[seg.z] = total;
    }
}

// Lanes per small tensor, and small tensors per workgroup.
const TEAM: u32 = 8u;
const TEAMS: u32 = 32u;

// The lane's (value, flag) of vec4s lane, lane + TEAM, ... of a small segment.
fn fold_small(seg: vec4<u32>, lane: u32) -> vec2<f32> {
    let inv = inv_scale();
    var acc = Acc(vec4<f32>(0.0), vec4<u32>(0u));
    for (var q = lane; q < seg.y / 4u; q = q + TEAM) {
        acc = add(acc, scaled(load_grad(seg.x + q), inv));
    }
    if (lane == 0u) {
        acc = add_tail(acc, seg, inv);
    }
    return lane_partial(acc);
}

@compute @workgroup_size(256)
fn first_small(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * TEAMS + lid / TEAM;
    let lane = lid % TEAM;
    var v = vec2<f32>(0.0);
    if (t < level.count) {
        v = fold_small(segments[t], lane);
    }
    tree[lid] = v;
    workgroupBarrier();
    // The team's first lane folds its 8 values in order.
    if (lane == 0u && t < level.count) {
        var s = tree[lid];
        for (var j = 1u; j < TEAM; j = j + 1u) {
            s = combine(s, tree[lid + j]);
        }
        partials[segments[t].z] = s;
    }
}

@compute @workgroup_size(256)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let w = wid.y * nwg.x + wid.x;
    if (w * 1024u >= level.count) {
        return;
    }
    var p: array<vec2<f32>, 4>;
    for (var k = 0u; k < 4u; k = k + 1u) {
        let j = w * 1024u + lid * 4u + k;
        p[k] = vec2<f32>(0.0, 0.0);
        if (j < level.count) {
            p[k] = partials[level.src + j];
        }
    }
    let total = reduce_workgroup(lid, combine(combine(p[0], p[1]), combine(p[2], p[3])));
    if (lid == 0u) {
        partials[level.dst + w] = total;
    }
}

@compute @workgroup_size(1)
fn finalize() {
    let total = partials[level.src];
    var norm = total.x;
    if (NORM == 2u) {
        norm = sqrt(total.x);
    }
    let found_inf = total.y != 0.0;
    // The bits go through a variable: a constant bitcast to NaN or inf is a WGSL error
    // (Tint, the browsers' compiler, rejects it; naga lets it through).
    var special = 0x7f800000u; // an infinite gradient: torch's norm is inf
    if (total.y >= 2.0) {
        special = 0x7fc00000u; // a NaN gradient: torch's norm is NaN
    }
    if (found_inf) {
        norm = bitcast<f32>(special);
    }
    var mul = inv_scale();
    if (cfg.clip != 0u) {
        // torch.nn.utils.clip_grad_norm_: coef = max_norm / (total_norm + 1e-6), clamped to 1.
        let coef = cfg.max_norm / (norm + 1e-6);
        mul = mul * min(coef, 1.0);
    }
    let skip = found_inf && (cfg.skip_nonfinite != 0u || cfg.clip != 0u || SCALED);
    ctrl.grad_mul = mul;
    ctrl.norm = norm;
    ctrl.skip = select(0u, 1u, skip);
    if (skip) {
        ctrl.skipped = ctrl.skipped + 1u;
    }
    if (SCALED) {
        // torch's _amp_update_scale_: back off on overflow, grow after growth_interval clean steps.
        scaler.found_inf = select(0u, 1u, found_inf);
        if (found_inf) {
            scaler.scale = scaler.scale * scaler.backoff_factor;
            scaler.growth_tracker = 0u;
        } else {
            // torch's tracker + 1 == interval without wrapping: a tracker at u32::MAX stays
            // there (it is past any interval) instead of wrapping to 0.
            let tracker = scaler.growth_tracker;
            let saturated = tracker == 0xffffffffu;
            if (!saturated && tracker + 1u == scaler.growth_interval) {
                let grown = scaler.scale * scaler.growth_factor;
                if ((bitcast<u32>(grown) & 0x7f800000u) != 0x7f800000u) {
                    scaler.scale = grown;
                }
                scaler.growth_tracker = 0u;
            } else {
                scaler.growth_tracker = tracker + select(1u, 0u, saturated);
            }
        }
    }
}

// Standalone clipping (Params::clip_grad_norm / clip_grad_value): rewrite gradients in place.

@compute @workgroup_size(256)
fn scale_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i < arrayLength(&grad_rw) && ctrl.skip == 0u) {
        store_grad_rw(i, load_grad_rw(i) * ctrl.grad_mul);
    }
}

@compute @workgroup_size(256)
fn clamp_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i < arrayLength(&grad_rw)) {
        store_grad_rw(i, clamp(load_grad_rw(i), vec4<f32>(-cfg.max_norm), vec4<f32>(cfg.max_norm)));
    }
}
