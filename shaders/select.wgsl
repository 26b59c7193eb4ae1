// Copy this step's scalars out of the window of candidates (see common.wgsl): slot
// (skipped % WINDOW) of `window` into `live`, which the update kernel reads at a fixed index.
// A separate tiny pass so that the update kernel's scalar loads have uniform addresses (one
// load for the whole SIMD group; an index read from ctrl would be loaded lane by lane on
// drivers that cannot prove it uniform, such as llvmpipe).

override WINDOW: u32 = 8u;

@group(0) @binding(0) var<storage, read> window: array<vec4<f32>>;
// `Ctrl` is generated from its Rust definition (src/shader/mod.rs) and put in front of this file.
@group(0) @binding(1) var<storage, read> ctrl: Ctrl;
@group(0) @binding(2) var<storage, read_write> live: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    let n = arrayLength(&live);
    if (i < n) {
        live[i] = window[(ctrl.skipped % WINDOW) * n + i];
    }
}
