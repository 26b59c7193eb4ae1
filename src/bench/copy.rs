//! The bandwidth baseline: a plain vec4 copy, dispatched as the update kernels are.

use super::*;

const COPY_SHADER: &str = "\
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i < arrayLength(&dst)) {
        dst[i] = src[i];
    }
}
";

/// The bandwidth baseline: a WGSL kernel copying one buffer of `vec4<f32>` into another, 256
/// threads per workgroup, one vec4 per thread, a 2-D grid beyond the per-dimension workgroup
/// limit, exactly as the update kernels are dispatched. It moves
/// [`COPY_BYTES_PER_ELEMENT`] bytes per element.
///
/// The shader is compiled like any user shader, with wgpu's runtime bounds checks
/// ([`CopyKernel::new`]); [`CopyKernel::unchecked`] leaves them out as the update kernels do.
pub struct CopyKernel {
    gpu: Gpu,
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    elems: usize,
    _bufs: [wgpu::Buffer; 2],
}

impl std::fmt::Debug for CopyKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyKernel")
            .field("elems", &self.elems)
            .finish()
    }
}

impl CopyKernel {
    /// Two buffers of `elems` f32 (rounded up to a multiple of 1024) and the copy pipeline.
    pub fn new(gpu: &Gpu, elems: usize) -> Result<Self> {
        Self::build(gpu, elems, false)
    }

    /// Like [`CopyKernel::new`], compiled without wgpu's runtime bounds checks (the same
    /// treatment as the update kernels; the kernel only indexes below `arrayLength`).
    pub fn unchecked(gpu: &Gpu, elems: usize) -> Result<Self> {
        Self::build(gpu, elems, true)
    }

    fn build(gpu: &Gpu, elems: usize, trusted: bool) -> Result<Self> {
        let elems = elems.max(1).div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
        let bytes = (elems * 4) as u64;
        if bytes > gpu.max_binding_bytes() {
            return Err(Error::DeviceLimit(format!(
                "a copy of {elems} f32 ({bytes} bytes) exceeds one storage binding ({} bytes)",
                gpu.max_binding_bytes()
            )));
        }
        let (bgl, layout) = kernel::layout(gpu, &[Some(Bind::Read), Some(Bind::ReadWrite)]);
        let pipeline = gpu.pipeline(
            PipelineKey {
                shader: if trusted {
                    "bench copy (unchecked)"
                } else {
                    "bench copy"
                },
                entry: "main",
                variant: 0,
                constants: Vec::new(),
            },
            || COPY_SHADER.to_string(),
            &layout,
            trusted,
        );
        let make = |label| {
            gpu.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let bufs = [make("wgpu-optim bench src"), make("wgpu-optim bench dst")];
        gpu.queue()
            .write_buffer(&bufs[0], 0, bytemuck::cast_slice(&pattern(elems, 7)));
        let bind_group = kernel::bind(
            gpu,
            &bgl,
            &[
                (0, bufs[0].as_entire_buffer_binding()),
                (1, bufs[1].as_entire_buffer_binding()),
            ],
        );
        Ok(CopyKernel {
            gpu: gpu.clone(),
            pipeline,
            bind_group,
            elems,
            _bufs: bufs,
        })
    }

    /// Elements copied per run (a multiple of 1024).
    pub fn elems(&self) -> usize {
        self.elems
    }

    /// Bytes moved per run.
    pub fn bytes(&self) -> u64 {
        COPY_BYTES_PER_ELEMENT * self.elems as u64
    }

    /// Record the copy into a compute pass.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        kernel::dispatch(pass, &self.gpu, (self.elems / CHUNK_ALIGN) as u32);
    }

    /// Record one compute pass with the copy and submit it, like a step: does not wait.
    pub fn submit(&self) {
        let mut enc = self
            .gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim bench copy"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wgpu-optim bench copy"),
                timestamp_writes: None,
            });
            self.record(&mut pass);
        }
        self.gpu.queue().submit([enc.finish()]);
    }
}
