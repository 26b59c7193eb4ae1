//! Dynamic loss scaling (`torch.amp.GradScaler`) with the scale in a GPU buffer: the norm pass
//! unscales, detects overflow and updates the scale on the GPU (see [`crate::norm`]).

use crate::error::{check, Result};
use crate::gpu::Gpu;

/// Options of a [`GradScaler`], with `torch.amp.GradScaler`'s names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerConfig {
    /// Starting scale (2^16).
    pub init_scale: f32,
    /// Multiplier after `growth_interval` steps without overflow (2).
    pub growth_factor: f32,
    /// Multiplier after an overflow (0.5).
    pub backoff_factor: f32,
    /// Clean steps before growing (2000).
    pub growth_interval: u32,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// Dynamic loss scaling with the scale in a GPU buffer.
///
/// Attach it with [`crate::Optimizer::set_grad_scaler`]: each step then divides gradients by
/// the scale as the kernel reads them, skips the step (params, state and step count untouched)
/// when a gradient is inf/NaN, and updates the scale on the GPU, as
/// `scaler.unscale_(opt); scaler.step(opt); scaler.update()` do in PyTorch. Your loss kernel
/// multiplies the loss by the f32 at the start of [`GradScaler::binding`].
///
/// ```no_run
/// use wgpu_optim::{Adam, AdamConfig, GradScaler, Gpu, Optimizer, Params, ScalerConfig};
/// let gpu = Gpu::new()?;
/// let mut params = Params::new(&gpu, &[("w", &[1.0f32; 8][..])])?;
/// let mut opt = Adam::new(&params, AdamConfig::default())?;
/// let scaler = GradScaler::new(&gpu, ScalerConfig::default())?;
/// opt.set_grad_scaler(Some(&scaler))?;
/// params.write_grad("w", &[65536.0; 8])?; // gradients of the scaled loss
/// opt.step(&mut params)?;
/// assert_eq!(scaler.scale()?, 65536.0);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct GradScaler {
    gpu: Gpu,
    buffer: wgpu::Buffer,
    config: ScalerConfig,
}

crate::shader_struct! {
    /// The scaler's buffer as the norm pass's `finalize` reads and updates it.
    pub(crate) struct ScalerState {
        /// The current loss scale.
        pub scale: f32,
        /// Clean steps since the last growth or backoff.
        pub growth_tracker: u32,
        pub growth_factor: f32,
        pub backoff_factor: f32,
        pub growth_interval: u32,
        /// 1 when the last step found an inf/NaN gradient.
        pub found_inf: u32,
        pub pad0: u32,
        pub pad1: u32,
    }
}

impl GradScaler {
    /// A scaler on `gpu` (validated: growth_factor > 1, backoff_factor in (0, 1),
    /// growth_interval > 0, init_scale > 0 and finite).
    pub fn new(gpu: &Gpu, config: ScalerConfig) -> Result<GradScaler> {
        let c = &config;
        check(
            "init_scale",
            c.init_scale as f64,
            c.init_scale > 0.0,
            "must be > 0",
        )?;
        check(
            "growth_factor",
            c.growth_factor as f64,
            c.growth_factor > 1.0,
            "must be > 1",
        )?;
        let b = c.backoff_factor;
        check(
            "backoff_factor",
            b as f64,
            b > 0.0 && b < 1.0,
            "must be in (0, 1)",
        )?;
        check(
            "growth_interval",
            c.growth_interval as f64,
            c.growth_interval > 0,
            "must be > 0",
        )?;
        let buffer = gpu.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim grad scaler"),
            size: std::mem::size_of::<ScalerState>() as u64,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let scaler = GradScaler {
            gpu: gpu.clone(),
            buffer,
            config,
        };
        scaler.set_state(scaler.config.init_scale, 0)?;
        Ok(scaler)
    }

    /// The options.
    pub fn config(&self) -> &ScalerConfig {
        &self.config
    }

    /// Overwrite the scale and growth tracker (e.g. when resuming). Scale must be finite > 0.
    ///
    /// Any tracker is stored as given, as torch's `GradScaler` stores it: the scale grows when
    /// a clean step brings the tracker to `growth_interval`, so a tracker already at or past it
    /// grows nothing until an overflow resets it to 0. The tracker counts up to `u32::MAX` and
    /// stays there (the GPU update, the distributed one and [`crate::reference::ScalerState`]
    /// alike).
    ///
    /// Errors: [`crate::Error::InvalidHyperparameter`] for a scale that is not finite and > 0;
    /// nothing is written then.
    pub fn set_state(&self, scale: f32, growth_tracker: u32) -> Result<()> {
        check("scale", scale as f64, scale > 0.0, "must be > 0")?;
        let data = ScalerState {
            scale,
            growth_tracker,
            growth_factor: self.config.growth_factor,
            backoff_factor: self.config.backoff_factor,
            growth_interval: self.config.growth_interval,
            ..Default::default()
        };
        self.gpu
            .queue()
            .write_buffer(&self.buffer, 0, bytemuck::bytes_of(&data));
        Ok(())
    }

    async fn read_async(&self) -> Result<ScalerState> {
        self.gpu.read_struct_async(&self.buffer).await
    }

    /// The current scale. Blocks (a small read-back; [`GradScaler::scale_async`] without the
    /// wait).
    pub fn scale(&self) -> Result<f32> {
        crate::gpu::block_on(
            "GradScaler::scale",
            "GradScaler::scale_async",
            self.scale_async(),
        )
    }

    /// Async form of [`GradScaler::scale`], on every target.
    pub async fn scale_async(&self) -> Result<f32> {
        Ok(self.read_async().await?.scale)
    }

    /// Clean steps since the last growth or backoff. Blocks.
    pub fn growth_tracker(&self) -> Result<u32> {
        crate::gpu::block_on(
            "GradScaler::growth_tracker",
            "GradScaler::growth_tracker_async",
            self.growth_tracker_async(),
        )
    }

    /// Async form of [`GradScaler::growth_tracker`], on every target.
    pub async fn growth_tracker_async(&self) -> Result<u32> {
        Ok(self.read_async().await?.growth_tracker)
    }

    /// Whether the last step found an inf/NaN gradient. Blocks.
    pub fn found_inf(&self) -> Result<bool> {
        crate::gpu::block_on(
            "GradScaler::found_inf",
            "GradScaler::found_inf_async",
            self.found_inf_async(),
        )
    }

    /// Async form of [`GradScaler::found_inf`], on every target.
    pub async fn found_inf_async(&self) -> Result<bool> {
        Ok(self.read_async().await?.found_inf != 0)
    }

    /// The scaler's GPU buffer: the first f32 is the current scale (bind it as storage or
    /// uniform in your loss kernel).
    pub fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: 0,
            size: None,
        }
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub(crate) fn gpu(&self) -> &Gpu {
        &self.gpu
    }
}
