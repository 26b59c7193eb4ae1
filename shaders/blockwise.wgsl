// 8-bit blockwise optimizer state (bitsandbytes' scheme), the part of `main_q8` that does not
// depend on the optimizer: src/shader.rs generates the entry point and each slot's accessors
// around these helpers. Host side and CPU reference: src/blockwise.rs,
// src/optim/engine/blockwise.rs.
//
// `qtab` (one per chunk): QSLOTS maps of 256 f32 (as u32 bits, one per state slot in slot
// order), then one entry of 4 words per block of 256 elements of one tensor:
//   x: the block's first vec4 in the chunk, y: its number of elements (0 for padding entries),
//   z: the word of its absmax in each slot buffer, or Q_DENSE for a tensor below min_size,
//   w: the word of its codes (64 words, four codes each) or of its f32 values (256 words).
// A workgroup of 256 threads takes four consecutive entries, 64 threads (one vec4 each) per
// block.

const Q_DENSE: u32 = 0xffffffffu;

var<workgroup> qmaps: array<array<f32, 256>, QSLOTS>;
var<workgroup> qred: array<vec4<f32>, 256>;

// Copy the maps into workgroup memory (the caller's first barrier publishes them) and return
// this thread's block entry.
fn q_begin(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> vec4<u32> {
    for (var k = 0u; k < QSLOTS; k = k + 1u) {
        qmaps[k][lid] = bitcast<f32>(qtab[k * 256u + lid]);
    }
    let entries = (arrayLength(&qtab) - QSLOTS * 256u) / 4u;
    let e = (wid.y * nwg.x + wid.x) * 4u + lid / 64u;
    let at = QSLOTS * 256u + 4u * min(e, entries - 1u);
    let nelem = select(0u, qtab[at + 1u], e < entries);
    return vec4<u32>(qtab[at], nelem, qtab[at + 2u], qtab[at + 3u]);
}

// The four values of code word `w` (element 4t + j in byte j) of slot `k`.
fn q_dequant(k: u32, w: u32, absmax: f32) -> vec4<f32> {
    return vec4<f32>(qmaps[k][w & 255u], qmaps[k][(w >> 8u) & 255u],
                     qmaps[k][(w >> 16u) & 255u], qmaps[k][w >> 24u]) * absmax;
}

// Finite lanes (by their bits: a compiler may assume floats are never NaN or infinite).
fn q_finite(v: vec4<f32>) -> vec4<bool> {
    let e = vec4<u32>(0x7f800000u);
    return (bitcast<vec4<u32>>(v) & e) != e;
}

// The largest |v| over the lanes of the tensor that are finite.
fn q_block_max(v: vec4<f32>, lanes: vec4<bool>) -> f32 {
    let a = select(vec4<f32>(0.0), abs(v), lanes & q_finite(v));
    return max(max(a.x, a.y), max(a.z, a.w));
}

// Each block's maximum of `m` (one lane per slot) over its 64 threads, in a fixed tree order.
// Called by every thread of the workgroup, in uniform control flow.
fn q_reduce(m: vec4<f32>, lid: u32) -> vec4<f32> {
    qred[lid] = m;
    workgroupBarrier();
    let t = lid % 64u;
    for (var stride = 32u; stride > 0u; stride = stride >> 1u) {
        if (t < stride) {
            qred[lid] = max(qred[lid], qred[lid + stride]);
        }
        workgroupBarrier();
    }
    return qred[lid - t];
}

// bitsandbytes' dQuantize without stochastic rounding: binary search, then the nearer of the
// two neighbours by their midpoint. A non-finite x codes as 0.
fn q_code(k: u32, x_in: f32) -> u32 {
    let x = select(0.0, x_in, q_finite(vec4<f32>(x_in)).x);
    var pivot = 127u;
    var upper_pivot = 255u;
    var lower_pivot = 0u;
    var lower = -1.0;
    var upper = 1.0;
    var val = qmaps[k][pivot];
    for (var i = 64u; i > 0u; i = i >> 1u) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot = pivot + i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot = pivot - i;
        }
        val = qmaps[k][pivot];
    }
    if (upper_pivot == 255u) {
        upper = qmaps[k][255u];
    }
    if (lower_pivot == 0u) {
        lower = qmaps[k][0u];
    }
    if (x > val) {
        return select(pivot, upper_pivot, x > (upper + val) * 0.5);
    }
    return select(pivot, lower_pivot, x < (lower + val) * 0.5);
}

// The code word of `v` in a block of absmax `absmax`: each lane scaled by 1 / absmax (rounded
// once) and coded; lanes past the tensor's end, and every lane of an all-zero block, code 0.
fn q_quant(k: u32, v: vec4<f32>, absmax: f32, lanes: vec4<bool>) -> u32 {
    if (absmax == 0.0) {
        return 0u;
    }
    let x = select(vec4<f32>(0.0), v * (1.0 / absmax), lanes);
    return q_code(k, x.x) | (q_code(k, x.y) << 8u) | (q_code(k, x.z) << 16u)
        | (q_code(k, x.w) << 24u);
}
