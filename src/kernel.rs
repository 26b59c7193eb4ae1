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

/// Kind of one binding of a kernel's bind group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
    /// `var<uniform>`
    Uniform,
}

/// Bind group layout and pipeline layout for bindings `0..kinds.len()` in order (a `None`
/// leaves that binding number out).
pub(crate) fn layout(
    gpu: &Gpu,
    kinds: &[Option<Bind>],
) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kinds
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.map(|k| (i, k)))
        .map(|(i, k)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match k {
                    Bind::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Bind::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    Bind::Uniform => wgpu::BufferBindingType::Uniform,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let bgl = gpu
        .device()
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("wgpu-optim"),
            entries: &entries,
        });
    let pl = gpu
        .device()
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("wgpu-optim"),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
    (bgl, pl)
}

/// Layout of an update kernel: scalars, ctrl, group table (read-only storage), param
/// (read-write), grad (read-only), then `states` read-write state buffers, the master copy
/// (read-write, when `master`), the step's random key (uniform), then the per-tensor sums'
/// table and sums (when `tensor_sums`) or the 8-bit block table (read-only, when
/// `blockwise`).
pub(crate) fn update_layout(
    gpu: &Gpu,
    states: usize,
    master: bool,
    tensor_sums: bool,
    blockwise: bool,
) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
    layout(gpu, &update_kinds(states, master, tensor_sums, blockwise))
}

/// How many storage buffers [`update_layout`]'s layout binds (the device's
/// `max_storage_buffers_per_shader_stage` must allow them).
pub(crate) fn update_storage_buffers(
    states: usize,
    master: bool,
    tensor_sums: bool,
    blockwise: bool,
) -> usize {
    update_kinds(states, master, tensor_sums, blockwise)
        .iter()
        .filter(|k| matches!(k, Some(Bind::Read | Bind::ReadWrite)))
        .count()
}

/// The bindings of the update kernel, in binding order.
fn update_kinds(
    states: usize,
    master: bool,
    tensor_sums: bool,
    blockwise: bool,
) -> Vec<Option<Bind>> {
    let mut kinds = vec![
        Some(Bind::Read),
        Some(Bind::Read),
        Some(Bind::Read),
        Some(Bind::ReadWrite),
        Some(Bind::Read),
    ];
    kinds.extend((0..states).map(|_| Some(Bind::ReadWrite)));
    if master {
        kinds.push(Some(Bind::ReadWrite));
    }
    kinds.push(Some(Bind::Uniform));
    if tensor_sums {
        kinds.extend([Some(Bind::Read), Some(Bind::ReadWrite)]);
    }
    if blockwise {
        kinds.push(Some(Bind::Read));
    }
    kinds
}

/// Bind group with `(binding number, buffer range)` entries.
pub(crate) fn bind(
    gpu: &Gpu,
    layout: &wgpu::BindGroupLayout,
    entries: &[(u32, wgpu::BufferBinding<'_>)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = entries
        .iter()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: *i,
            resource: wgpu::BindingResource::Buffer(b.clone()),
        })
        .collect();
    gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("wgpu-optim"),
        layout,
        entries: &entries,
    })
}

/// Dispatch `groups` workgroups as a 1-D or 2-D grid.
pub(crate) fn dispatch(pass: &mut wgpu::ComputePass<'_>, gpu: &Gpu, groups: u32) {
    let (x, y) = grid(groups, gpu.dispatch_dim());
    pass.dispatch_workgroups(x, y, 1);
}

/// Record one dispatch per chunk: `(bind group, elements in the chunk)`, each with its own
/// pipeline (specialised for the chunk's dtype; set only when it changes).
pub(crate) fn record(
    pass: &mut wgpu::ComputePass<'_>,
    gpu: &Gpu,
    pipelines: &[wgpu::ComputePipeline],
    chunks: &[(wgpu::BindGroup, usize)],
) {
    let mut current: Option<&wgpu::ComputePipeline> = None;
    for (pipeline, (bg, elems)) in pipelines.iter().zip(chunks) {
        if current != Some(pipeline) {
            pass.set_pipeline(pipeline);
            current = Some(pipeline);
        }
        pass.set_bind_group(0, bg, &[]);
        dispatch(pass, gpu, elems.div_ceil(ELEMS_PER_WORKGROUP) as u32);
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
