//! The arena geometry every other module builds on: where each named tensor lives in a set of
//! per-chunk GPU buffers (chunk, offset, length; 256-byte aligned offsets, zeroed padding),
//! buffer creation, and reading and writing one tensor's range. Parameters, gradients and every
//! optimizer state use the same [`Layout`], so one index means the same element everywhere.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use std::collections::HashMap;
use std::num::NonZeroU64;

/// Every tensor starts on a multiple of this many elements (256 bytes), so it can be bound on
/// its own as a storage buffer range, and its padding keeps every vec4 inside the arena.
pub const TENSOR_ALIGN: usize = 64;
/// Every chunk is a whole number of these elements: one workgroup (256 threads) × one vec4.
pub const CHUNK_ALIGN: usize = 1024;

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
    gpu.scoped(|| {
        write_slot(gpu, bufs, slot, data);
        Ok(())
    })
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

/// A storage buffer of `bytes` (at least 16) that can be copied to and from.
pub(crate) fn storage(gpu: &Gpu, label: &str, bytes: u64) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// A storage buffer holding `data`.
pub(crate) fn storage_with(gpu: &Gpu, label: &str, data: &[u8]) -> wgpu::Buffer {
    let buf = storage(gpu, label, data.len() as u64);
    gpu.queue().write_buffer(&buf, 0, data);
    buf
}

/// A uniform buffer holding `data`.
pub(crate) fn uniform_with(gpu: &Gpu, label: &str, data: &[u8]) -> wgpu::Buffer {
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: data.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    gpu.queue().write_buffer(&buf, 0, data);
    buf
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
