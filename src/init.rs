//! Parameter initialisation on the GPU with `torch.nn.init`'s semantics: [`uniform`],
//! [`normal`], [`trunc_normal`], [`constant`], [`zeros`], [`ones`], [`xavier_uniform`],
//! [`xavier_normal`], [`kaiming_uniform`] and [`kaiming_normal`] (fan modes and nonlinearity
//! gains as torch computes them: [`fan_in_and_fan_out`], [`calculate_gain`]).
//!
//! Values are drawn from a seed with a counter-based hash of (seed, element index), computed in
//! f32 and written in the tensor's own dtype (rounded to nearest even), on the GPU: nothing is
//! uploaded, and the same seed gives the same tensor whatever the arena's packing. The streams
//! are not torch's (torch's generator is not reproducible on a GPU anyway); the distributions
//! are.
//!
//! ```no_run
//! use wgpu_optim::{init, DType, Gpu, Params};
//! let gpu = Gpu::new()?;
//! let mut params = Params::builder(&gpu)
//!     .tensor("fc1.weight", &[256, 784], DType::Bf16)
//!     .tensor("fc1.bias", &[256], DType::F32)
//!     .build()?;
//! init::kaiming_uniform(&mut params, "fc1.weight", 7)?; // bound sqrt(6 / 784)
//! init::uniform(&mut params, "fc1.bias", -0.0357, 0.0357, 8)?;
//! # Ok::<(), wgpu_optim::Error>(())
//! ```

use crate::arena;
use crate::dtype::DType;
use crate::error::{check, Error, Result};
use crate::gpu::PipelineKey;
use crate::kernel::{self, Bind};
use crate::params::Params;
use crate::shader::{self, ShaderStruct};

const SHADER: &str = include_str!("../shaders/init.wgsl");

crate::shader_struct! {
    /// What one dispatch of the init kernel writes: a piece of a tensor.
    pub(crate) struct InitSettings {
        /// 0 constant `a`, 1 uniform [a, b), 2 normal (mean a, std b), 3 truncated normal.
        pub kind: u32,
        pub seed_lo: u32,
        pub seed_hi: u32,
        /// Index in the tensor of the piece's first element.
        pub first: u32,
        /// Elements in the piece.
        pub count: u32,
        /// Index of the piece's first vec4 in its chunk.
        pub at: u32,
        pub a: f32,
        pub b: f32,
        pub mean: f32,
        pub sigma: f32,
        /// The truncated normal's uniform range.
        pub lo: f32,
        pub hi: f32,
    }
}

/// Which fan [`kaiming_uniform_with`] and [`kaiming_normal_with`] scale by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FanMode {
    /// Preserve the variance of the forward pass (torch's default).
    #[default]
    FanIn,
    /// Preserve the variance of the backward pass.
    FanOut,
}

/// The nonlinearity after a layer, for [`calculate_gain`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Nonlinearity {
    /// Identity (also conv1d/2d/3d and their transposes): gain 1.
    Linear,
    /// Gain 1.
    Sigmoid,
    /// Gain 5/3.
    Tanh,
    /// Gain √2.
    Relu,
    /// Gain √(2 / (1 + slope²)); [`Kaiming`] passes its `a` as the slope, as torch does.
    #[default]
    LeakyRelu,
    /// Gain 3/4.
    Selu,
}

/// `torch.nn.init.calculate_gain(nonlinearity, param)`: `param` is leaky ReLU's negative slope
/// (0.01 when `None`), ignored otherwise.
///
/// ```
/// use wgpu_optim::init::{calculate_gain, Nonlinearity};
/// assert_eq!(calculate_gain(Nonlinearity::Tanh, None), 5.0 / 3.0);
/// assert_eq!(calculate_gain(Nonlinearity::LeakyRelu, Some(0.0)), 2f64.sqrt());
/// ```
pub fn calculate_gain(nonlinearity: Nonlinearity, param: Option<f64>) -> f64 {
    match nonlinearity {
        Nonlinearity::Linear | Nonlinearity::Sigmoid => 1.0,
        Nonlinearity::Tanh => 5.0 / 3.0,
        Nonlinearity::Relu => 2f64.sqrt(),
        Nonlinearity::LeakyRelu => {
            let slope = param.unwrap_or(0.01);
            (2.0 / (1.0 + slope * slope)).sqrt()
        }
        Nonlinearity::Selu => 0.75,
    }
}

/// torch's `_calculate_fan_in_and_fan_out`: for a shape `[out, in, k...]`, fan in is
/// `in × Πk` and fan out `out × Πk`. Fewer than 2 dimensions is an error, as in torch.
///
/// Errors: [`Error::InvalidShape`] for fewer than 2 dimensions or a fan that overflows `usize`.
///
/// ```
/// use wgpu_optim::init::fan_in_and_fan_out;
/// assert_eq!(fan_in_and_fan_out("w", &[256, 784])?, (784, 256));
/// assert_eq!(fan_in_and_fan_out("conv", &[16, 3, 5, 5])?, (75, 400));
/// assert!(fan_in_and_fan_out("b", &[256]).is_err());
/// assert!(fan_in_and_fan_out("w", &[2, usize::MAX, 2]).is_err());
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn fan_in_and_fan_out(name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    let bad = |reason| Error::InvalidShape {
        name: name.to_string(),
        shape: shape.to_vec(),
        reason,
    };
    if shape.len() < 2 {
        return Err(bad("fan in and fan out need at least 2 dimensions"));
    }
    let fans = shape[2..]
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|receptive| {
            Some((
                shape[1].checked_mul(receptive)?,
                shape[0].checked_mul(receptive)?,
            ))
        });
    fans.ok_or_else(|| bad("fan in or fan out overflows"))
}

/// Options of [`kaiming_uniform_with`] and [`kaiming_normal_with`], with torch's defaults
/// (`a = 0`, fan in, leaky ReLU).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Kaiming {
    /// The negative slope of the leaky ReLU after this layer.
    pub a: f64,
    /// Which fan to scale by.
    pub mode: FanMode,
    /// The nonlinearity after this layer.
    pub nonlinearity: Nonlinearity,
}

impl Kaiming {
    fn std(&self, name: &str, shape: &[usize]) -> Result<f64> {
        let (fan_in, fan_out) = fan_in_and_fan_out(name, shape)?;
        let fan = match self.mode {
            FanMode::FanIn => fan_in,
            FanMode::FanOut => fan_out,
        };
        Ok(calculate_gain(self.nonlinearity, Some(self.a)) / (fan as f64).sqrt())
    }
}

/// `torch.nn.init.uniform_(t, a, b)`: U[a, b).
pub fn uniform(params: &mut Params, name: &str, a: f32, b: f32, seed: u64) -> Result<()> {
    check(
        "b",
        b as f64,
        b >= a && (b - a).is_finite(),
        "must be >= a, both finite",
    )?;
    fill(params, name, 1, [a, b, 0.0, 0.0, 0.0, 0.0], seed)
}

/// `torch.nn.init.normal_(t, mean, std)`.
pub fn normal(params: &mut Params, name: &str, mean: f32, std: f32, seed: u64) -> Result<()> {
    check(
        "std",
        std as f64,
        std >= 0.0 && std.is_finite(),
        "must be >= 0 and finite",
    )?;
    check("mean", mean as f64, mean.is_finite(), "must be finite")?;
    fill(params, name, 2, [mean, std, 0.0, 0.0, 0.0, 0.0], seed)
}

/// `torch.nn.init.trunc_normal_(t, mean, std, a, b)`: a normal truncated to [a, b], drawn as
/// torch draws it (a uniform between the CDF values of the bounds, through the inverse error
/// function).
///
/// Errors: [`Error::InvalidHyperparameter`] for a `std` not finite and > 0, a `mean` not finite
/// (as [`normal`]) or a `b` not finite and > `a`, before anything is written.
pub fn trunc_normal(
    params: &mut Params,
    name: &str,
    mean: f32,
    std: f32,
    a: f32,
    b: f32,
    seed: u64,
) -> Result<()> {
    check(
        "std",
        std as f64,
        std > 0.0 && std.is_finite(),
        "must be > 0 and finite",
    )?;
    check("mean", mean as f64, mean.is_finite(), "must be finite")?;
    check("b", b as f64, b > a, "must be > a")?;
    let cdf = |x: f32| 0.5 * (1.0 + erf((x as f64 - mean as f64) / (std as f64 * 2f64.sqrt())));
    let (lo, hi) = (2.0 * cdf(a) - 1.0, 2.0 * cdf(b) - 1.0);
    fill(
        params,
        name,
        3,
        [a, b, mean, std, lo as f32, hi as f32],
        seed,
    )
}

/// `torch.nn.init.constant_(t, val)`.
pub fn constant(params: &mut Params, name: &str, value: f32) -> Result<()> {
    fill(params, name, 0, [value, 0.0, 0.0, 0.0, 0.0, 0.0], 0)
}

/// `torch.nn.init.zeros_(t)`.
pub fn zeros(params: &mut Params, name: &str) -> Result<()> {
    constant(params, name, 0.0)
}

/// `torch.nn.init.ones_(t)`.
pub fn ones(params: &mut Params, name: &str) -> Result<()> {
    constant(params, name, 1.0)
}

/// `torch.nn.init.xavier_uniform_(t, gain)`: U[-a, a] with `a = gain × √(6 / (fan_in +
/// fan_out))`.
pub fn xavier_uniform(params: &mut Params, name: &str, gain: f64, seed: u64) -> Result<()> {
    let (fan_in, fan_out) = fan_in_and_fan_out(name, params.shape(name)?)?;
    let a = (gain * (6.0 / (fan_in + fan_out) as f64).sqrt()) as f32;
    uniform(params, name, -a, a, seed)
}

/// `torch.nn.init.xavier_normal_(t, gain)`: N(0, std²) with `std = gain × √(2 / (fan_in +
/// fan_out))`.
pub fn xavier_normal(params: &mut Params, name: &str, gain: f64, seed: u64) -> Result<()> {
    let (fan_in, fan_out) = fan_in_and_fan_out(name, params.shape(name)?)?;
    let std = gain * (2.0 / (fan_in + fan_out) as f64).sqrt();
    normal(params, name, 0.0, std as f32, seed)
}

/// `torch.nn.init.kaiming_uniform_(t)` with torch's defaults (`a = 0`, fan in, leaky ReLU):
/// U[-b, b] with `b = √2 × √(3 / fan_in)`. What `nn.Linear` and `nn.Conv*` use (with `a = √5`)
/// is [`kaiming_uniform_with`].
pub fn kaiming_uniform(params: &mut Params, name: &str, seed: u64) -> Result<()> {
    kaiming_uniform_with(params, name, Kaiming::default(), seed)
}

/// `torch.nn.init.kaiming_uniform_(t, a, mode, nonlinearity)`: U[-b, b] with
/// `b = √3 × gain / √fan`.
pub fn kaiming_uniform_with(
    params: &mut Params,
    name: &str,
    options: Kaiming,
    seed: u64,
) -> Result<()> {
    let bound = (3f64.sqrt() * options.std(name, params.shape(name)?)?) as f32;
    uniform(params, name, -bound, bound, seed)
}

/// `torch.nn.init.kaiming_normal_(t)` with torch's defaults: N(0, std²), `std = √2 / √fan_in`.
pub fn kaiming_normal(params: &mut Params, name: &str, seed: u64) -> Result<()> {
    kaiming_normal_with(params, name, Kaiming::default(), seed)
}

/// `torch.nn.init.kaiming_normal_(t, a, mode, nonlinearity)`: N(0, std²), `std = gain / √fan`.
pub fn kaiming_normal_with(
    params: &mut Params,
    name: &str,
    options: Kaiming,
    seed: u64,
) -> Result<()> {
    let std = options.std(name, params.shape(name)?)? as f32;
    normal(params, name, 0.0, std, seed)
}

/// The error function in f64: its Taylor series for |x| < 2 (to f64 rounding), Numerical
/// Recipes' `erfc` fit (error below 1.2e-7) beyond, where erf is within 5e-3 of ±1.
fn erf(x: f64) -> f64 {
    if x.abs() < 2.0 {
        // Taylor series: erf x = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0f64;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        return sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        1.0 - r
    } else {
        r - 1.0
    }
}

/// Run the init kernel over every piece of `name`'s parameter, one submit.
fn fill(params: &mut Params, name: &str, kind: u32, v: [f32; 6], seed: u64) -> Result<()> {
    let slot = params.layout.slot(name)?;
    if slot.len > u32::MAX as usize {
        return Err(Error::InvalidShape {
            name: name.to_string(),
            shape: slot.shape.clone(),
            reason: "initialisation on the GPU takes at most 2^32 - 1 elements per tensor",
        });
    }
    let gpu = params.gpu.clone();
    gpu.scoped(|| {
        let (bgl, pl) = kernel::layout(&gpu, &[Some(Bind::Uniform), Some(Bind::ReadWrite)]);
        let mut keep = Vec::new();
        let mut enc = gpu.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            let mut first = 0usize;
            for p in &slot.pieces {
                let dtype = params.layout.chunk_dtypes[p.chunk];
                let pipeline = gpu.pipeline(
                    PipelineKey {
                        shader: "init",
                        entry: "main",
                        variant: dtype.code(),
                        constants: vec![],
                    },
                    || source(dtype),
                    &pl,
                    false,
                );
                let settings = InitSettings {
                    kind,
                    seed_lo: seed as u32,
                    seed_hi: (seed >> 32) as u32,
                    first: first as u32,
                    count: p.len as u32,
                    at: (p.offset / 4) as u32,
                    a: v[0],
                    b: v[1],
                    mean: v[2],
                    sigma: v[3],
                    lo: v[4],
                    hi: v[5],
                };
                let u = arena::uniform_with(&gpu, "wgpu-optim init", bytemuck::bytes_of(&settings));
                let bg = kernel::bind(
                    &gpu,
                    &bgl,
                    &[
                        (0, u.as_entire_buffer_binding()),
                        (
                            1,
                            arena::chunk_binding(
                                &params.layout,
                                &params.param_bufs,
                                p.chunk,
                                params.borrowed,
                            ),
                        ),
                    ],
                );
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bg, &[]);
                kernel::dispatch(
                    &mut pass,
                    &gpu,
                    p.len.div_ceil(kernel::ELEMS_PER_WORKGROUP) as u32,
                );
                keep.push(u);
                first += p.len;
            }
        }
        gpu.queue().submit([enc.finish()]);
        Ok(())
    })
}

fn source(dtype: DType) -> String {
    shader::with_structs(
        &[
            InitSettings::wgsl(),
            shader::DTYPE.to_string(),
            shader::storage_binding(1, "out", dtype, true, false, 0),
        ],
        SHADER,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_kernel_parses_for_every_dtype() {
        for d in DType::ALL {
            let src = source(d);
            naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&src)));
        }
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (-3.0, -0.999_977_909_503_001_4),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
    }
}
