//! Storage dtypes ([`DType`]) and the rounding every low-precision store uses, on the host: the
//! same bit operations the kernels run (`shaders/dtype.wgsl`), so GPU and CPU agree bit for bit.
//!
//! All update math is f32. A bf16 or f16 value widens to f32 exactly; an f32 narrows to bf16
//! either to nearest, ties to even ([`f32_to_bf16`]), or stochastically
//! ([`f32_to_bf16_stochastic`]: 16 random bits added below the kept bits, then truncated, so
//! the expected value is the f32 value), and to f16 to nearest even ([`f32_to_f16`]).

use crate::error::{Error, Result};

/// How a tensor is stored on the GPU. Update math is f32 whatever the storage.
///
/// 16-bit tensors are stored two elements per u32 word (little end first), every tensor starting
/// at a 256-byte aligned offset as f32 ones do.
///
/// ```
/// use wgpu_optim::DType;
/// assert_eq!(DType::Bf16.size(), 2);
/// assert_eq!(DType::F32.safetensors_name(), "F32");
/// assert_eq!("BF16".parse::<DType>()?, DType::Bf16);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    #[default]
    F32,
    /// bfloat16: f32's sign and exponent, 7 mantissa bits.
    Bf16,
    /// IEEE binary16.
    F16,
}

impl DType {
    /// Every dtype, in the order their chunks appear in an arena.
    pub const ALL: [DType; 3] = [DType::F32, DType::Bf16, DType::F16];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }

    /// Whether this is a 16-bit (packed) dtype.
    pub const fn is_half(self) -> bool {
        !matches!(self, DType::F32)
    }

    /// The dtype's name in a safetensors header (`F32`, `BF16`, `F16`).
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::Bf16 => "BF16",
            DType::F16 => "F16",
        }
    }

    /// Elements a tensor's start is a multiple of: 256 bytes.
    pub(crate) const fn align(self) -> usize {
        256 / self.size()
    }

    /// A small number naming the dtype in pipeline keys.
    pub(crate) const fn code(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::Bf16 => 1,
            DType::F16 => 2,
        }
    }

    /// `values` in this dtype's bytes (little-endian), rounded to nearest even, padded with zero
    /// elements to a whole number of u32 words.
    pub(crate) fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::Bf16 | DType::F16 => {
                let narrow = if self == DType::Bf16 {
                    f32_to_bf16
                } else {
                    f32_to_f16
                };
                let mut out = Vec::with_capacity(values.len().div_ceil(2) * 4);
                for v in values {
                    out.extend_from_slice(&narrow(*v).to_le_bytes());
                }
                if values.len() % 2 == 1 {
                    out.extend_from_slice(&[0, 0]);
                }
                out
            }
        }
    }

    /// The first `n` elements of `bytes` (this dtype, little-endian), widened to f32 exactly.
    pub(crate) fn decode(self, bytes: &[u8], n: usize) -> Vec<f32> {
        match self {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes[..n * 4]),
            DType::Bf16 | DType::F16 => {
                let widen = if self == DType::Bf16 {
                    bf16_to_f32
                } else {
                    f16_to_f32
                };
                bytes[..n * 2]
                    .chunks_exact(2)
                    .map(|b| widen(u16::from_le_bytes([b[0], b[1]])))
                    .collect()
            }
        }
    }

    /// `v` as it comes back after a store in this dtype (to nearest even).
    pub fn round(self, v: f32) -> f32 {
        match self {
            DType::F32 => v,
            DType::Bf16 => bf16_to_f32(f32_to_bf16(v)),
            DType::F16 => f16_to_f32(f32_to_f16(v)),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

impl std::str::FromStr for DType {
    type Err = Error;

    /// A safetensors dtype name (`F32`, `BF16`, `F16`; any case).
    fn from_str(s: &str) -> Result<DType> {
        match s.to_ascii_uppercase().as_str() {
            "F32" => Ok(DType::F32),
            "BF16" => Ok(DType::Bf16),
            "F16" => Ok(DType::F16),
            _ => Err(Error::InvalidOptions(format!(
                "unknown dtype `{s}` (F32, BF16 or F16)"
            ))),
        }
    }
}

/// The storage of parameters' optimizer state and how low-precision values are rounded, per
/// optimizer ([`crate::FusedOptimizer::set_precision`]).
///
/// - `state`: the dtype of every state buffer (exp_avg, momentum_buffer, ...). F32 by default;
///   Bf16 halves the state's memory and bytes per step (F16 works too, with its narrow range).
/// - `master_weights`: keep an f32 copy of every 16-bit parameter in the optimizer (state
///   `"master"`), update it, and round it into the parameter each step: the mixed-precision
///   recipe of apex and DeepSpeed. Costs 4 bytes per 16-bit parameter element.
/// - `stochastic_rounding`: every bf16 store (parameters and state) rounds stochastically
///   instead of to nearest even, from a counter-based hash of (seed, step, element), so runs are
///   reproducible. f16 stores always round to nearest even.
///
/// ```
/// use wgpu_optim::{DType, Precision};
/// let p = Precision { state: DType::Bf16, master_weights: false, stochastic_rounding: true };
/// assert_ne!(p, Precision::default());
/// assert_eq!(Precision::default().state, DType::F32);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Precision {
    /// Dtype of the optimizer's state buffers.
    pub state: DType,
    /// Keep f32 master copies of 16-bit parameters.
    pub master_weights: bool,
    /// Round bf16 stores stochastically instead of to nearest even.
    pub stochastic_rounding: bool,
}

/// f32 → bf16 bits, to nearest, ties to even; NaN stays NaN (quieted), infinities stay.
///
/// ```
/// use wgpu_optim::dtype::{bf16_to_f32, f32_to_bf16};
/// assert_eq!(f32_to_bf16(1.0), 0x3f80);
/// assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0); // a tie, to even
/// ```
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return ((b >> 16) | 0x0040) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32 (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 → bf16 bits with stochastic rounding: `noise` (its low 16 bits) is added to the f32 bits,
/// which are then truncated, so `x` rounds away from zero with probability (dropped bits) / 2^16.
/// NaN stays NaN (quieted); overflow gives infinity as rounding up would.
///
/// ```
/// use wgpu_optim::dtype::{bf16_to_f32, f32_to_bf16_stochastic};
/// let x = 1.0 + 1.0 / 512.0; // a quarter of the way from 1.0 to the next bf16
/// assert_eq!(bf16_to_f32(f32_to_bf16_stochastic(x, 0)), 1.0);
/// assert_eq!(bf16_to_f32(f32_to_bf16_stochastic(x, 0xffff)), 1.0 + 1.0 / 128.0);
/// ```
pub fn f32_to_bf16_stochastic(x: f32, noise: u32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return ((b >> 16) | 0x0040) as u16;
    }
    (b.wrapping_add(noise & 0xffff) >> 16) as u16
}

/// f32 → f16 bits, to nearest, ties to even (subnormals included); overflow gives infinity,
/// NaN stays NaN. The same bits as the `half` crate's software conversion.
///
/// ```
/// use wgpu_optim::dtype::{f16_to_f32, f32_to_f16};
/// assert_eq!(f32_to_f16(1.0), 0x3c00);
/// assert_eq!(f16_to_f32(f32_to_f16(70000.0)), f32::INFINITY);
/// ```
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// f16 bits → f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// The 32-bit finaliser of MurmurHash3: a bijection whose every output bit depends on every
/// input bit.
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The key of one step's random stream: from the optimizer's seed and its step counter.
pub const fn step_key(seed: u64, counter: u64) -> u32 {
    let lo = fmix32(seed as u32 ^ fmix32(counter as u32));
    fmix32(lo ^ fmix32((seed >> 32) as u32 ^ 0x9e37_79b9) ^ (counter >> 32) as u32)
}

/// The 32 random bits of `element` (its index inside its chunk) of buffer `stream` (0 for the
/// parameters, 1 + k for state slot k, in the optimizer's state order) under a step's `key`.
/// For a fixed key and stream it is a bijection of the element index, so the bits are uniform
/// over any aligned run of elements.
pub const fn noise(key: u32, stream: u32, element: u32) -> u32 {
    fmix32(element.wrapping_mul(0x9e37_79b1) ^ key.wrapping_add(stream.wrapping_mul(0x632b_e5ab)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trips_every_value() {
        for h in 0..=u16::MAX {
            let x = bf16_to_f32(h);
            let back = f32_to_bf16(x);
            if x.is_nan() {
                assert!(bf16_to_f32(back).is_nan());
            } else {
                assert_eq!(back, h, "{h:#06x}");
            }
        }
    }

    #[test]
    fn bf16_rounding_matches_half() {
        let mut bits = vec![
            0u32,
            0x8000_0000,
            0x0000_0001,
            0x007f_ffff,
            0x0080_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_8001,
            0x7f7f_ffff,
            0x7f7f_8000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
        ];
        let mut h = 1u32;
        for _ in 0..100_000 {
            h = fmix32(h.wrapping_add(0x9e37_79b9));
            bits.push(h);
        }
        for b in bits {
            let x = f32::from_bits(b);
            let ours = f32_to_bf16(x);
            let theirs = half::bf16::from_f32(x).to_bits();
            if x.is_nan() {
                assert!(bf16_to_f32(ours).is_nan());
            } else {
                assert_eq!(ours, theirs, "{b:#010x}");
            }
        }
    }

    #[test]
    fn stochastic_rounding_brackets_the_value() {
        for b in [0x3f80_1234u32, 0xbf80_f00d, 0x0000_1234, 0x7f7f_ffff] {
            let x = f32::from_bits(b);
            let down = f32::from_bits(b & 0xffff_0000);
            for n in [0u32, 1, 0x7fff, 0xffff] {
                let r = bf16_to_f32(f32_to_bf16_stochastic(x, n));
                assert!(r == down || r.abs() > down.abs(), "{b:#x} {n}");
            }
        }
    }

    #[test]
    fn noise_is_a_bijection_of_the_element() {
        let key = step_key(7, 3);
        let mut seen: Vec<u32> = (0..4096).map(|e| noise(key, 1, e)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 4096);
        assert_ne!(noise(key, 0, 5), noise(key, 1, 5));
        assert_ne!(step_key(7, 3), step_key(7, 4));
    }

    #[test]
    fn encode_pads_to_words() {
        assert_eq!(DType::Bf16.encode(&[1.0, 2.0, 3.0]).len(), 8);
        let b = DType::F16.encode(&[1.0, -2.0, 0.5]);
        assert_eq!(DType::F16.decode(&b, 3), vec![1.0, -2.0, 0.5]);
    }

    /// The kernels' conversions (shaders/dtype.wgsl), run on the GPU, against the host's: every
    /// bf16 and f16 value widened, and f32 edge cases, every bf16/f16 value, the midpoints
    /// between neighbours and random bit patterns narrowed (to nearest even, and stochastically
    /// with the same noise).
    #[test]
    fn gpu_conversions_match_the_host_bit_for_bit() {
        use crate::gpu::{Gpu, PipelineKey};
        use crate::kernel::{self, Bind};
        let gpu = Gpu::new().expect(
            "a GPU adapter (on Linux without a GPU: apt-get install -y mesa-vulkan-drivers)",
        );
        const SHADER: &str = "
            @group(0) @binding(0) var<storage, read> xs: array<vec4<f32>>;
            @group(0) @binding(1) var<storage, read> ws: array<vec2<u32>>;
            @group(0) @binding(2) var<storage, read_write> out_bf: array<vec2<u32>>;
            @group(0) @binding(3) var<storage, read_write> out_f16: array<vec2<u32>>;
            @group(0) @binding(4) var<storage, read_write> out_sr: array<vec2<u32>>;
            @group(0) @binding(5) var<storage, read_write> wide_bf: array<vec4<u32>>;
            @group(0) @binding(6) var<storage, read_write> wide_f16: array<vec4<u32>>;
            @compute @workgroup_size(256)
            fn main(@builtin(global_invocation_id) id: vec3<u32>) {
                let i = id.x;
                if (i < arrayLength(&xs)) {
                    out_bf[i] = narrow_bf16(xs[i]);
                    out_f16[i] = narrow_f16(xs[i]);
                    out_sr[i] = narrow_bf16_noise(xs[i], noise4(12345u, 3u, i));
                }
                if (i < arrayLength(&ws)) {
                    wide_bf[i] = bitcast<vec4<u32>>(widen_bf16(ws[i]));
                    wide_f16[i] = bitcast<vec4<u32>>(widen_f16(ws[i]));
                }
            }";
        // f32 inputs: edge cases, every bf16 and f16 value and the midpoints after them, random.
        let mut xs: Vec<u32> = vec![
            0,
            0x8000_0000,
            1,
            0x8000_0001,
            0x007f_ffff,
            0x0080_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_8001,
            0x3f80_7fff,
            0x7f7f_ffff,
            0x7f7f_8000,
            0x7f7f_7fff,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffc0_1234,
            0x4780_0000,
            0x477f_f000,
            0x477f_efff,
            0x3380_0000,
            0x3300_0000,
            0x3300_0001,
            0x3280_0000,
        ];
        for h in 0..=u16::MAX as u32 {
            xs.push(h << 16);
            xs.push((h << 16) | 0x8000);
            let f = f16_to_f32(h as u16);
            xs.push(f.to_bits());
            xs.push(f.to_bits().wrapping_add(0x1000));
        }
        let mut h = 7u32;
        while !xs.len().is_multiple_of(4) || xs.len() < 400_000 {
            h = fmix32(h.wrapping_add(0x9e37_79b9));
            xs.push(h);
        }
        // 16-bit words: every pattern, in order.
        let ws: Vec<u32> = (0..=u16::MAX as u32 / 2)
            .map(|k| (2 * k) | ((2 * k + 1) << 16))
            .collect();
        let n16 = xs.len() / 2 * 4;
        let (bgl, pl) = kernel::layout(
            &gpu,
            &[
                Some(Bind::Read),
                Some(Bind::Read),
                Some(Bind::ReadWrite),
                Some(Bind::ReadWrite),
                Some(Bind::ReadWrite),
                Some(Bind::ReadWrite),
                Some(Bind::ReadWrite),
            ],
        );
        let pipeline = gpu.pipeline(
            PipelineKey {
                shader: "dtype test",
                entry: "main",
                variant: 0,
                constants: vec![],
            },
            || crate::shader::DTYPE.to_string() + SHADER,
            &pl,
            false,
        );
        let x_buf = crate::arena::storage_with(&gpu, "xs", bytemuck::cast_slice(&xs));
        let w_buf = crate::arena::storage_with(&gpu, "ws", bytemuck::cast_slice(&ws));
        let out: Vec<wgpu::Buffer> = [n16, n16, n16, ws.len() * 8, ws.len() * 8]
            .iter()
            .map(|&b| crate::arena::storage(&gpu, "out", b as u64))
            .collect();
        let mut entries = vec![
            (0, x_buf.as_entire_buffer_binding()),
            (1, w_buf.as_entire_buffer_binding()),
        ];
        entries.extend(
            out.iter()
                .enumerate()
                .map(|(k, b)| (2 + k as u32, b.as_entire_buffer_binding())),
        );
        let bg = kernel::bind(&gpu, &bgl, &entries);
        let mut enc = gpu.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups((xs.len() / 4).div_ceil(256) as u32, 1, 1);
        }
        gpu.queue().submit([enc.finish()]);
        let read16 = |b: &wgpu::Buffer| -> Vec<u16> {
            gpu.read_with(&[(b, 0, b.size())], |bytes| {
                bytemuck::pod_collect_to_vec::<u8, u16>(bytes)
            })
            .unwrap()
        };
        let read32 = |b: &wgpu::Buffer| -> Vec<u32> {
            gpu.read_with(&[(b, 0, b.size())], |bytes| {
                bytemuck::pod_collect_to_vec::<u8, u32>(bytes)
            })
            .unwrap()
        };
        let (bf, f16, sr) = (read16(&out[0]), read16(&out[1]), read16(&out[2]));
        for (j, &b) in xs.iter().enumerate() {
            let x = f32::from_bits(b);
            let want_sr = f32_to_bf16_stochastic(x, noise(12345, 3, j as u32));
            assert_eq!(bf[j], f32_to_bf16(x), "bf16 of {b:#010x}");
            assert_eq!(f16[j], f32_to_f16(x), "f16 of {b:#010x}");
            assert_eq!(sr[j], want_sr, "stochastic bf16 of {b:#010x}");
        }
        let (wide_bf, wide_f16) = (read32(&out[3]), read32(&out[4]));
        for h in 0..=u16::MAX {
            let (gb, gf) = (wide_bf[h as usize], wide_f16[h as usize]);
            assert_eq!(gb, bf16_to_f32(h).to_bits(), "bf16 {h:#06x}");
            let want = f16_to_f32(h);
            assert!(
                gf == want.to_bits() || (want.is_nan() && f32::from_bits(gf).is_nan()),
                "f16 {h:#06x}: {gf:#010x} vs {:#010x}",
                want.to_bits()
            );
        }
    }
}
