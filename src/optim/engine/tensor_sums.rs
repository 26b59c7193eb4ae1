//! Per-tensor sums on the GPU, for optimizers whose update needs a reduction over each tensor
//! between two passes (LAMB's trust ratio): [`OptimizerConfig::TENSOR_SUMS`] sums per tensor,
//! in a fixed order (deterministic, no float atomics), in the step's own submit.
//!
//! 1. The update kernel's first pass (`main_sums`) has each workgroup add up its granules (64
//!    elements, always inside one tensor): each thread its four lanes (`x + y + z + w`, lanes
//!    past the tensor's end left out), then one thread per granule its 16 threads in order,
//!    written to `sums[granule * K + k]`.
//! 2. `shaders/tensor_sums.wgsl`, one workgroup per tensor: thread `j` adds the tensor's
//!    granules `j, j + 256, ...` in order, then a tree over the 256 threads; the tensor's sums
//!    go after the granules' (`sums[granules * K + t * K + k]`).
//! 3. The second pass (`main`, the optimizer's `MODE` 2) reads them with `tensor_sum(i, k)`.
//!
//! A tensor's granule `g` holds its elements `64 g .. 64 g + 63` wherever its pieces lie (pieces
//! split at multiples of 64 elements), so the order, and [`crate::reference::tensor_sum`] that
//! mirrors it, depends only on the tensor's length.

use crate::arena::{self, Layout};
use crate::gpu::{Gpu, PipelineKey};
use crate::kernel::{self, Bind};

/// Elements per granule.
pub(crate) const GRANULE: usize = 64;

const SHADER: &str = include_str!("../../../shaders/tensor_sums.wgsl");

/// The buffers and the reduce pass of [`OptimizerConfig::TENSOR_SUMS`] sums.
///
/// [`OptimizerConfig::TENSOR_SUMS`]: crate::OptimizerConfig::TENSOR_SUMS
pub(crate) struct TensorSums {
    /// Per chunk: `[first global granule, offset of the tensors' sums in sums]`, then per local
    /// granule `[tensor, elements of the tensor in it]`.
    pub tables: Vec<wgpu::Buffer>,
    /// Granule sums, then tensor sums.
    pub sums: wgpu::Buffer,
    pipeline: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
    tensors: u32,
}

impl TensorSums {
    /// f32 values of the granule and tensor sums: an extension's values start there.
    pub fn floats(layout: &Layout, k: u32) -> usize {
        let total: usize = layout.chunk_lens.iter().map(|&n| n / GRANULE).sum();
        (total + layout.slots.len()) * k as usize
    }

    /// The sums of `layout` with `k` sums per tensor; `extension`: per chunk, words appended to
    /// its table, and f32 values appended to the sums (a factored second moment's).
    pub fn new(
        gpu: &Gpu,
        layout: &Layout,
        k: u32,
        extension: Option<(&[Vec<u32>], usize)>,
    ) -> TensorSums {
        let granules: Vec<usize> = layout.chunk_lens.iter().map(|&n| n / GRANULE).collect();
        let total: usize = granules.iter().sum();
        let tensor_base = (total as u32) * k;
        // Per chunk, the granule table; per tensor, its granules in order (segments of
        // consecutive global granules).
        let mut firsts = Vec::with_capacity(granules.len());
        let mut acc = 0u32;
        for &g in &granules {
            firsts.push(acc);
            acc += g as u32;
        }
        let mut tables: Vec<Vec<u32>> = granules
            .iter()
            .zip(&firsts)
            .map(|(&g, &first)| {
                let mut t = vec![0u32; 2 + 2 * g];
                t[0] = first;
                t[1] = tensor_base;
                t
            })
            .collect();
        let mut segs_index = Vec::with_capacity(layout.slots.len() + 1);
        let mut segs: Vec<u32> = Vec::new();
        for (t, slot) in layout.slots.iter().enumerate() {
            segs_index.push(segs.len() as u32);
            let mut done = 0usize;
            for p in &slot.pieces {
                let g0 = p.offset / GRANULE;
                let n = p.len.div_ceil(GRANULE);
                for g in 0..n {
                    let valid = (p.len - g * GRANULE).min(GRANULE);
                    tables[p.chunk][2 + 2 * (g0 + g)] = t as u32;
                    tables[p.chunk][3 + 2 * (g0 + g)] = valid as u32;
                }
                segs.extend([firsts[p.chunk] + g0 as u32, n as u32]);
                done += p.len;
            }
            debug_assert_eq!(done, slot.len);
        }
        segs_index.push(segs.len() as u32);
        let mut extra = 0;
        if let Some((tails, floats)) = extension {
            for (t, tail) in tables.iter_mut().zip(tails) {
                t.extend(tail);
            }
            extra = floats;
        }
        let n = layout.slots.len();
        // `[where tensor t's (first granule, count) pairs start, for t = 0..=n]`, then the pairs
        // (offsets from the start of the table).
        let mut seg_table: Vec<u32> = segs_index.iter().map(|&i| i + n as u32 + 1).collect();
        seg_table.extend(segs);
        let tables = tables
            .iter()
            .map(|t| {
                arena::storage_with(gpu, "wgpu-optim tensor-sum table", bytemuck::cast_slice(t))
            })
            .collect();
        let sums = arena::storage(
            gpu,
            "wgpu-optim tensor sums",
            (((total + n) * k as usize + extra).max(1) * 4) as u64,
        );
        let segs_buf = arena::storage_with(
            gpu,
            "wgpu-optim tensor segments",
            bytemuck::cast_slice(&seg_table),
        );
        let (bgl, pl) = kernel::layout(gpu, &[Some(Bind::ReadWrite), Some(Bind::Read)]);
        let pipeline = gpu.pipeline(
            PipelineKey {
                shader: "tensor_sums",
                entry: "main",
                variant: 0,
                constants: vec![("K", k), ("TENSOR_BASE", tensor_base)],
            },
            || SHADER.to_string(),
            &pl,
            false,
        );
        let bind = kernel::bind(
            gpu,
            &bgl,
            &[
                (0, sums.as_entire_buffer_binding()),
                (1, segs_buf.as_entire_buffer_binding()),
            ],
        );
        TensorSums {
            tables,
            sums,
            pipeline,
            bind,
            tensors: n as u32,
        }
    }

    /// Record the reduce pass: every tensor's sums from its granules'.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, gpu: &Gpu) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind, &[]);
        kernel::dispatch(pass, gpu, self.tensors);
    }
}

#[cfg(feature = "bench")]
impl<C: crate::OptimizerConfig> super::FusedOptimizer<C> {
    /// For benchmarks (the `bench` feature): submit what a step of a two-pass optimizer
    /// ([`crate::OptimizerConfig::TENSOR_SUMS`]: LAMB, Adafactor) runs before its last pass:
    /// Adafactor's row and column passes, the first pass over the tensors and the reduction of
    /// the per-tensor sums between the passes, so that the last pass's share of a step can be
    /// timed (`examples/throughput.rs`). They move the state as the first half of a step would
    /// (with the last step's scalars). Returns false, submitting nothing, for a one-pass
    /// optimizer or before the first step.
    ///
    /// ```
    /// use wgpu_optim::{Gpu, Lamb, LambConfig, Optimizer, Params};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::zeros(&gpu, &[("w", 1000)])?;
    /// let mut opt = Lamb::new(&params, LambConfig::default())?;
    /// assert!(!opt.submit_passes_before_update());
    /// opt.step(&mut params)?;
    /// assert!(opt.submit_passes_before_update());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn submit_passes_before_update(&self) -> bool {
        let Some(ts) = &self.tensor_sums else {
            return false;
        };
        self.submit_for_bench("passes before the update", |pass, gpu| {
            if let Some(f) = &self.factored {
                f.record(pass, gpu, &self.pipelines_factored, &self.chunks);
            }
            crate::kernel::record(pass, gpu, &self.pipelines_sums, &self.chunks);
            ts.record(pass, gpu);
        })
    }

    /// Submit one compute pass that selects the scalars and runs `record` (nothing before the
    /// first step, when the pipelines are not built yet). Whether it submitted.
    pub(super) fn submit_for_bench(
        &self,
        label: &str,
        record: impl FnOnce(&mut wgpu::ComputePass<'_>, &crate::gpu::Gpu),
    ) -> bool {
        if self.pipelines.is_empty() || self.submitted == 0 {
            return false;
        }
        let gpu = &self.gpu;
        let mut enc = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            self.scalars.record_select(&mut pass);
            record(&mut pass, gpu);
        }
        gpu.queue().submit([enc.finish()]);
        true
    }
}
