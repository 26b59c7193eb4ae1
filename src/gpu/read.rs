//! Read-backs: copies into staging buffers, mapped and handed over without a further copy.

use super::{block_on, Gpu};
use crate::error::{Error, Result};

impl Gpu {
    /// Read the first `len` f32 of any buffer with `COPY_SRC` usage. Blocks (in a browser, use
    /// [`Gpu::read_buffer_f32_async`]).
    ///
    /// Errors: [`Error::BufferSize`] when the buffer lacks `COPY_SRC` or holds fewer than `len`
    /// f32 (also a `len` whose size in bytes overflows), checked before any GPU work.
    pub fn read_buffer_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        block_on(
            "Gpu::read_buffer_f32",
            "Gpu::read_buffer_f32_async",
            self.read_buffer_f32_async(buffer, len),
        )
    }

    /// Async form of [`Gpu::read_buffer_f32`], on every target: the copy is submitted at once,
    /// and the future resolves when wgpu has mapped it. Natively the future waits for the
    /// device when first polled (wgpu's native devices only make progress when polled); in a
    /// browser it yields to the page's event loop until the browser maps the buffer.
    pub async fn read_buffer_f32_async(
        &self,
        buffer: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<f32>> {
        // `len` f32 that do not fit a u64 of bytes do not fit any buffer either.
        let bytes = len
            .checked_mul(4)
            .and_then(|b| u64::try_from(b).ok())
            .filter(|&b| b <= buffer.size());
        match bytes {
            Some(bytes) if buffer.usage().contains(wgpu::BufferUsages::COPY_SRC) => {
                self.read_pieces_async(&[(buffer, 0, bytes)]).await
            }
            _ => Err(Error::BufferSize(format!(
                "cannot read {len} f32 from a buffer of {} bytes with usage {:?}",
                buffer.size(),
                buffer.usage()
            ))),
        }
    }

    /// Copy `pieces` (buffer, byte offset, byte length) into one host vector. Blocks.
    #[cfg_attr(not(any(feature = "mpi", feature = "burn")), allow(dead_code))]
    pub(crate) fn read_pieces(&self, pieces: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<f32>> {
        block_on(
            "a read-back",
            "its async form",
            self.read_pieces_async(pieces),
        )
    }

    /// Async form of [`Gpu::read_pieces`].
    pub(crate) async fn read_pieces_async(
        &self,
        pieces: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Vec<f32>> {
        self.read_with_async(pieces, |bytes| {
            bytemuck::pod_collect_to_vec::<u8, f32>(bytes)
        })
        .await
    }

    /// Read a plain-data struct from the start of `buffer`. Blocks.
    pub(crate) fn read_struct<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer) -> Result<T> {
        block_on(
            "a read-back",
            "its async form",
            self.read_struct_async(buffer),
        )
    }

    /// Async form of [`Gpu::read_struct`].
    pub(crate) async fn read_struct_async<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
    ) -> Result<T> {
        let size = std::mem::size_of::<T>() as u64;
        self.read_with_async(&[(buffer, 0, size)], |bytes| {
            bytemuck::pod_read_unaligned(bytes)
        })
        .await
    }

    /// Copy `(buffer, offset, length)` ranges into one staging buffer, wait, and hand the
    /// mapped bytes to `read` (no intermediate copy). Blocks.
    #[cfg(test)]
    pub(crate) fn read_with<T>(
        &self,
        pieces: &[(&wgpu::Buffer, u64, u64)],
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        block_on(
            "a read-back",
            "its async form",
            self.read_with_async(pieces, read),
        )
    }

    /// Async form of [`Gpu::read_with`]: the copies are recorded and submitted (inside error
    /// scopes) and the staging buffer's `map_async` sends its outcome through a oneshot
    /// channel, which the future awaits.
    pub(crate) async fn read_with_async<T>(
        &self,
        pieces: &[(&wgpu::Buffer, u64, u64)],
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T> {
        let Some((staging, mapped)) = self.scoped_async(|| self.start_read(pieces)).await? else {
            return Ok(read(&[]));
        };
        let landed = self.finish_read(mapped).await;
        if landed.is_err() {
            // A lost device shows as a failed map: say so.
            self.check_alive()?;
        }
        landed?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::ReadBack(e.to_string()))?;
            read(&view)
        };
        staging.unmap();
        Ok(out)
    }

    /// Read many items, each a list of `(buffer, offset, length)` ranges, in as few read-backs
    /// as [`READ_BATCH_BYTES`] per staging buffer allows (an item larger than that is read
    /// alone), and decode each item's bytes with `decode(index, bytes)`: the waits follow the
    /// bytes, not the number of items.
    pub(crate) async fn read_batched_async<T>(
        &self,
        items: &[Vec<(&wgpu::Buffer, u64, u64)>],
        decode: impl Fn(usize, &[u8]) -> T,
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let (mut end, mut bytes) = (start, 0u64);
            while end < items.len() {
                let n: u64 = items[end].iter().map(|r| r.2).sum();
                if end > start && bytes + n > READ_BATCH_BYTES {
                    break;
                }
                bytes += n;
                end += 1;
            }
            let pieces: Vec<_> = items[start..end].iter().flatten().copied().collect();
            let batch = self
                .read_with_async(&pieces, |all| {
                    let mut at = 0usize;
                    (start..end)
                        .map(|i| {
                            let n: u64 = items[i].iter().map(|r| r.2).sum();
                            let item = decode(i, &all[at..at + n as usize]);
                            at += n as usize;
                            item
                        })
                        .collect::<Vec<T>>()
                })
                .await?;
            out.extend(batch);
            start = end;
        }
        Ok(out)
    }

    /// Record and submit the copies of `pieces` into a new staging buffer and ask for it to be
    /// mapped: the buffer and the channel its map outcome arrives on (`None`: nothing to read).
    fn start_read(
        &self,
        pieces: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Option<(wgpu::Buffer, MapReceiver)>> {
        let total: u64 = pieces.iter().map(|p| p.2).sum();
        if total == 0 {
            return Ok(None);
        }
        let staging = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim read-back"),
            size: total,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let mut at = 0;
        for &(buf, off, len) in pieces {
            enc.copy_buffer_to_buffer(buf, off, &staging, at, len);
            at += len;
        }
        self.queue().submit([enc.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        Ok(Some((staging, rx)))
    }

    /// Wait for a `map_async` outcome: natively by polling the device until its work is done
    /// (counted in `blocking_waits`), in a browser by yielding until the browser answers.
    async fn finish_read(&self, mapped: MapReceiver) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        mapped
            .await
            .map_err(|_| Error::ReadBack("the buffer mapping was dropped unanswered".into()))?
            .map_err(|e| Error::ReadBack(e.to_string()))
    }
}

/// The most bytes [`Gpu::read_batched_async`] reads through one staging buffer.
const READ_BATCH_BYTES: u64 = 64 << 20;

/// Where a staging buffer's `map_async` outcome arrives.
type MapReceiver =
    futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;
