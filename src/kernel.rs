//! The one generic way to run an update kernel over the arena: bind group layout, bind groups
//! built once per chunk, and a 1-D or 2-D grid of 256-thread workgroups.

use crate::gpu::Gpu;

/// Threads per workgroup; each thread updates one vec4.
pub(crate) const WORKGROUP: u32 = 256;
/// Elements one workgroup covers.
pub(crate) const ELEMS_PER_WORKGROUP: usize = WORKGROUP as usize * 4;

/// Grid for `groups` workgroups: 1-D up to the device's per-dimension limit, 2-D beyond it.
/// The kernel computes `(wid.y * nwg.x + wid.x)` and ignores the surplus of the last row.
pub(crate) fn grid(groups: u32, max_dim: u32) -> (u32, u32) {
    if groups <= max_dim {
        (groups.max(1), 1)
    } else {
        let y = groups.div_ceil(max_dim);
        (groups.div_ceil(y), y)
    }
}

/// Bind group layout of an update kernel: scalars, ctrl, group table (read-only storage),
/// param (read-write), grad (read-only), then `states` read-write state buffers.
pub(crate) fn update_layout(
    gpu: &Gpu,
    states: usize,
) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let entry = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let mut entries = vec![
        entry(0, true),
        entry(1, true),
        entry(2, true),
        entry(3, false),
        entry(4, true),
    ];
    entries.extend((0..states as u32).map(|k| entry(5 + k, false)));
    let bgl = gpu
        .device()
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("wgpu-optim update"),
            entries: &entries,
        });
    let pl = gpu
        .device()
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("wgpu-optim update"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
    (bgl, pl)
}

/// Bind group over `buffers`, bound whole, in binding order 0, 1, 2, ...
pub(crate) fn bind_all(
    gpu: &Gpu,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("wgpu-optim update"),
        layout,
        entries: &entries,
    })
}

/// Record one dispatch per chunk: `(bind group, elements in the chunk)`.
pub(crate) fn record(
    pass: &mut wgpu::ComputePass<'_>,
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    chunks: &[(wgpu::BindGroup, usize)],
) {
    let max_dim = gpu.dispatch_dim();
    pass.set_pipeline(pipeline);
    for (bg, elems) in chunks {
        let groups = elems.div_ceil(ELEMS_PER_WORKGROUP) as u32;
        let (x, y) = grid(groups, max_dim);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn grid_covers_without_exceeding_limits() {
        for n in [1u32, 255, 65535, 65536, 65537, 200_000, 4_000_000] {
            let (x, y) = grid(n, 65535);
            assert!(x <= 65535 && y <= 65535);
            assert!(x as u64 * y as u64 >= n as u64);
        }
    }
}
