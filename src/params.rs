//! Named f32 tensors packed into a flat GPU arena (param and grad buffers of one layout).

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Every tensor starts on a multiple of this many elements (256 bytes), so it can be bound on
/// its own as a storage buffer range, and its padding keeps every vec4 inside the arena.
pub const TENSOR_ALIGN: usize = 64;
/// Every chunk is a whole number of these elements: one workgroup (256 threads) × one vec4.
pub const CHUNK_ALIGN: usize = 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One contiguous run of a tensor inside one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Chunk index.
    pub chunk: usize,
    /// Offset of the first element inside the chunk, in elements (a multiple of 64).
    pub offset: usize,
    /// Number of the tensor's elements in this piece.
    pub len: usize,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub len: usize,
    pub pieces: Vec<Piece>,
}

/// The arena's layout: where each tensor lives. Optimizer state reuses it element for element.
#[derive(Debug)]
pub(crate) struct Layout {
    pub slots: Vec<Slot>,
    pub index: HashMap<String, usize>,
    /// Length of each chunk in elements (a multiple of [`CHUNK_ALIGN`]).
    pub chunk_lens: Vec<usize>,
}

impl Layout {
    /// Pack `specs` in order; a chunk holds at most `cap` elements (a multiple of CHUNK_ALIGN).
    pub fn pack(specs: &[(&str, usize)], cap: usize) -> Result<Layout> {
        if specs.is_empty() {
            return Err(Error::Empty("no tensors given".into()));
        }
        let mut slots = Vec::with_capacity(specs.len());
        let mut index = HashMap::with_capacity(specs.len());
        let mut chunk_lens: Vec<usize> = vec![0];
        for &(name, len) in specs {
            if name.is_empty() {
                return Err(Error::Empty("a tensor name is empty".into()));
            }
            if len == 0 {
                return Err(Error::Empty(format!("tensor `{name}` has no elements")));
            }
            if index.insert(name.to_string(), slots.len()).is_some() {
                return Err(Error::DuplicateName(name.to_string()));
            }
            let padded = len.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
            let mut used = *chunk_lens.last().unwrap();
            // Start a fresh chunk when the tensor would fit in one but not in what is left.
            if used + padded > cap && padded <= cap && used > 0 {
                chunk_lens.push(0);
                used = 0;
            }
            let mut pieces = Vec::new();
            let mut done = 0;
            while done < padded {
                if used == cap {
                    chunk_lens.push(0);
                    used = 0;
                }
                let take = (padded - done).min(cap - used);
                pieces.push(Piece {
                    chunk: chunk_lens.len() - 1,
                    offset: used,
                    len: take.min(len.saturating_sub(done)),
                });
                used += take;
                done += take;
                *chunk_lens.last_mut().unwrap() = used;
            }
            pieces.retain(|p| p.len > 0);
            slots.push(Slot {
                name: name.to_string(),
                len,
                pieces,
            });
        }
        for c in &mut chunk_lens {
            *c = c.div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
        }
        Ok(Layout {
            slots,
            index,
            chunk_lens,
        })
    }

    pub fn slot(&self, name: &str) -> Result<&Slot> {
        self.index
            .get(name)
            .map(|&i| &self.slots[i])
            .ok_or_else(|| Error::UnknownTensor(name.to_string()))
    }
}

/// Named f32 tensors in GPU storage buffers: the parameters and their gradients, packed into a
/// flat arena of one or more chunks (one param and one grad buffer per chunk, same layout).
///
/// ```no_run
/// use wgpu_optim::{Gpu, Params};
/// let gpu = Gpu::new()?;
/// let mut params = Params::new(&gpu, &[("w", &[0.5f32; 6][..]), ("b", &[0.0f32; 2][..])])?;
/// params.write_grad("w", &[0.1; 6])?;
/// assert_eq!(params.read("b")?, vec![0.0, 0.0]);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub struct Params {
    pub(crate) gpu: Gpu,
    pub(crate) id: u64,
    pub(crate) layout: Arc<Layout>,
    pub(crate) param_bufs: Vec<wgpu::Buffer>,
    pub(crate) grad_bufs: Vec<wgpu::Buffer>,
    /// Whether each chunk is a user's own buffer (bound by range, one tensor per chunk).
    pub(crate) borrowed: bool,
    pub(crate) clip: crate::clip::ClipSlot,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("tensors", &self.layout.slots.len())
            .field("chunks", &self.layout.chunk_lens)
            .finish()
    }
}

impl Params {
    /// Upload named tensors; gradients start at zero.
    pub fn new(gpu: &Gpu, tensors: &[(&str, &[f32])]) -> Result<Params> {
        Self::with_max_chunk_bytes(gpu, tensors, u64::MAX)
    }

    /// Like [`Params::new`], with chunks no larger than `max_chunk_bytes` (rounded down to
    /// 4 KiB; the device's storage-binding limit still applies). Mostly for tests that want chunk
    /// boundaries without gigabytes of data.
    pub fn with_max_chunk_bytes(
        gpu: &Gpu,
        tensors: &[(&str, &[f32])],
        max_chunk_bytes: u64,
    ) -> Result<Params> {
        let specs: Vec<(&str, usize)> = tensors.iter().map(|(n, d)| (*n, d.len())).collect();
        let params = Self::zeros_with_max_chunk_bytes(gpu, &specs, max_chunk_bytes)?;
        for (name, data) in tensors {
            params.write(name, data)?;
        }
        Ok(params)
    }

    /// Zero-filled tensors of the given lengths (no host data needed; e.g. for benchmarks).
    pub fn zeros(gpu: &Gpu, tensors: &[(&str, usize)]) -> Result<Params> {
        Self::zeros_with_max_chunk_bytes(gpu, tensors, u64::MAX)
    }

    /// [`Params::zeros`] with a chunk size cap, as in [`Params::with_max_chunk_bytes`].
    pub fn zeros_with_max_chunk_bytes(
        gpu: &Gpu,
        tensors: &[(&str, usize)],
        max_chunk_bytes: u64,
    ) -> Result<Params> {
        let cap_bytes = gpu.max_binding_bytes().min(max_chunk_bytes);
        let cap = (cap_bytes / 4) as usize / CHUNK_ALIGN * CHUNK_ALIGN;
        if cap == 0 {
            return Err(Error::DeviceLimit(format!(
                "a chunk must hold at least {CHUNK_ALIGN} elements; got a cap of {cap_bytes} bytes"
            )));
        }
        let layout = Layout::pack(tensors, cap)?;
        let make = |label| -> Vec<wgpu::Buffer> {
            layout
                .chunk_lens
                .iter()
                .map(|&n| arena_buffer(gpu, label, n))
                .collect()
        };
        let param_bufs = make("wgpu-optim params");
        let grad_bufs = make("wgpu-optim grads");
        Ok(Params {
            gpu: gpu.clone(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            layout: Arc::new(layout),
            param_bufs,
            grad_bufs,
            borrowed: false,
            clip: Default::default(),
        })
    }

    /// Step tensors in buffers you already own, in place, without copying them into an arena.
    ///
    /// Each entry is `(name, param buffer, grad buffer, elements)`. Both buffers need
    /// `STORAGE | COPY_SRC | COPY_DST` usage and room for the element count rounded up to a
    /// multiple of 4 (the kernels move vec4s; the at most 3 elements past the tensor are updated
    /// like padding, so keep them zero or unused). Each tensor becomes its own chunk: a step is
    /// one dispatch per tensor, all recorded in one compute pass and one submit.
    ///
    /// Buffers from another device are detected (wgpu validation, before any step) and rejected.
    pub fn from_buffers(
        gpu: &Gpu,
        tensors: &[(&str, &wgpu::Buffer, &wgpu::Buffer, usize)],
    ) -> Result<Params> {
        let specs: Vec<(&str, usize)> = tensors.iter().map(|t| (t.0, t.3)).collect();
        // Validate names and lengths with the arena rules (empty, duplicate, zero length).
        Layout::pack(&specs, usize::MAX / 2)?;
        let need = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let mut slots = Vec::with_capacity(tensors.len());
        let mut index = HashMap::with_capacity(tensors.len());
        let mut chunk_lens = Vec::with_capacity(tensors.len());
        for (i, &(name, p, g, len)) in tensors.iter().enumerate() {
            let bytes = (len.div_ceil(4) * 16) as u64;
            for (what, b) in [("param", p), ("grad", g)] {
                if !b.usage().contains(need) {
                    return Err(Error::BufferUsage(format!(
                        "{what} buffer of `{name}` has usage {:?}, needs STORAGE | COPY_SRC | COPY_DST",
                        b.usage()
                    )));
                }
                if b.size() < bytes {
                    return Err(Error::BufferSize(format!(
                        "{what} buffer of `{name}` has {} bytes, needs {bytes} for {len} elements",
                        b.size()
                    )));
                }
            }
            if bytes > gpu.max_binding_bytes() {
                return Err(Error::DeviceLimit(format!(
                    "`{name}` ({bytes} bytes) exceeds the device's storage binding limit"
                )));
            }
            index.insert(name.to_string(), i);
            slots.push(Slot {
                name: name.to_string(),
                len,
                pieces: vec![Piece {
                    chunk: i,
                    offset: 0,
                    len,
                }],
            });
            chunk_lens.push(len.div_ceil(4) * 4);
        }
        check_same_device(gpu, tensors.iter().flat_map(|t| [t.1, t.2]))?;
        Ok(Params {
            gpu: gpu.clone(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            layout: Arc::new(Layout {
                slots,
                index,
                chunk_lens,
            }),
            param_bufs: tensors.iter().map(|t| t.1.clone()).collect(),
            grad_bufs: tensors.iter().map(|t| t.2.clone()).collect(),
            borrowed: true,
            clip: Default::default(),
        })
    }

    /// The device these tensors live on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Tensor names, in the order given at construction.
    pub fn names(&self) -> Vec<&str> {
        self.layout.slots.iter().map(|s| s.name.as_str()).collect()
    }

    /// Number of elements of a tensor.
    pub fn len(&self, name: &str) -> Result<usize> {
        Ok(self.layout.slot(name)?.len)
    }

    /// Total number of elements over all tensors (without padding).
    pub fn total_len(&self) -> usize {
        self.layout.slots.iter().map(|s| s.len).sum()
    }

    /// Whether there are no tensors (never true: construction rejects an empty list).
    pub fn is_empty(&self) -> bool {
        self.layout.slots.is_empty()
    }

    /// Where a tensor lives: one piece per chunk it touches (one piece unless it was split).
    pub fn pieces(&self, name: &str) -> Result<&[Piece]> {
        Ok(&self.layout.slot(name)?.pieces)
    }

    /// Number of arena chunks.
    pub fn chunk_count(&self) -> usize {
        self.layout.chunk_lens.len()
    }

    /// The parameter buffer of a chunk (for kernels that bind the whole arena).
    pub fn param_buffer(&self, chunk: usize) -> Option<&wgpu::Buffer> {
        self.param_bufs.get(chunk)
    }

    /// The gradient buffer of a chunk.
    pub fn grad_buffer(&self, chunk: usize) -> Option<&wgpu::Buffer> {
        self.grad_bufs.get(chunk)
    }

    /// Overwrite a tensor's values.
    pub fn write(&self, name: &str, data: &[f32]) -> Result<()> {
        self.write_to(&self.param_bufs, name, data)
    }

    /// Overwrite a tensor's gradient.
    pub fn write_grad(&self, name: &str, data: &[f32]) -> Result<()> {
        self.write_to(&self.grad_bufs, name, data)
    }

    /// Read a tensor's values back. Blocks until the GPU is done with earlier work.
    pub fn read(&self, name: &str) -> Result<Vec<f32>> {
        self.read_from(&self.param_bufs, name)
    }

    /// Read a tensor's gradient back. Blocks.
    pub fn read_grad(&self, name: &str) -> Result<Vec<f32>> {
        self.read_from(&self.grad_bufs, name)
    }

    /// The tensor's parameter range, for binding in your own shaders (e.g. the forward pass).
    pub fn binding(&self, name: &str) -> Result<wgpu::BufferBinding<'_>> {
        self.binding_in(&self.param_bufs, name)
    }

    /// The tensor's gradient range, for your backward kernel to write into.
    pub fn grad_binding(&self, name: &str) -> Result<wgpu::BufferBinding<'_>> {
        self.binding_in(&self.grad_bufs, name)
    }

    fn write_to(&self, bufs: &[wgpu::Buffer], name: &str, data: &[f32]) -> Result<()> {
        write_checked(&self.gpu, bufs, &self.layout, name, data)
    }

    fn read_from(&self, bufs: &[wgpu::Buffer], name: &str) -> Result<Vec<f32>> {
        let slot = self.layout.slot(name)?;
        read_slot(&self.gpu, bufs, slot)
    }

    fn binding_in<'a>(
        &'a self,
        bufs: &'a [wgpu::Buffer],
        name: &str,
    ) -> Result<wgpu::BufferBinding<'a>> {
        let slot = self.layout.slot(name)?;
        match slot.pieces.as_slice() {
            [p] => Ok(wgpu::BufferBinding {
                buffer: &bufs[p.chunk],
                offset: (p.offset * 4) as u64,
                size: NonZeroU64::new((p.len * 4) as u64),
            }),
            _ => Err(Error::SplitTensor(name.to_string())),
        }
    }
}

/// The binding of chunk `c` of `bufs` as the kernels see it: the whole arena buffer, or the
/// vec4-rounded range of a user's own buffer.
pub(crate) fn chunk_binding<'a>(
    layout: &Layout,
    bufs: &'a [wgpu::Buffer],
    c: usize,
    borrowed: bool,
) -> wgpu::BufferBinding<'a> {
    wgpu::BufferBinding {
        buffer: &bufs[c],
        offset: 0,
        size: if borrowed {
            NonZeroU64::new((layout.chunk_lens[c] * 4) as u64)
        } else {
            None
        },
    }
}

/// Reject buffers that do not belong to `gpu`'s device: binding them to a throwaway bind group
/// inside an error scope makes wgpu's validation tell.
fn check_same_device<'a>(gpu: &Gpu, bufs: impl Iterator<Item = &'a wgpu::Buffer>) -> Result<()> {
    let device = gpu.device();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("wgpu-optim device check"),
        entries: &[wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: false },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }],
    });
    for buf in bufs {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let _ = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("wgpu-optim device check"),
            layout: &layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: buf,
                    offset: 0,
                    size: NonZeroU64::new(4),
                }),
            }],
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::ParamsMismatch(format!(
                "a buffer cannot be used on this device (is it from another device?): {e}"
            )));
        }
    }
    Ok(())
}

/// Write one tensor's range of per-chunk buffers of the arena layout, after checking the name
/// and the length (nothing is written on error).
pub(crate) fn write_checked(
    gpu: &Gpu,
    bufs: &[wgpu::Buffer],
    layout: &Layout,
    name: &str,
    data: &[f32],
) -> Result<()> {
    let slot = layout.slot(name)?;
    if data.len() != slot.len {
        return Err(Error::LengthMismatch {
            name: name.to_string(),
            expected: slot.len,
            got: data.len(),
        });
    }
    write_slot(gpu, bufs, slot, data);
    Ok(())
}

/// Write `data` (exactly `slot.len` values) into one tensor's pieces.
pub(crate) fn write_slot(gpu: &Gpu, bufs: &[wgpu::Buffer], slot: &Slot, data: &[f32]) {
    let mut at = 0;
    for p in &slot.pieces {
        let bytes = bytemuck::cast_slice(&data[at..at + p.len]);
        gpu.queue()
            .write_buffer(&bufs[p.chunk], (p.offset * 4) as u64, bytes);
        at += p.len;
    }
}

/// Read one tensor's range out of per-chunk buffers of the arena layout.
pub(crate) fn read_slot(gpu: &Gpu, bufs: &[wgpu::Buffer], slot: &Slot) -> Result<Vec<f32>> {
    let pieces: Vec<_> = slot
        .pieces
        .iter()
        .map(|p| (&bufs[p.chunk], (p.offset * 4) as u64, (p.len * 4) as u64))
        .collect();
    gpu.read_pieces(&pieces)
}

/// A zero-filled storage buffer of `elems` f32 in the arena's usage set.
pub(crate) fn arena_buffer(gpu: &Gpu, label: &str, elems: usize) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (elems * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_aligns_and_splits() {
        let l = Layout::pack(&[("a", 3), ("b", 64), ("c", 5000)], 2048).unwrap();
        assert_eq!(
            l.slots[0].pieces,
            vec![Piece {
                chunk: 0,
                offset: 0,
                len: 3
            }]
        );
        assert_eq!(
            l.slots[1].pieces,
            vec![Piece {
                chunk: 0,
                offset: 64,
                len: 64
            }]
        );
        // c (5000 > cap) fills the rest of chunk 0, then whole chunks.
        let total: usize = l.slots[2].pieces.iter().map(|p| p.len).sum();
        assert_eq!(total, 5000);
        assert_eq!(
            l.slots[2].pieces[0],
            Piece {
                chunk: 0,
                offset: 128,
                len: 1920
            }
        );
        assert!(l
            .chunk_lens
            .iter()
            .all(|&c| c % CHUNK_ALIGN == 0 && c <= 2048));
        assert_eq!(l.chunk_lens.len(), 3);
    }

    #[test]
    fn packing_rejects_bad_names() {
        assert!(matches!(Layout::pack(&[], 1024), Err(Error::Empty(_))));
        assert!(matches!(
            Layout::pack(&[("", 3)], 1024),
            Err(Error::Empty(_))
        ));
        assert!(matches!(
            Layout::pack(&[("a", 0)], 1024),
            Err(Error::Empty(_))
        ));
        assert!(matches!(
            Layout::pack(&[("a", 1), ("a", 2)], 1024),
            Err(Error::DuplicateName(_))
        ));
    }
}
