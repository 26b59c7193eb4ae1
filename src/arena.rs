//! The arena geometry every other module builds on: where each named tensor lives in a set of
//! per-chunk GPU buffers (chunk, offset, length; 256-byte aligned offsets, zeroed padding),
//! buffer creation, and reading and writing one tensor's range. Parameters, gradients and every
//! optimizer state use the same [`Layout`], so one index means the same element everywhere.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use std::collections::HashMap;
use std::num::NonZeroU64;

/// Every f32 tensor starts on a multiple of this many elements (256 bytes; 128 elements for
/// 16-bit dtypes), so it can be bound on its own as a storage buffer range, and its padding keeps
/// every vector access inside the arena.
pub const TENSOR_ALIGN: usize = 64;
/// A tensor split across chunks is split at a multiple of this many of its elements, so a
/// 256-element block of 8-bit state ([`crate::blockwise::BLOCK`]) never spans two chunks.
pub const SPLIT_ALIGN: usize = crate::blockwise::BLOCK;
/// Every chunk is a whole number of these elements: one workgroup (256 threads) × four elements.
pub const CHUNK_ALIGN: usize = 1024;

/// One contiguous run of a tensor inside one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Chunk index.
    pub chunk: usize,
    /// Offset of the first element inside the chunk, in elements (256 bytes aligned: a multiple
    /// of 64 for f32, of 128 for 16-bit dtypes).
    pub offset: usize,
    /// Number of the tensor's elements in this piece.
    pub len: usize,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub name: String,
    pub len: usize,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub pieces: Vec<Piece>,
}

/// The arena's layout: where each tensor lives. Optimizer state reuses it element for element.
///
/// Each chunk holds tensors of one dtype (f32 chunks first, then bf16, then f16), so an update
/// kernel specialised for that dtype covers it in one dispatch; tensors keep their given order
/// in `slots`.
#[derive(Debug)]
pub(crate) struct Layout {
    pub slots: Vec<Slot>,
    pub index: HashMap<String, usize>,
    /// Length of each chunk in elements (a multiple of [`CHUNK_ALIGN`]).
    pub chunk_lens: Vec<usize>,
    /// The dtype of each chunk's parameters and gradients.
    pub chunk_dtypes: Vec<DType>,
}

/// The number of elements of `shape` (1 for a scalar), checked: a zero-size dimension is
/// [`Error::Empty`], too many elements [`Error::InvalidShape`].
pub(crate) fn elements(name: &str, shape: &[usize]) -> Result<usize> {
    let bad = |reason| Error::InvalidShape {
        name: name.to_string(),
        shape: shape.to_vec(),
        reason,
    };
    if shape.contains(&0) {
        return Err(Error::Empty(format!(
            "tensor `{name}` has no elements (shape {shape:?})"
        )));
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad("the number of elements overflows"))
}

impl Layout {
    /// Pack `specs` (name, shape, dtype): each dtype's tensors in order into chunks of that
    /// dtype; a chunk holds at most `cap` elements (a multiple of CHUNK_ALIGN). A tensor whose
    /// element count rounded up to its alignment overflows is [`Error::InvalidShape`].
    pub fn pack(specs: &[(&str, &[usize], DType)], cap: usize) -> Result<Layout> {
        if specs.is_empty() {
            return Err(Error::Empty("no tensors given".into()));
        }
        let mut index = HashMap::with_capacity(specs.len());
        let mut lens = Vec::with_capacity(specs.len());
        for (i, &(name, shape, _)) in specs.iter().enumerate() {
            if name.is_empty() {
                return Err(Error::Empty("a tensor name is empty".into()));
            }
            lens.push(elements(name, shape)?);
            if index.insert(name.to_string(), i).is_some() {
                return Err(Error::DuplicateName(name.to_string()));
            }
        }
        let mut pieces: Vec<Vec<Piece>> = vec![Vec::new(); specs.len()];
        let mut chunk_lens: Vec<usize> = Vec::new();
        let mut chunk_dtypes = Vec::new();
        for dtype in DType::ALL {
            let align = dtype.align();
            let base = chunk_lens.len();
            let mut used = 0;
            for (t, &(_, _, d)) in specs.iter().enumerate() {
                if d != dtype {
                    continue;
                }
                if chunk_lens.len() == base {
                    chunk_lens.push(0);
                    chunk_dtypes.push(dtype);
                }
                let len = lens[t];
                let Some(padded) = len.checked_next_multiple_of(align) else {
                    return Err(Error::InvalidShape {
                        name: specs[t].0.to_string(),
                        shape: specs[t].1.to_vec(),
                        reason: "the number of elements with padding overflows",
                    });
                };
                // Start a fresh chunk when the tensor would fit in one but not in what is left
                // (`used <= cap`, so `cap - used` cannot underflow).
                if padded > cap - used && padded <= cap && used > 0 {
                    chunk_lens.push(0);
                    chunk_dtypes.push(dtype);
                    used = 0;
                }
                let mut done = 0;
                while done < padded {
                    if used == cap {
                        chunk_lens.push(0);
                        chunk_dtypes.push(dtype);
                        used = 0;
                    }
                    let mut take = (padded - done).min(cap - used);
                    if take < padded - done {
                        // A split falls on a multiple of SPLIT_ALIGN elements of the tensor.
                        take -= take % SPLIT_ALIGN;
                        if take == 0 {
                            chunk_lens.push(0);
                            chunk_dtypes.push(dtype);
                            used = 0;
                            continue;
                        }
                    }
                    pieces[t].push(Piece {
                        chunk: chunk_lens.len() - 1,
                        offset: used,
                        len: take.min(len.saturating_sub(done)),
                    });
                    used += take;
                    done += take;
                    *chunk_lens.last_mut().unwrap() = used;
                }
                pieces[t].retain(|p| p.len > 0);
            }
        }
        for c in &mut chunk_lens {
            *c = c.div_ceil(CHUNK_ALIGN) * CHUNK_ALIGN;
        }
        let slots = specs
            .iter()
            .zip(pieces)
            .zip(lens)
            .map(|((&(name, shape, dtype), pieces), len)| Slot {
                name: name.to_string(),
                len,
                shape: shape.to_vec(),
                dtype,
                pieces,
            })
            .collect();
        Ok(Layout {
            slots,
            index,
            chunk_lens,
            chunk_dtypes,
        })
    }

    /// 1-D f32 tensors of the given lengths.
    #[cfg(test)]
    pub fn pack_f32(specs: &[(&str, usize)], cap: usize) -> Result<Layout> {
        let shapes: Vec<[usize; 1]> = specs.iter().map(|s| [s.1]).collect();
        let specs: Vec<(&str, &[usize], DType)> = specs
            .iter()
            .zip(&shapes)
            .map(|(s, sh)| (s.0, &sh[..], DType::F32))
            .collect();
        Self::pack(&specs, cap)
    }

    pub fn slot(&self, name: &str) -> Result<&Slot> {
        self.index
            .get(name)
            .map(|&i| &self.slots[i])
            .ok_or_else(|| Error::UnknownTensor(name.to_string()))
    }

    /// Bytes of chunk `c` in `dtype`.
    pub fn chunk_bytes(&self, c: usize, dtype: DType) -> u64 {
        (self.chunk_lens[c] * dtype.size()) as u64
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
            NonZeroU64::new(layout.chunk_bytes(c, layout.chunk_dtypes[c]))
        } else {
            None
        },
    }
}

/// Write one tensor's range of per-chunk buffers of the arena layout (stored as `dtype`), after
/// checking the name and the length (nothing is written on error).
pub(crate) fn write_checked(
    gpu: &Gpu,
    bufs: &[wgpu::Buffer],
    layout: &Layout,
    dtype: Option<DType>,
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
        write_slot(gpu, bufs, slot, dtype.unwrap_or(slot.dtype), data);
        Ok(())
    })
}

/// Write `data` (exactly `slot.len` values) into one tensor's pieces of buffers of `dtype`,
/// rounded to nearest even. A 16-bit piece of odd length also writes the padding element after
/// it (as zero): queue writes are whole u32 words.
pub(crate) fn write_slot(
    gpu: &Gpu,
    bufs: &[wgpu::Buffer],
    slot: &Slot,
    dtype: DType,
    data: &[f32],
) {
    let mut at = 0;
    for p in &slot.pieces {
        let bytes = dtype.encode(&data[at..at + p.len]);
        gpu.queue()
            .write_buffer(&bufs[p.chunk], (p.offset * dtype.size()) as u64, &bytes);
        at += p.len;
    }
}

/// `(buffer, byte offset, bytes)` of each piece of a tensor in buffers of `dtype`, whole u32
/// words.
pub(crate) fn piece_ranges<'a>(
    bufs: &'a [wgpu::Buffer],
    slot: &Slot,
    dtype: DType,
) -> Vec<(&'a wgpu::Buffer, u64, u64)> {
    slot.pieces
        .iter()
        .map(|p| {
            let bytes = (p.len * dtype.size()).next_multiple_of(4);
            (
                &bufs[p.chunk],
                (p.offset * dtype.size()) as u64,
                bytes as u64,
            )
        })
        .collect()
}

/// Decode the bytes `piece_ranges` read, concatenated, into the tensor's f32 values.
pub(crate) fn decode_pieces(bytes: &[u8], slot: &Slot, dtype: DType) -> Vec<f32> {
    let mut out = Vec::with_capacity(slot.len);
    let mut at = 0;
    for p in &slot.pieces {
        let n = (p.len * dtype.size()).next_multiple_of(4);
        out.extend(dtype.decode(&bytes[at..at + n], p.len));
        at += n;
    }
    out
}

/// Read one tensor's range out of per-chunk buffers of `dtype`, widened to f32.
pub(crate) async fn read_slot_async(
    gpu: &Gpu,
    bufs: &[wgpu::Buffer],
    slot: &Slot,
    dtype: DType,
) -> Result<Vec<f32>> {
    let pieces = piece_ranges(bufs, slot, dtype);
    gpu.read_with_async(&pieces, |bytes| decode_pieces(bytes, slot, dtype))
        .await
}

/// [`read_slot_async`] for many tensors, each `(slot, dtype)`, in as few read-backs as the
/// bytes allow ([`Gpu::read_batched_async`]).
pub(crate) async fn read_slots_async(
    gpu: &Gpu,
    bufs: &[wgpu::Buffer],
    slots: &[(&Slot, DType)],
) -> Result<Vec<Vec<f32>>> {
    let items: Vec<_> = slots
        .iter()
        .map(|&(slot, dtype)| piece_ranges(bufs, slot, dtype))
        .collect();
    gpu.read_batched_async(&items, |i, bytes| {
        decode_pieces(bytes, slots[i].0, slots[i].1)
    })
    .await
}

/// A zero-filled storage buffer of `bytes` in the arena's usage set.
pub(crate) fn arena_buffer(gpu: &Gpu, label: &str, bytes: u64) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes,
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
        let l = Layout::pack_f32(&[("a", 3), ("b", 64), ("c", 5000)], 2048).unwrap();
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
                len: 1792
            }
        );
        assert!(l.slots[2].pieces[1..]
            .iter()
            .all(|p| p.offset == 0 && (p.len == 2048 || p.len == 5000 - 1792 - 2048)));
        assert!(l
            .chunk_lens
            .iter()
            .all(|&c| c % CHUNK_ALIGN == 0 && c <= 2048));
        assert_eq!(l.chunk_lens.len(), 3);
    }

    #[test]
    fn packing_rejects_bad_names() {
        assert!(matches!(Layout::pack_f32(&[], 1024), Err(Error::Empty(_))));
        assert!(matches!(
            Layout::pack_f32(&[("", 3)], 1024),
            Err(Error::Empty(_))
        ));
        assert!(matches!(
            Layout::pack_f32(&[("a", 0)], 1024),
            Err(Error::Empty(_))
        ));
        assert!(matches!(
            Layout::pack_f32(&[("a", 1), ("a", 2)], 1024),
            Err(Error::DuplicateName(_))
        ));
    }

    #[test]
    fn packing_rejects_lengths_whose_padding_overflows() {
        for (len, dtype) in [
            (usize::MAX, DType::F32),
            (usize::MAX - 62, DType::F32),
            (usize::MAX - 100, DType::Bf16),
        ] {
            match Layout::pack(&[("w", &[len][..], dtype)], usize::MAX / 2) {
                Err(Error::InvalidShape { name, shape, .. }) => {
                    assert_eq!((name.as_str(), shape), ("w", vec![len]))
                }
                other => panic!("{len} elements of {dtype:?}: {other:?}"),
            }
        }
        // The largest length that still rounds up is packed (as geometry; no buffer is made).
        let l = Layout::pack_f32(&[("w", usize::MAX - 63)], usize::MAX / 2).unwrap();
        assert_eq!(l.slots[0].len, usize::MAX - 63);
    }
}
