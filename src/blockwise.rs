//! 8-bit blockwise optimizer state with bitsandbytes' semantics (Dettmers et al. 2022, "8-bit
//! Optimizers via Block-wise Quantization"): each state tensor is kept as one u8 code per
//! element, in blocks of [`BLOCK`] elements with one f32 absmax per block, and a code stands for
//! `map[code] * absmax`, where `map` is one of bitsandbytes' 256-entry dynamic maps
//! ([`dynamic_map`]). Signed maps hold first-moment-like states (`exp_avg`,
//! `momentum_buffer`), unsigned maps second-moment-like ones (`exp_avg_sq`, `square_avg`,
//! `sum`).
//!
//! This module is the host side and the CPU reference: building the maps exactly as
//! `bitsandbytes.functional.create_dynamic_map` does, quantizing a block to the nearest code,
//! and dequantizing. The fused GPU step ([`crate::FusedOptimizer::set_state_format`]) matches it
//! code for code.
//!
//! ```
//! use wgpu_optim::blockwise::{dequantize, dynamic_map, quantize};
//! let map = dynamic_map(true);
//! let values: Vec<f32> = (0..600).map(|i| (i as f32 * 0.37).sin()).collect();
//! let (codes, absmax) = quantize(&map, &values);
//! assert_eq!((codes.len(), absmax.len()), (600, 3)); // blocks of 256, the last one short
//! let back = dequantize(&map, &codes, &absmax)?;
//! let worst = values.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
//! assert!(worst < 0.01);
//! # Ok::<(), wgpu_optim::Error>(())
//! ```

use crate::error::{Error, Result};

/// Elements per quantization block (bitsandbytes' blocksize for optimizer state).
pub const BLOCK: usize = 256;

/// bitsandbytes' `min_8bit_size`: tensors with fewer elements keep f32 state.
pub const DEFAULT_MIN_SIZE: usize = 4096;

/// How the optimizer stores its state, set with [`crate::FusedOptimizer::set_state_format`].
///
/// ```
/// use wgpu_optim::StateFormat;
/// assert_eq!(StateFormat::default(), StateFormat::Dense);
/// assert_eq!(StateFormat::blockwise8(), StateFormat::Blockwise8 { min_size: 4096 });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StateFormat {
    /// One value per element in the precision's state dtype (f32, bf16 or f16).
    #[default]
    Dense,
    /// bitsandbytes' 8-bit blockwise state: u8 codes in blocks of [`BLOCK`] with an f32 absmax
    /// per block. Tensors with fewer than `min_size` elements keep f32 state, as bitsandbytes
    /// does below its `min_8bit_size`.
    Blockwise8 {
        /// Tensors with fewer elements keep f32 state (bitsandbytes' default is 4096).
        min_size: usize,
    },
}

impl StateFormat {
    /// [`StateFormat::Blockwise8`] with bitsandbytes' default `min_8bit_size` (4096).
    pub fn blockwise8() -> StateFormat {
        StateFormat::Blockwise8 {
            min_size: DEFAULT_MIN_SIZE,
        }
    }

    /// Whether a tensor of `len` elements has 8-bit state under this format.
    ///
    /// ```
    /// use wgpu_optim::StateFormat;
    /// let f = StateFormat::blockwise8();
    /// assert!(f.quantizes(4096) && !f.quantizes(4095) && !StateFormat::Dense.quantizes(1 << 20));
    /// ```
    pub fn quantizes(self, len: usize) -> bool {
        match self {
            StateFormat::Dense => false,
            StateFormat::Blockwise8 { min_size } => len >= min_size,
        }
    }
}

/// One tensor's 8-bit state as stored ([`crate::FusedOptimizer::quantized_state`]): what
/// bitsandbytes keeps as `state1`/`state2` (codes), `absmax1`/`absmax2` and `qmap1`/`qmap2`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedState {
    /// One code per element.
    pub codes: Vec<u8>,
    /// One scale per block of [`BLOCK`] elements from the tensor's start.
    pub absmax: Vec<f32>,
    /// The map the codes index ([`dynamic_map`]).
    pub map: [f32; 256],
}

impl QuantizedState {
    /// The values the codes stand for ([`dequantize`]).
    ///
    /// Errors: [`Error::LengthMismatch`] when `absmax` does not hold one scale per block of
    /// `codes` (the fields are public, so a hand-built state can disagree with itself).
    pub fn values(&self) -> Result<Vec<f32>> {
        dequantize(&self.map, &self.codes, &self.absmax)
    }
}

/// Which of bitsandbytes' two dynamic maps a state slot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantMap {
    /// `create_dynamic_map(signed=True)`: for states of either sign (first moments).
    Signed,
    /// `create_dynamic_map(signed=False)`: for non-negative states (second moments).
    Unsigned,
}

impl QuantMap {
    /// The 256 values of this map ([`dynamic_map`]).
    pub fn values(self) -> [f32; 256] {
        dynamic_map(self == QuantMap::Signed)
    }
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` as ATen's CPU kernel computes it:
/// the step in f32, `start + step * i` for the first half and `end - step * (steps - 1 - i)`
/// for the second, each a fused multiply-add.
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`, value for
/// value: for each exponent `i` in 0..7, the midpoints of `linspace(0.1, 1, k)` scaled by
/// `10^(i-6)` (with `k = 2^i + 1` signed, `2^(i+1) + 1` unsigned), their negatives when signed,
/// then 0 and 1, sorted. 256 entries in [-1, 1] (signed) or [0, 1] (unsigned), each appearing
/// once.
///
/// ```
/// let signed = wgpu_optim::blockwise::dynamic_map(true);
/// let unsigned = wgpu_optim::blockwise::dynamic_map(false);
/// assert_eq!((signed[0], signed[127], signed[255]), (-0.99296874, 0.0, 1.0));
/// assert_eq!((unsigned[0], unsigned[255]), (0.0, 1.0));
/// ```
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    let max_exponent_bits = 7i32;
    let non_sign_bits = 7i32;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..max_exponent_bits {
        let items = if signed {
            (1usize << (i + non_sign_bits - max_exponent_bits)) + 1
        } else {
            (1usize << (i + non_sign_bits - max_exponent_bits + 1)) + 1
        };
        let b = linspace(0.1, 1.0, items);
        // Python's `10 ** k` times an f32 tensor: the scalar is rounded to f32 first.
        let scale = 10f64.powi(i - (max_exponent_bits - 1)) as f32;
        let means: Vec<f32> = b.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        data.extend(means.iter().map(|m| scale * m));
        if signed {
            data.extend(means.iter().map(|m| -scale * m));
        }
    }
    // additional_items = 2^(non_sign_bits - max_exponent_bits) - 1 = 0 for 7 exponent bits.
    data.push(0.0);
    data.push(1.0);
    debug_assert_eq!(data.len(), 256);
    data.sort_by(f32::total_cmp);
    let mut map = [0.0f32; 256];
    map.copy_from_slice(&data);
    map
}

/// The code of the normalised value `x` (in [-1, 1]): bitsandbytes' `dQuantize` without
/// stochastic rounding, a binary search over the sorted map followed by a comparison with the
/// midpoint to the neighbour, so the nearest code (a tie, `x` exactly on a midpoint, goes to the
/// code the search ended on). A non-finite `x` gets the code of 0.
pub fn quantize_value(map: &[f32; 256], x: f32) -> u8 {
    let x = if x.is_finite() { x } else { 0.0 };
    let mut pivot = 127usize;
    let mut upper_pivot = 255usize;
    let mut lower_pivot = 0usize;
    let mut lower = -1.0f32;
    let mut upper = 1.0f32;
    let mut val = map[pivot];
    let mut i = 64;
    while i > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
        i >>= 1;
    }
    if upper_pivot == 255 {
        upper = map[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = map[lower_pivot];
    }
    let code = if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    code as u8
}

/// The absmax of one block: the largest |v| over its finite values (0 if none), so a
/// non-finite value never spoils the block's scale.
pub fn block_absmax(values: &[f32]) -> f32 {
    values
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Quantize one block (at most [`BLOCK`] values) into `codes`; returns its absmax. Each value
/// is scaled by `1 / absmax` (rounded once, as bitsandbytes' CPU kernel does) and coded with
/// [`quantize_value`]; a block of zeros has absmax 0 and codes 0.
pub fn quantize_block(map: &[f32; 256], values: &[f32], codes: &mut [u8]) -> f32 {
    let absmax = block_absmax(values);
    if absmax == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    let inv = 1.0 / absmax;
    for (c, &v) in codes.iter_mut().zip(values) {
        *c = quantize_value(map, v * inv);
    }
    absmax
}

/// Quantize a whole tensor: codes (one per element) and one absmax per block of [`BLOCK`]
/// elements from its start.
pub fn quantize(map: &[f32; 256], values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = vec![0u8; values.len()];
    let absmax = values
        .chunks(BLOCK)
        .zip(codes.chunks_mut(BLOCK))
        .map(|(v, c)| quantize_block(map, v, c))
        .collect();
    (codes, absmax)
}

/// The values the codes stand for: `map[code] * absmax` of the element's block.
///
/// Errors: [`Error::LengthMismatch`] unless `absmax` holds exactly one scale per block of
/// [`BLOCK`] codes ([`blocks`]`(codes.len())`, as [`quantize`] returns them).
///
/// ```
/// use wgpu_optim::{blockwise::{dequantize, dynamic_map}, Error};
/// let map = dynamic_map(true);
/// assert!(matches!(
///     dequantize(&map, &[0; 300], &[1.0]), // 300 codes are 2 blocks
///     Err(Error::LengthMismatch { expected: 2, got: 1, .. })
/// ));
/// ```
pub fn dequantize(map: &[f32; 256], codes: &[u8], absmax: &[f32]) -> Result<Vec<f32>> {
    if absmax.len() != blocks(codes.len()) {
        return Err(Error::LengthMismatch {
            name: format!("absmax of {} codes", codes.len()),
            expected: blocks(codes.len()),
            got: absmax.len(),
        });
    }
    Ok(codes
        .iter()
        .enumerate()
        .map(|(i, &c)| map[c as usize] * absmax[i / BLOCK])
        .collect())
}

/// Number of blocks of a tensor of `len` elements.
pub fn blocks(len: usize) -> usize {
    len.div_ceil(BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_sorted_unique_and_bounded() {
        for signed in [true, false] {
            let m = dynamic_map(signed);
            assert!(m.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
            assert_eq!(m[255], 1.0);
            assert_eq!(m[0], if signed { -0.99296874 } else { 0.0 });
        }
    }

    #[test]
    fn quantize_value_is_the_nearest_code() {
        for signed in [true, false] {
            let map = dynamic_map(signed);
            let lo = if signed { -1.0 } else { 0.0 };
            for k in 0..20001 {
                let x = lo + (1.0 - lo) * k as f32 / 20000.0;
                let c = quantize_value(&map, x) as usize;
                let best = (0..256)
                    .map(|j| (x - map[j]).abs())
                    .fold(f32::INFINITY, f32::min);
                // Nearest, but for x within f32 rounding of a midpoint (computed in f32).
                assert!(
                    (x - map[c]).abs() - best <= 1e-6 * x.abs().max(1e-6),
                    "x = {x}"
                );
            }
            for (c, &v) in map.iter().enumerate() {
                assert_eq!(
                    quantize_value(&map, v) as usize,
                    c,
                    "a code value codes itself"
                );
            }
        }
    }

    #[test]
    fn non_finite_values_neither_scale_nor_break_a_block() {
        let map = dynamic_map(true);
        let mut codes = [0u8; 4];
        let absmax = quantize_block(&map, &[0.5, f32::NAN, f32::INFINITY, -0.25], &mut codes);
        assert_eq!(absmax, 0.5);
        let zero = quantize_value(&map, 0.0);
        assert_eq!((codes[1], codes[2]), (zero, zero));
        assert_eq!(map[codes[0] as usize], 1.0);
    }
}
