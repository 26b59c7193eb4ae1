// 8-bit blockwise optimizer state (bitsandbytes' scheme), the part of `main_q8` that does not
// depend on the optimizer: src/shader/kernel.rs generates the entry point and each slot's accessors
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

// Each block's maximum of `m` (one lane per slot) over its 64 threads (three barriers).
// Called by every thread of the workgroup, in uniform control flow.
fn q_reduce(m: vec4<f32>, lid: u32) -> vec4<f32> {
    qred[lid] = m;
    workgroupBarrier();
    let t = lid % 64u;
    // Eight groups of eight, then the eight group maxima.
    let group = lid - lid % 8u;
    var r = qred[group];
    for (var j = 1u; j < 8u; j = j + 1u) {
        r = max(r, qred[group + j]);
    }
    workgroupBarrier();
    qred[lid] = r;
    workgroupBarrier();
    let base = lid - t;
    var b = qred[base];
    for (var j = 8u; j < 64u; j = j + 8u) {
        b = max(b, qred[base + j]);
    }
    return b;
}

// The nearest code of x in slot k's map, a map of bitsandbytes' `create_dynamic_map`: sorted,
// decade i in 0..7 of |x|, [10^(i-7), 10^(i-6)), holds 2^i codes (signed map) or 2^(i+1)
// (unsigned) at the centres of a linear grid, so in grid units u the midpoints between codes
// are the integers. Where u is clearly between two integers, inside a decade, the code follows
// by arithmetic; otherwise (within 1e-3 of a midpoint, a decade's first or last code, below the
// smallest code) bitsandbytes' binary search (`q_search`) decides. Both give the nearest code;
// the search's answer is the one taken wherever a midpoint is near. A non-finite x codes as 0.
fn q_code(k: u32, x_in: f32) -> u32 {
    let x = select(0.0, x_in, q_finite(vec4<f32>(x_in)).x);
    let signed = qmaps[k][0] < 0.0;
    let a = abs(x);
    // Decade i and 10^(6-i), which brings it to [0.1, 1).
    var i = 0u;
    var scale = 1e6;
    if (a >= 1e-6) {
        i = 1u;
        scale = 1e5;
    }
    if (a >= 1e-5) {
        i = 2u;
        scale = 1e4;
    }
    if (a >= 1e-4) {
        i = 3u;
        scale = 1e3;
    }
    if (a >= 1e-3) {
        i = 4u;
        scale = 1e2;
    }
    if (a >= 1e-2) {
        i = 5u;
        scale = 1e1;
    }
    if (a >= 1e-1) {
        i = 6u;
        scale = 1.0;
    }
    let per = select(2u << i, 1u << i, signed);
    let u = (a * scale - 0.1) * (f32(per) / 0.9);
    let j = floor(u);
    let frac = u - j;
    if (j < 1.0 || j > f32(per) - 2.0 || frac < 1e-3 || frac > 1.0 - 1e-3 || a < 1e-7) {
        return q_search(k, x);
    }
    let c = per - 1u + u32(j);
    if (signed) {
        return select(126u - c, 128u + c, x >= 0.0);
    }
    return c;
}

// bitsandbytes' dQuantize without stochastic rounding (`crate::blockwise::quantize_value`):
// binary search, then the nearer of the two neighbours by their midpoint.
fn q_search(k: u32, x: f32) -> u32 {
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
