// Loads and stores of 16-bit storage: four elements in a vec2<u32> (element 2k in the low half
// of word k), widened to f32 exactly and narrowed with the same bit operations as the host
// (src/dtype.rs), so the GPU and the CPU reference agree bit for bit. Every thread owns whole
// words: no two threads write halves of one word.

// bf16 -> f32: the bits are f32's upper half.
fn widen_bf16(w: vec2<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u,
                                        w.y & 0xffff0000u));
}

fn pack_halves(h: vec4<u32>) -> vec2<u32> {
    return vec2<u32>(h.x | (h.y << 16u), h.z | (h.w << 16u));
}

fn is_nan_bits(b: vec4<u32>) -> vec4<bool> {
    return (b & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
}

// f32 -> bf16, to nearest, ties to even; NaN stays NaN (quieted).
fn narrow_bf16(v: vec4<f32>) -> vec2<u32> {
    let b = bitcast<vec4<u32>>(v);
    let rne = (b + vec4<u32>(0x7fffu) + ((b >> vec4<u32>(16u)) & vec4<u32>(1u))) >> vec4<u32>(16u);
    return pack_halves(select(rne, (b >> vec4<u32>(16u)) | vec4<u32>(0x40u), is_nan_bits(b)));
}

// f32 -> bf16, stochastically: 16 random bits (low half of `r`) added below the kept bits, then
// truncated.
fn narrow_bf16_noise(v: vec4<f32>, r: vec4<u32>) -> vec2<u32> {
    let b = bitcast<vec4<u32>>(v);
    let sr = (b + (r & vec4<u32>(0xffffu))) >> vec4<u32>(16u);
    return pack_halves(select(sr, (b >> vec4<u32>(16u)) | vec4<u32>(0x40u), is_nan_bits(b)));
}

// MurmurHash3's 32-bit finaliser, per lane (dtype::fmix32 on the host).
fn fmix32(x: vec4<u32>) -> vec4<u32> {
    var h = x;
    h = h ^ (h >> vec4<u32>(16u));
    h = h * 0x85ebca6bu;
    h = h ^ (h >> vec4<u32>(13u));
    h = h * 0xc2b2ae35u;
    h = h ^ (h >> vec4<u32>(16u));
    return h;
}

// The random bits of elements 4i .. 4i+3 of buffer `stream` under this step's `key`
// (dtype::noise on the host).
fn noise4(key: u32, stream: u32, i: u32) -> vec4<u32> {
    let e = vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
    return fmix32((e * 0x9e3779b1u) ^ vec4<u32>(key + stream * 0x632be5abu));
}

fn f16_widen1(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = h & 0x7c00u;
    let m = h & 0x3ffu;
    if ((h & 0x7fffu) == 0u) {
        return bitcast<f32>(sign);
    }
    if (e == 0x7c00u) {
        if (m == 0u) {
            return bitcast<f32>(sign | 0x7f800000u);
        }
        return bitcast<f32>(sign | 0x7fc00000u | (m << 13u));
    }
    if (e == 0u) {
        // Subnormal: normalise the mantissa.
        let sh = countLeadingZeros(m) - 22u;
        let exp = (112u - sh) << 23u;
        return bitcast<f32>(sign | exp | ((m << (14u + sh)) & 0x7fffffu));
    }
    return bitcast<f32>(sign | (((e >> 10u) + 112u) << 23u) | (m << 13u));
}

// f16 -> f32 (exact, subnormals included).
fn widen_f16(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(f16_widen1(w.x & 0xffffu), f16_widen1(w.x >> 16u), f16_widen1(w.y & 0xffffu),
                     f16_widen1(w.y >> 16u));
}

fn f16_narrow1(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let exp = b & 0x7f800000u;
    let man = b & 0x007fffffu;
    if (exp == 0x7f800000u) {
        return sign | 0x7c00u | select(0u, 0x200u, man != 0u) | (man >> 13u);
    }
    let he = i32(exp >> 23u) - 112;
    if (he >= 31) {
        return sign | 0x7c00u;
    }
    if (he <= 0) {
        if (14 - he > 24) {
            return sign;
        }
        let m = man | 0x00800000u;
        let sh = u32(14 - he);
        let rb = 1u << (sh - 1u);
        var hm = m >> sh;
        if ((m & rb) != 0u && (m & (3u * rb - 1u)) != 0u) {
            hm = hm + 1u;
        }
        return sign | hm;
    }
    let base = sign | (u32(he) << 10u) | (man >> 13u);
    if ((man & 0x1000u) != 0u && (man & 0x2fffu) != 0u) {
        return base + 1u;
    }
    return base;
}

// f32 -> f16, to nearest, ties to even; overflow to infinity, NaN stays NaN.
fn narrow_f16(v: vec4<f32>) -> vec2<u32> {
    return pack_halves(vec4<u32>(f16_narrow1(v.x), f16_narrow1(v.y), f16_narrow1(v.z),
                                 f16_narrow1(v.w)));
}
