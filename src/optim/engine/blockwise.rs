//! 8-bit blockwise optimizer state in the engine ([`StateFormat::Blockwise8`]): the block table
//! of every chunk, the layout of the state buffers, and moving state between the host and them.
//!
//! Each 256-element block of each tensor is one entry of its chunk's table (see
//! `shaders/blockwise.wgsl`). A state buffer of a chunk holds, as u32 words: the codes of the
//! chunk's quantized blocks (64 words each, four codes per word, element order), their absmax
//! (one word each), then the f32 values of the blocks of tensors below `min_size` (256 words
//! each). The parameter and gradient buffers keep the arena layout; the table maps each block
//! to its vec4s there.

use crate::arena::Layout;
use crate::blockwise::{self, QuantizedState, BLOCK};
use crate::error::Result;
use crate::gpu::Gpu;

/// Marks an entry whose tensor keeps f32 state (as in `shaders/blockwise.wgsl`).
const DENSE: u32 = u32::MAX;
/// Words of one block's codes.
const CODE_WORDS: u32 = (BLOCK / 4) as u32;

/// Where one tensor's state lies under 8-bit state, as checkpoints read and write it: GPU
/// ranges `(buffer, byte offset, bytes)` in the tensor's order, of its codes and absmax
/// (quantized), or of its f32 values (a tensor below `min_size`).
pub struct BlockwiseView<'a> {
    pub quantized: bool,
    pub codes: Vec<(&'a wgpu::Buffer, u64, u64)>,
    pub absmax: Vec<(&'a wgpu::Buffer, u64, u64)>,
    pub values: Vec<(&'a wgpu::Buffer, u64, u64)>,
    pub map: [f32; 256],
}

/// One piece of a tensor (its part in one chunk) in the state buffers: its blocks are
/// consecutive, codes `sbase + 64 b` and absmax `amax + b` (quantized), or f32 values
/// `sbase + 256 b`.
#[derive(Clone, Copy, Debug)]
struct QPiece {
    chunk: usize,
    quant: bool,
    sbase: u32,
    amax: u32,
    len: usize,
}

impl QPiece {
    fn blocks(&self) -> usize {
        blockwise::blocks(self.len)
    }
}

/// The block tables and state-buffer layout of 8-bit state over an arena layout.
pub(super) struct Blockwise {
    pub min_size: usize,
    /// Per chunk: its table entries (a multiple of four) and the words of each state buffer.
    entries: Vec<Vec<[u32; 4]>>,
    words: Vec<usize>,
    /// Per tensor, in layout order.
    pieces: Vec<Vec<QPiece>>,
    /// One map per state slot of the optimizer (in `SLOTS` order).
    pub maps: Vec<[f32; 256]>,
    /// Per chunk: the maps, then the entries.
    pub tables: Vec<wgpu::Buffer>,
}

impl Blockwise {
    /// The blocks of `layout` with `min_size`, planned on the host: the tables are uploaded
    /// by [`Blockwise::upload_tables`].
    pub fn plan(layout: &Layout, min_size: usize, maps: Vec<[f32; 256]>) -> Blockwise {
        let chunks = layout.chunk_lens.len();
        let mut entries = vec![Vec::new(); chunks];
        let mut words = vec![0usize; chunks];
        let mut pieces = vec![Vec::new(); layout.slots.len()];
        for c in 0..chunks {
            let mut in_chunk: Vec<(usize, crate::Piece, bool)> = layout
                .slots
                .iter()
                .enumerate()
                .flat_map(|(t, s)| {
                    let quant = s.len >= min_size;
                    s.pieces
                        .iter()
                        .filter(move |p| p.chunk == c)
                        .map(move |p| (t, *p, quant))
                })
                .collect();
            in_chunk.sort_by_key(|(_, p, _)| p.offset);
            let nq: usize = in_chunk
                .iter()
                .filter(|x| x.2)
                .map(|x| blockwise::blocks(x.1.len))
                .sum();
            let (mut code_at, mut amax_at) = (0u32, (nq * CODE_WORDS as usize) as u32);
            let mut dense_at = amax_at + nq as u32;
            for (t, p, quant) in in_chunk {
                let piece = QPiece {
                    chunk: c,
                    quant,
                    sbase: if quant { code_at } else { dense_at },
                    amax: if quant { amax_at } else { DENSE },
                    len: p.len,
                };
                for b in 0..piece.blocks() {
                    let nelem = (p.len - b * BLOCK).min(BLOCK) as u32;
                    let start = ((p.offset + b * BLOCK) / 4) as u32;
                    if quant {
                        entries[c].push([start, nelem, amax_at, code_at]);
                        code_at += CODE_WORDS;
                        amax_at += 1;
                    } else {
                        entries[c].push([start, nelem, DENSE, dense_at]);
                        dense_at += BLOCK as u32;
                    }
                }
                pieces[t].push(piece);
            }
            while entries[c].len() % 4 != 0 || entries[c].is_empty() {
                entries[c].push([0, 0, DENSE, 0]);
            }
            words[c] = (dense_at as usize).next_multiple_of(4).max(4);
        }
        Blockwise {
            min_size,
            entries,
            words,
            pieces,
            maps,
            tables: Vec::new(),
        }
    }

    /// Bytes of chunk `c`'s table: the maps, then four words per block.
    pub fn table_bytes(&self, c: usize) -> u64 {
        ((self.maps.len() * 256 + self.entries[c].len() * 4) * 4) as u64
    }

    /// (Re)create every chunk's table from the maps and entries.
    pub fn upload_tables(&mut self, gpu: &Gpu) {
        self.tables = self
            .entries
            .iter()
            .map(|e| {
                let mut words: Vec<u32> = self
                    .maps
                    .iter()
                    .flat_map(|m| m.iter().map(|v| v.to_bits()))
                    .collect();
                words.extend(e.iter().flatten());
                crate::arena::storage_with(
                    gpu,
                    "wgpu-optim 8-bit block table",
                    bytemuck::cast_slice(&words),
                )
            })
            .collect();
    }

    /// Bytes of chunk `c`'s buffer of one state.
    pub fn buffer_bytes(&self, c: usize) -> u64 {
        (self.words[c] * 4) as u64
    }

    /// Elements the update kernel's grid must cover for chunk `c`: 256 per block, so that
    /// `kernel::record` dispatches one workgroup per four blocks.
    pub fn grid_elems(&self, c: usize) -> usize {
        self.entries[c].len() * BLOCK
    }

    /// Where state slot `slot` of tensor `t` lies in `bufs` (that state's buffers).
    pub fn view<'a>(&self, t: usize, bufs: &'a [wgpu::Buffer], slot: usize) -> BlockwiseView<'a> {
        let mut v = BlockwiseView {
            quantized: self.quantized(t),
            codes: Vec::new(),
            absmax: Vec::new(),
            values: Vec::new(),
            map: self.maps[slot],
        };
        for p in &self.pieces[t] {
            let buf = &bufs[p.chunk];
            if p.quant {
                v.codes.push((buf, p.sbase as u64 * 4, p.len as u64));
                v.absmax
                    .push((buf, p.amax as u64 * 4, p.blocks() as u64 * 4));
            } else {
                v.values.push((buf, p.sbase as u64 * 4, p.len as u64 * 4));
            }
        }
        v
    }

    /// Whether tensor `t` has 8-bit state.
    pub fn quantized(&self, t: usize) -> bool {
        self.pieces[t].first().is_some_and(|p| p.quant)
    }

    /// `(buffer, byte offset, bytes)` ranges holding tensor `t`'s state in `bufs`: per piece,
    /// its codes then its absmax, or its f32 blocks.
    fn ranges<'a>(&self, t: usize, bufs: &'a [wgpu::Buffer]) -> Vec<(&'a wgpu::Buffer, u64, u64)> {
        let mut r = Vec::new();
        for p in &self.pieces[t] {
            let b = p.blocks() as u64;
            let buf = &bufs[p.chunk];
            if p.quant {
                r.push((buf, p.sbase as u64 * 4, b * BLOCK as u64));
                r.push((buf, p.amax as u64 * 4, b * 4));
            } else {
                r.push((buf, p.sbase as u64 * 4, b * BLOCK as u64 * 4));
            }
        }
        r
    }

    /// Decode what [`Blockwise::ranges`] read: the values, and codes and absmax when quantized.
    fn decode(
        &self,
        t: usize,
        bytes: &[u8],
        map: &[f32; 256],
    ) -> (Vec<f32>, Option<QuantizedState>) {
        let mut values = Vec::new();
        let (mut codes, mut absmax) = (Vec::new(), Vec::new());
        let mut at = 0;
        for p in &self.pieces[t] {
            let b = p.blocks();
            if p.quant {
                codes.extend_from_slice(&bytes[at..at + p.len]);
                at += b * BLOCK;
                absmax.extend(
                    bytes[at..at + b * 4]
                        .chunks_exact(4)
                        .map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes"))),
                );
                at += b * 4;
            } else {
                values.extend(
                    bytes[at..at + p.len * 4]
                        .chunks_exact(4)
                        .map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes"))),
                );
                at += b * BLOCK * 4;
            }
        }
        if self.quantized(t) {
            // Pieces split on block boundaries, so their absmax are one per block of the whole.
            let values = blockwise::dequantize(map, &codes, &absmax)
                .expect("one absmax per block of the tensor");
            let q = QuantizedState {
                codes,
                absmax,
                map: *map,
            };
            (values, Some(q))
        } else {
            (values, None)
        }
    }

    /// Read tensor `t`'s state from `bufs` (slot `k`): values and, when quantized, the codes.
    pub async fn read(
        &self,
        gpu: &Gpu,
        t: usize,
        bufs: &[wgpu::Buffer],
        k: usize,
    ) -> Result<(Vec<f32>, Option<QuantizedState>)> {
        let ranges = self.ranges(t, bufs);
        let map = self.maps[k];
        gpu.read_with_async(&ranges, |bytes| self.decode(t, bytes, &map))
            .await
    }

    /// Every tensor's state values in `bufs` (slot `k`), in layout order, in as few
    /// read-backs as the bytes allow.
    pub async fn read_all(
        &self,
        gpu: &Gpu,
        bufs: &[wgpu::Buffer],
        k: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let items: Vec<_> = (0..self.pieces.len())
            .map(|t| self.ranges(t, bufs))
            .collect();
        let map = self.maps[k];
        gpu.read_batched_async(&items, |t, bytes| self.decode(t, bytes, &map).0)
            .await
    }

    /// Write tensor `t`'s state (slot `k`) from f32 values, quantized on the host
    /// ([`blockwise::quantize`]) when the tensor has 8-bit state.
    pub fn write_values(&self, gpu: &Gpu, t: usize, bufs: &[wgpu::Buffer], k: usize, v: &[f32]) {
        let mut at = 0;
        for p in &self.pieces[t] {
            let part = &v[at..at + p.len];
            at += p.len;
            if p.quant {
                let (codes, absmax) = blockwise::quantize(&self.maps[k], part);
                self.write_codes(gpu, p, bufs, &codes, &absmax);
            } else {
                let mut words = part.to_vec();
                words.resize(p.blocks() * BLOCK, 0.0);
                gpu.queue().write_buffer(
                    &bufs[p.chunk],
                    p.sbase as u64 * 4,
                    bytemuck::cast_slice(&words),
                );
            }
        }
    }

    /// Write one piece's codes (`p.len` of them) and absmax.
    fn write_codes(
        &self,
        gpu: &Gpu,
        p: &QPiece,
        bufs: &[wgpu::Buffer],
        codes: &[u8],
        absmax: &[f32],
    ) {
        let mut bytes = codes.to_vec();
        bytes.resize(p.blocks() * BLOCK, 0);
        let buf = &bufs[p.chunk];
        gpu.queue().write_buffer(buf, p.sbase as u64 * 4, &bytes);
        gpu.queue()
            .write_buffer(buf, p.amax as u64 * 4, bytemuck::cast_slice(absmax));
    }

    /// Write tensor `t`'s codes and absmax as given (checked by the caller).
    pub fn write_quantized(&self, gpu: &Gpu, t: usize, bufs: &[wgpu::Buffer], q: &QuantizedState) {
        let (mut at, mut block) = (0, 0);
        for p in &self.pieces[t] {
            let b = p.blocks();
            self.write_codes(
                gpu,
                p,
                bufs,
                &q.codes[at..at + p.len],
                &q.absmax[block..block + b],
            );
            at += p.len;
            block += b;
        }
    }
}
