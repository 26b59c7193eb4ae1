//! The upload pass of a load: the file's tensors into their GPU buffers, block by block, many
//! tensors per staging buffer and submit.

use super::format_err;
use super::io::{read_blocks, widened, Realign, Segments};
use super::open::{kind, Checkpoint, Kind};
use super::restore::Dest;
use super::BLOCK_BYTES;
use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Where the bytes of an aligned part are: `(start, len)` in the block, or a word (a part held
/// back at the end of the previous block, completed; its length is all 4 bytes or the tensor's
/// last half word, padded with zeros).
enum Bytes {
    Block(usize, usize),
    Word([u8; 4]),
}

impl Bytes {
    fn len(&self) -> usize {
        match self {
            Bytes::Block(_, len) => *len,
            Bytes::Word(_) => 4,
        }
    }
}

impl Checkpoint {
    /// Upload the tensors with a destination, reading the file in blocks: each block's tensor
    /// parts are laid out word-aligned in one staging buffer (written through the queue's own
    /// staging memory), from which one command buffer copies every tensor piece to its place (one submit and one wait
    /// per block, so staging memory stays about one block). The bytes must have the CRC-32s of
    /// the validation pass (`crcs`, in data order) or, without them, those the file records;
    /// `check_finite` rejects non-finite values (when there was no validation pass).
    ///
    /// A tensor's bytes in the file start wherever the tensors before it end (2 bytes past a
    /// word after a 16-bit tensor of odd length), while GPU copies move whole words to word
    /// offsets: [`Realign`] cuts each tensor into parts that start on a word of the tensor, and
    /// a tensor's last half word is padded with zeros, which land in the padding after it (every
    /// tensor starts 256-byte aligned in its chunk).
    pub(super) fn upload(
        &self,
        gpu: &Gpu,
        dests: &[Dest<'_>],
        crcs: Option<&[u32]>,
        check_finite: bool,
    ) -> Result<()> {
        // Only the runs of tensors that go somewhere are read.
        let selected: Vec<usize> = (0..self.order.len())
            .filter(|&t| dests[t].is_some())
            .collect();
        if selected.is_empty() {
            return Ok(());
        }
        let ranges: Vec<(usize, usize)> = selected.iter().map(|&t| self.ranges[t]).collect();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        // Runs of selected tensors separated by small gaps (the step scalars between one
        // tensor's state and the next tensor's) are read as one span, gaps included: reading a
        // few bytes too many is cheaper than a submit per tensor.
        for &(s, e) in &ranges {
            match spans.last_mut() {
                Some(last) if s - last.1 <= BLOCK_BYTES / 16 => last.1 = e,
                _ => spans.push((s, e)),
            }
        }
        let mut staging: Option<wgpu::Buffer> = None;
        let mut seg = Segments::new(&ranges);
        let mut realign = Realign::default();
        let mut h = crc32fast::Hasher::new();
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        for span in spans {
            read_blocks(
                &mut file,
                &self.path,
                self.data_start,
                span,
                |block, offset| {
                    // Each aligned part: where its bytes are (in the block, or a word that a
                    // part held back completed), its tensor, its byte offset in the tensor, and
                    // its offset in the staging buffer.
                    let mut copies: Vec<(Bytes, usize, usize, usize)> = Vec::new();
                    let mut size = 0usize;
                    let base = block.as_ptr() as usize;
                    seg.each(block, offset, |i, bytes, at, ends| {
                        let t = selected[i];
                        realign.each(bytes, at, ends, |bytes, at, ends| {
                            self.take_part(t, bytes, at, ends, &mut h, crcs, check_finite)?;
                            let start = (bytes.as_ptr() as usize).wrapping_sub(base);
                            let src = if start < block.len() {
                                Bytes::Block(start, bytes.len())
                            } else {
                                let mut w = [0u8; 4];
                                w[..bytes.len()].copy_from_slice(bytes);
                                Bytes::Word(w)
                            };
                            copies.push((src, t, at, size));
                            size += bytes.len().next_multiple_of(4);
                            Ok(())
                        })
                    })?;
                    if copies.is_empty() {
                        return Ok(());
                    }
                    if staging.as_ref().is_none_or(|s| s.size() < size as u64) {
                        staging = Some(gpu.device().create_buffer(&wgpu::BufferDescriptor {
                            label: Some("wgpu-optim checkpoint upload"),
                            size: size as u64,
                            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        }));
                    }
                    let staging = staging.as_ref().expect("created above");
                    {
                        // Straight into the queue's staging memory: no second host copy of
                        // the block.
                        let len = wgpu::BufferSize::new(size as u64).expect("parts to upload");
                        let mut view = gpu
                            .queue()
                            .write_buffer_with(staging, 0, len)
                            .ok_or_else(|| format_err("the upload staging write failed"))?;
                        for (src, _, _, pos) in &copies {
                            let bytes = match src {
                                Bytes::Block(start, len) => &block[*start..start + len],
                                Bytes::Word(w) => &w[..],
                            };
                            let padded = bytes.len().next_multiple_of(4);
                            view.slice(*pos..pos + bytes.len()).copy_from_slice(bytes);
                            view.slice(pos + bytes.len()..pos + padded).fill(0);
                        }
                    }
                    let mut enc = gpu
                        .device()
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                    for (bytes, t, lo, src) in copies {
                        let ranges = dests[t].as_ref().expect("selected");
                        let hi = lo + bytes.len();
                        let mut piece_start = 0usize;
                        for &(buf, offset, len) in ranges {
                            let piece_end = piece_start + len;
                            let (a, b) = (lo.max(piece_start), hi.min(piece_end));
                            if a < b {
                                // Pieces split at multiples of 256 elements, so only a
                                // tensor's end can be a partial word.
                                enc.copy_buffer_to_buffer(
                                    staging,
                                    (src + a - lo) as u64,
                                    buf,
                                    offset + (a - piece_start) as u64,
                                    (b - a).next_multiple_of(4) as u64,
                                );
                            }
                            piece_start = piece_end;
                        }
                    }
                    gpu.queue().submit([enc.finish()]);
                    gpu.device()
                        .poll(wgpu::PollType::wait_indefinitely())
                        .map_err(|e| Error::ReadBack(e.to_string()))?;
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// The checks on one aligned part of tensor `t` on its way to the GPU: non-finite values
    /// (with `check_finite`) and, at the tensor's end, its CRC-32.
    #[allow(clippy::too_many_arguments)]
    fn take_part(
        &self,
        t: usize,
        bytes: &[u8],
        at: usize,
        ends: bool,
        h: &mut crc32fast::Hasher,
        crcs: Option<&[u32]>,
        check_finite: bool,
    ) -> Result<()> {
        let name = &self.order[t];
        let dtype = self.dtypes[t];
        h.update(bytes);
        let codes = matches!(kind(name), Kind::Quant(_, _, super::CODES));
        if check_finite && !codes {
            if let Some((j, x)) = widened(dtype, bytes)
                .enumerate()
                .find(|(_, x)| !x.is_finite())
            {
                return Err(Error::CheckpointNonFinite {
                    tensor: name.clone(),
                    index: at / dtype.size() + j,
                    value: x,
                });
            }
        }
        if ends {
            let got = std::mem::take(h).finalize();
            match crcs {
                Some(c) if c[t] != got => {
                    return Err(format_err(format!(
                        "`{name}` changed while the checkpoint was being loaded (was the file \
                         modified in place?); parameters and state are partly overwritten"
                    )))
                }
                Some(_) => {}
                None => self.check_crc(t, got)?,
            }
        }
        Ok(())
    }
}
