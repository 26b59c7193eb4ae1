// The shared part of every optimizer's update kernel. The host assembles a kernel as: the
// generated declarations of `Ctrl` and the optimizer's scalars struct (with `alias Scalars` and
// `unpack_scalars`, see src/shader/mod.rs), this file, dtype.wgsl, the generated buffer bindings
// (param, grad, one per state slot named as the state, the master copy and the random key),
// then the optimizer's own file, which defines `fn update(i: u32, s: Scalars)`: the update of
// elements 4i .. 4i+3 of param, grad and state.
//
// Buffers are read and written through generated accessors, `load_param(i)`, `store_param(i, v)`,
// `load_grad(i)`, `load_<state>(i)`, `store_<state>(i, v)`, all in vec4<f32>: the storage may be
// f32, or bf16/f16 packed four to a vec2<u32> (widened exactly, narrowed to nearest even or
// stochastically), and with master weights `load_param`/`store_param` use the f32 copy. An
// update kernel is specialised for each dtype combination when its pipeline is built.
//
// Binding convention of an update kernel:
//   0: step scalars (storage, read), a 64-byte slot per group. Once steps can be skipped on the
//      GPU (skipped steps do not advance torch's step count, and only the GPU knows how many
//      there were), the host writes a window of candidates and a small pass (select.wgsl)
//      copies the right one here first.
//   1: ctrl, written on the GPU by the norm pass
//   2: granule -> group table (one u32 per 64 elements), read only when GROUPED
//   3: param (read_write), 4: grad (read), 5..: optimizer state (read_write), then the f32
//   master copy (read_write, only when the optimizer keeps master weights), then the step's
//   random key (uniform)
// Every buffer of the arena holds a multiple of 1024 elements, so one thread per four elements
// and 256 threads per workgroup cover it exactly; the only check is the workgroup index of a 2-D
// grid.
//
// The entry point reads ctrl and its scalars first, before any branch (see `begin`): a load from
// a uniform address in uniform control flow is one load for the whole SIMD group on drivers that
// tell (llvmpipe/lavapipe does a scalar load and a broadcast), while the same load after the
// bounds check's early return, or at an index read from a buffer, is made lane by lane.

override MAXIMIZE: bool = false;
override GRAD_MUL: bool = false;
override SKIP: bool = false;
override L1: bool = false;
override GROUPED: bool = false;
override GROUPS: u32 = 1u;

@group(0) @binding(0) var<storage, read> scal: array<array<vec4<f32>, 4>>;
@group(0) @binding(1) var<storage, read> ctrl: Ctrl;
@group(0) @binding(2) var<storage, read> group_of: array<u32>;

const WG: u32 = 256u;

// This step's ctrl, read once by `begin` (only when an option uses it).
var<private> step_ctrl: Ctrl;
// With L1: the group's coefficient (the last word of its scalar slot) and this thread's vec4.
var<private> l1_coef: f32;
var<private> l1_at: u32;

// Index of this thread's vec4, or a value >= n when the thread is past the end of the grid.
fn vec_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// Read ctrl and return this element's scalars (its group's). Call it first thing in a kernel;
// `n` is the kernel's vec4 count.
fn begin(i: u32, n: u32) -> array<vec4<f32>, 4> {
    if (GRAD_MUL || SKIP) {
        step_ctrl = ctrl;
    }
    if (!GROUPED) {
        return scal[0];
    }
    // Threads past the end read the last granule's group (and return right after).
    let g = group_of[min(i, n - 1u) / 16u];
    if (GROUPS > 8u) {
        return scal[g];
    }
    // Up to 8 groups: every group's scalars are loaded at a uniform index (the loop has a
    // constant trip count and is unrolled), which is one load for the whole SIMD group on every
    // driver, and each thread selects its own. An index read from a buffer is loaded lane by
    // lane on drivers that cannot prove it uniform (llvmpipe), which cost grouped Adam half
    // again its time there; selecting among 8 costs it under 10%.
    var s = scal[0];
    for (var k = 1u; k < GROUPS; k = k + 1u) {
        s = pick(s, scal[k], g == k);
    }
    return s;
}

fn pick(a: array<vec4<f32>, 4>, b: array<vec4<f32>, 4>, take_b: bool) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(select(a[0], b[0], take_b), select(a[1], b[1], take_b),
                               select(a[2], b[2], take_b), select(a[3], b[3], take_b));
}

fn step_skipped() -> bool {
    return SKIP && step_ctrl.skip != 0u;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = vec_index(wid, nwg, lid);
    let n = arrayLength(&param);
    let raw = begin(i, n);
    let s = unpack_scalars(raw);
    if (L1) {
        l1_coef = raw[3].w;
        l1_at = i;
    }
    if (i >= n || step_skipped()) {
        return;
    }
    update(i, s);
}

// Gradient preprocessing: loss-scale / clip multiplier, then maximize (as torch: grad = -grad),
// then L1 regularisation, `grad + l1 * sign(param)` (after maximize, as torch adds weight decay;
// sign(param) is +-1 or 0, so this is one rounding).
fn prep_grad(g_in: vec4<f32>) -> vec4<f32> {
    var g = g_in;
    if (GRAD_MUL) {
        g = g * step_ctrl.grad_mul;
    }
    if (MAXIMIZE) {
        g = -g;
    }
    if (L1) {
        g = add_scaled(g, sign(load_param(l1_at)), l1_coef);
    }
    return g;
}

// ATen's CPU kernels (the reference torch runs) fuse multiply-adds: `a.add(b, alpha=s)` is
// fma(b, s, a), `a.addcmul(b, c, value=s)` is fma(s * b, c, a), lerp is an fma; `addcdiv` is
// a + (s * b) / c with no fusion. The helpers below follow that exactly.

// a.add(b, alpha=s)
fn add_scaled(a: vec4<f32>, b: vec4<f32>, s: f32) -> vec4<f32> {
    return fma(b, vec4<f32>(s), a);
}

// a.addcmul(b, c, value=s)
fn addcmul(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, s: f32) -> vec4<f32> {
    return fma(s * b, c, a);
}

// torch's `grad.add(param, alpha=weight_decay)`, only when weight_decay != 0.
fn l2_decay(g: vec4<f32>, p: vec4<f32>, wd: f32) -> vec4<f32> {
    if (wd != 0.0) {
        return add_scaled(g, p, wd);
    }
    return g;
}

// torch.lerp(start, end, w) as ATen's vectorised kernel computes it for a scalar weight.
fn lerp4(start: vec4<f32>, end: vec4<f32>, w: f32) -> vec4<f32> {
    if (abs(w) < 0.5) {
        return fma(vec4<f32>(w), end - start, start);
    }
    return fma(vec4<f32>(w - 1.0), end - start, end);
}
