// Shared by every optimizer kernel (concatenated in front of the family's file at build time).
//
// Binding convention of an update kernel:
//   0: per-group step scalars (storage, read; the family's own struct)
//   1: ctrl: [gradient multiplier, skip flag, ...] written on the GPU by the norm pass
//   2: granule -> group table (one u32 per 64 elements), read only when GROUPED
//   3: param (read_write), 4: grad (read), 5..: optimizer state (read_write)
// Every buffer of the arena holds a multiple of 1024 f32, so one thread per vec4 and 256 threads
// per workgroup cover it exactly; the only check is the workgroup index of a 2-D grid.

override MAXIMIZE: bool = false;
override GRAD_MUL: bool = false;
override SKIP: bool = false;
override GROUPED: bool = false;

@group(0) @binding(1) var<storage, read> ctrl: array<f32>;
@group(0) @binding(2) var<storage, read> group_of: array<u32>;

const WG: u32 = 256u;

// Index of this thread's vec4, or a value >= n when the thread is past the end of the grid.
fn vec_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn group_index(i: u32) -> u32 {
    if (GROUPED) {
        return group_of[i / 16u];
    }
    return 0u;
}

fn step_skipped() -> bool {
    return SKIP && ctrl[1] != 0.0;
}

// Gradient preprocessing: loss-scale / clip multiplier, then maximize (as torch: grad = -grad).
fn prep_grad(g_in: vec4<f32>) -> vec4<f32> {
    var g = g_in;
    if (GRAD_MUL) {
        g = g * ctrl[0];
    }
    if (MAXIMIZE) {
        g = -g;
    }
    return g;
}

// torch's `grad.add(param, alpha=weight_decay)`, only when weight_decay != 0.
fn l2_decay(g: vec4<f32>, p: vec4<f32>, wd: f32) -> vec4<f32> {
    if (wd != 0.0) {
        return g + wd * p;
    }
    return g;
}

// torch.lerp(start, end, w) as ATen computes it for a scalar weight (w1 = 1 - w in f32).
fn lerp4(start: vec4<f32>, end: vec4<f32>, w: f32, w1: f32) -> vec4<f32> {
    if (abs(w) < 0.5) {
        return start + w * (end - start);
    }
    return end - (end - start) * w1;
}
