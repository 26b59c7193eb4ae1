//! Whether the device fuses WGSL's `fma`, probed once with a tiny kernel.

use super::{block_on, Gpu};
use crate::error::{Error, Result};

impl Gpu {
    /// Whether WGSL's `fma` is fused (one rounding) on this device, probed once with a tiny
    /// kernel. ATen's CPU and CUDA kernels fuse the multiply-adds of `add(alpha=)`, `addcmul`
    /// and `lerp`; so do our shaders, through `fma`, which a driver may still split (lavapipe
    /// does). [`crate::reference::set_fused_multiply_add`] makes the CPU reference round the
    /// same way, for bit-for-bit comparisons. Blocks the first time (in a browser, use
    /// [`Gpu::fused_multiply_add_async`]; until that has run this says `true`).
    pub fn fused_multiply_add(&self) -> bool {
        if let Some(&f) = self.inner.fma.get() {
            return f;
        }
        match block_on(
            "Gpu::fused_multiply_add",
            "Gpu::fused_multiply_add_async",
            self.probe_fma(),
        ) {
            Ok(f) => *self.inner.fma.get_or_init(|| f),
            // Not cached: the async form can still find out.
            Err(Error::WouldBlock { .. }) => true,
            Err(_) => *self.inner.fma.get_or_init(|| true),
        }
    }

    /// Async form of [`Gpu::fused_multiply_add`].
    pub async fn fused_multiply_add_async(&self) -> bool {
        if let Some(&f) = self.inner.fma.get() {
            return f;
        }
        let probed = self.probe_fma().await;
        *self.inner.fma.get_or_init(|| probed.unwrap_or(true))
    }

    async fn probe_fma(&self) -> Result<bool> {
        // fma(a, a, -c) with a = 1 + 2^-12, c = 1 + 2^-11: a*a = c + 2^-24, which an unfused
        // multiply rounds back to c (a tie to even), giving 0; a fused one gives 2^-24.
        let a = f32::from_bits(0x3F80_0800);
        let c = f32::from_bits(0x3F80_1000);
        let buf = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim fma probe"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue()
            .write_buffer(&buf, 0, bytemuck::cast_slice(&[a, -c, 0.0, 0.0]));
        let src = "@group(0) @binding(0) var<storage, read_write> v: array<f32>;\n\
                   @compute @workgroup_size(1) fn main() { v[2] = fma(v[0], v[0], v[1]); }";
        let module = self
            .device()
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("wgpu-optim fma probe"),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = self
            .device()
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("wgpu-optim fma probe"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        let bg = self.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: buf.as_entire_binding(),
            }],
        });
        let mut enc = self.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        self.queue().submit([enc.finish()]);
        Ok(self.read_pieces_async(&[(&buf, 8, 4)]).await?[0] != 0.0)
    }
}
