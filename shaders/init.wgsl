// Parameter initialisation on the GPU (wgpu_optim::init): one dispatch per piece of a tensor,
// each thread writing four elements in the tensor's dtype through the generated
// `store_out(i, v)`. Random numbers come from a counter-based hash of (seed, element index in
// the tensor), so the values do not depend on how the tensor is packed. `InitSettings` is
// generated from its Rust definition (src/init.rs) and put in front of this file.

@group(0) @binding(0) var<uniform> cfg: InitSettings;

// Uniform in [0, 1) from 24 random bits.
fn unit(h: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(h >> vec4<u32>(8u)) * (1.0 / 16777216.0);
}

// Uniform in (0, 1].
fn unit_open(h: vec4<u32>) -> vec4<f32> {
    return (vec4<f32>(h >> vec4<u32>(8u)) + 1.0) * (1.0 / 16777216.0);
}

// Stream `k` of random bits of elements e.
fn bits(e: vec4<u32>, k: u32) -> vec4<u32> {
    return fmix32(fmix32(e ^ vec4<u32>(cfg.seed_lo)) ^ vec4<u32>(cfg.seed_hi + k * 0x9e3779b9u));
}

// The inverse error function (M. Giles, "Approximating the erfinv function", single precision).
fn erfinv(x: vec4<f32>) -> vec4<f32> {
    var w = -log((1.0 - x) * (1.0 + x));
    let small = w < vec4<f32>(5.0);
    let ws = w - 2.5;
    var p = vec4<f32>(2.81022636e-08);
    p = 3.43273939e-07 + p * ws;
    p = -3.5233877e-06 + p * ws;
    p = -4.39150654e-06 + p * ws;
    p = 0.00021858087 + p * ws;
    p = -0.00125372503 + p * ws;
    p = -0.00417768164 + p * ws;
    p = 0.246640727 + p * ws;
    p = 1.50140941 + p * ws;
    let wb = sqrt(w) - 3.0;
    var q = vec4<f32>(-0.000200214257);
    q = 0.000100950558 + q * wb;
    q = 0.00134934322 + q * wb;
    q = -0.00367342844 + q * wb;
    q = 0.00573950773 + q * wb;
    q = -0.0076224613 + q * wb;
    q = 0.00943887047 + q * wb;
    q = 1.00167406 + q * wb;
    q = 2.83297682 + q * wb;
    return select(q, p, small) * x;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (t * 4u >= cfg.count) {
        return;
    }
    let e = vec4<u32>(cfg.first + t * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    var v: vec4<f32>;
    switch cfg.kind {
        case 0u: {
            v = vec4<f32>(cfg.a);
        }
        case 1u: {
            // a + (b - a) * U[0, 1)
            v = cfg.a + (cfg.b - cfg.a) * unit(bits(e, 0u));
        }
        case 2u: {
            // Box-Muller: mean + std * sqrt(-2 ln u1) cos(2 pi u2)
            let r = sqrt(-2.0 * log(unit_open(bits(e, 0u))));
            v = cfg.a + cfg.b * r * cos(6.28318530717958647 * unit(bits(e, 1u)));
        }
        default: {
            // Truncated normal as torch.nn.init.trunc_normal_: uniform in [lo, hi] = [2 cdf(a) - 1,
            // 2 cdf(b) - 1] (from the host), erfinv, scale, clamp to [a, b].
            let u = cfg.lo + (cfg.hi - cfg.lo) * unit(bits(e, 0u));
            let z = erfinv(clamp(u, vec4<f32>(-0.99999994), vec4<f32>(0.99999994)));
            v = clamp(cfg.mean + cfg.sigma * 1.41421356237 * z, vec4<f32>(cfg.a), vec4<f32>(cfg.b));
        }
    }
    // Elements past the tensor's end are padding, which stays zero.
    v = select(vec4<f32>(0.0), v, (e - vec4<u32>(cfg.first)) < vec4<u32>(cfg.count));
    store_out(cfg.at + t, v);
}
