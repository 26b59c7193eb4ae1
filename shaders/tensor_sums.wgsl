// Per-tensor sums from the granule sums the update kernel's first pass wrote (see
// src/optim/engine/tensor_sums.rs): one workgroup per tensor; thread j adds the tensor's
// granules j, j + 256, ... in order, then a tree over the 256 threads (a fixed order: the same
// bits every run). K sums per granule and per tensor (at most 4); the tensors' sums go at
// TENSOR_BASE + t * K + k.
//
// segs: [where tensor t's pairs start, for t = 0..=tensors], then (first global granule,
// granule count) pairs, in the tensor's order.

override K: u32 = 1u;
override TENSOR_BASE: u32 = 0u;

@group(0) @binding(0) var<storage, read_write> sums: array<f32>;
@group(0) @binding(1) var<storage, read> segs: array<u32>;

const WG: u32 = 256u;
var<workgroup> part: array<vec4<f32>, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = wid.y * nwg.x + wid.x;
    let tensors = segs[0] - 1u;
    let live = t < tensors;
    var acc = vec4<f32>(0.0);
    if (live) {
        var j = 0u; // the tensor's granules before this segment
        for (var s = segs[t]; s < segs[t + 1u]; s = s + 2u) {
            let first = segs[s];
            let count = segs[s + 1u];
            // This thread's granules of the segment: those whose index in the tensor is
            // lid modulo 256.
            for (var g = (lid + WG - j % WG) % WG; g < count; g = g + WG) {
                for (var k = 0u; k < K; k = k + 1u) {
                    acc[k] = acc[k] + sums[(first + g) * K + k];
                }
            }
            j = j + count;
        }
    }
    part[lid] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            part[lid] = part[lid] + part[lid + stride];
        }
        workgroupBarrier();
    }
    if (live && lid == 0u) {
        for (var k = 0u; k < K; k = k + 1u) {
            sums[TENSOR_BASE + t * K + k] = part[0][k];
        }
    }
}
