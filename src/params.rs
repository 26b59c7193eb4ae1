//! [`Params`]: the user's named tensors (any shape; f32, bf16 or f16 storage), a param and a
//! grad buffer per chunk of one arena [`Layout`], and [`ParamsBuilder`].

use crate::arena::{
    arena_buffer, read_slot_async, write_checked, Layout, Piece, Slot, CHUNK_ALIGN, TENSOR_ALIGN,
};
use crate::dtype::DType;
use crate::error::{check, Error, Result};
use crate::gpu::Gpu;
use crate::norm::{Clipper, GradNorm, NormSettings, NormType, Rewrite};
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The most chunks an arena may have (2^20 of lavapipe's 128 MiB bindings are 128 TiB).
const MAX_CHUNKS: usize = 1 << 20;

/// Named tensors in GPU storage buffers: the parameters and their gradients, packed into a flat
/// arena of one or more chunks (one param and one grad buffer per chunk, same layout).
///
/// Every tensor has a shape and a storage [`DType`]; gradients have their parameter's dtype.
/// [`Params::new`] takes 1-D f32 tensors; [`Params::builder`] takes shapes and dtypes. Values
/// are f32 on the host whatever the storage: writes round to nearest even, reads widen exactly.
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
    /// The standalone clipping passes, built on first use.
    pub(crate) clip: Mutex<Option<Clipper>>,
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

    #[doc(hidden)]
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

    #[doc(hidden)]
    /// [`Params::zeros`] with a chunk size cap, as in [`Params::with_max_chunk_bytes`].
    pub fn zeros_with_max_chunk_bytes(
        gpu: &Gpu,
        tensors: &[(&str, usize)],
        max_chunk_bytes: u64,
    ) -> Result<Params> {
        let shapes: Vec<[usize; 1]> = tensors.iter().map(|t| [t.1]).collect();
        let specs: Vec<(&str, &[usize], DType)> = tensors
            .iter()
            .zip(&shapes)
            .map(|(t, s)| (t.0, &s[..], DType::F32))
            .collect();
        Self::alloc(gpu, &specs, max_chunk_bytes)
    }

    /// Shaped tensors of any dtype, one by one: see [`ParamsBuilder`].
    ///
    /// ```no_run
    /// use wgpu_optim::{DType, Gpu, Params};
    /// let gpu = Gpu::new()?;
    /// let params = Params::builder(&gpu)
    ///     .tensor("fc1.weight", &[256, 784], DType::Bf16)
    ///     .tensor_with_data("fc1.bias", &[256], DType::F32, &[0.0; 256])
    ///     .build()?;
    /// assert_eq!(params.shape("fc1.weight")?, &[256, 784]);
    /// assert_eq!(params.dtype("fc1.weight")?, DType::Bf16);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn builder(gpu: &Gpu) -> ParamsBuilder<'_> {
        ParamsBuilder {
            gpu,
            tensors: Vec::new(),
            max_chunk_bytes: u64::MAX,
        }
    }

    /// Zero-filled arena of `specs` (name, shape, dtype), chunks no larger than
    /// `max_chunk_bytes` or the device's largest storage binding.
    fn alloc(gpu: &Gpu, specs: &[(&str, &[usize], DType)], max_chunk_bytes: u64) -> Result<Params> {
        let cap_bytes = gpu.max_binding_bytes().min(max_chunk_bytes);
        // A chunk's element count is the same in every dtype, so that f32 state and master
        // copies of a 16-bit chunk fit a binding too.
        let cap = (cap_bytes / 4) as usize / CHUNK_ALIGN * CHUNK_ALIGN;
        if cap == 0 {
            return Err(Error::DeviceLimit(format!(
                "a chunk must hold at least {CHUNK_ALIGN} elements; got a cap of {cap_bytes} bytes"
            )));
        }
        let mut lens = Vec::with_capacity(specs.len());
        for &(name, shape, _) in specs {
            lens.push(crate::arena::elements(name, shape)?);
        }
        // An arena no device can hold is an error before anything is packed or allocated: more
        // elements than fit the address space, or more than MAX_CHUNKS of the largest binding.
        let total = lens.iter().try_fold(0usize, |acc, &n| {
            acc.checked_add(n.checked_next_multiple_of(2 * TENSOR_ALIGN)?)
        });
        match total {
            Some(t) if t / cap < MAX_CHUNKS => {}
            _ => {
                return Err(Error::DeviceLimit(format!(
                    "the tensors need more than {MAX_CHUNKS} buffers of {cap_bytes} bytes (the \
                     device's largest storage binding); no device holds that"
                )))
            }
        }
        let layout = Layout::pack(specs, cap)?;
        let make = |label| -> Vec<wgpu::Buffer> {
            (0..layout.chunk_lens.len())
                .map(|c| arena_buffer(gpu, label, layout.chunk_bytes(c, layout.chunk_dtypes[c])))
                .collect()
        };
        // Out of memory (or a lost device) is an error here, with nothing kept.
        let (param_bufs, grad_bufs) =
            gpu.scoped(|| Ok((make("wgpu-optim params"), make("wgpu-optim grads"))))?;
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
    ///
    /// Errors: [`Error::Empty`] / [`Error::DuplicateName`] for bad names or a zero length,
    /// [`Error::InvalidShape`] for a length whose size in bytes overflows, [`Error::BufferUsage`]
    /// and [`Error::BufferSize`] for buffers that lack a usage or room, [`Error::DeviceLimit`]
    /// for a tensor larger than a storage binding, [`Error::ParamsMismatch`] for buffers of
    /// another device.
    pub fn from_buffers(
        gpu: &Gpu,
        tensors: &[(&str, &wgpu::Buffer, &wgpu::Buffer, usize)],
    ) -> Result<Params> {
        let shapes: Vec<[usize; 1]> = tensors.iter().map(|t| [t.3]).collect();
        let specs: Vec<(&str, &[usize], DType)> = tensors
            .iter()
            .zip(&shapes)
            .map(|(t, s)| (t.0, &s[..], DType::F32))
            .collect();
        // Validate names and lengths with the arena rules (empty, duplicate, zero length).
        Layout::pack(&specs, usize::MAX / 2)?;
        let need = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let mut slots = Vec::with_capacity(tensors.len());
        let mut index = HashMap::with_capacity(tensors.len());
        let mut chunk_lens = Vec::with_capacity(tensors.len());
        for (i, &(name, p, g, len)) in tensors.iter().enumerate() {
            let bytes = len
                .checked_next_multiple_of(4)
                .and_then(|n| n.checked_mul(4))
                .ok_or_else(|| Error::InvalidShape {
                    name: name.to_string(),
                    shape: vec![len],
                    reason: "its size in bytes overflows",
                })? as u64;
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
                shape: vec![len],
                dtype: DType::F32,
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
                chunk_dtypes: vec![DType::F32; chunk_lens.len()],
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

    /// The shape of a tensor (`[len]` for tensors given as flat slices; `[]` for a scalar).
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.layout.slot(name)?.shape)
    }

    /// The storage dtype of a tensor and its gradient.
    pub fn dtype(&self, name: &str) -> Result<DType> {
        Ok(self.layout.slot(name)?.dtype)
    }

    /// Bytes of GPU memory the parameters and gradients take, padding included.
    pub fn memory_bytes(&self) -> u64 {
        let l = &self.layout;
        2 * (0..l.chunk_lens.len())
            .map(|c| l.chunk_bytes(c, l.chunk_dtypes[c]))
            .sum::<u64>()
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

    /// Set every gradient to zero on the GPU: one `clear_buffer` per gradient chunk (a user's
    /// own buffer only over its tensor's range), one submit, nothing uploaded.
    ///
    /// No optimizer clears gradients: as in torch, they stay as they are after a step, so call
    /// this (or overwrite them in your backward pass) before the next accumulation.
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, Params};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::zeros(&gpu, &[("w", 3)])?;
    /// params.write_grad("w", &[1.0, 2.0, 3.0])?;
    /// params.zero_grad()?;
    /// assert_eq!(params.read_grad("w")?, vec![0.0; 3]);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn zero_grad(&mut self) -> Result<()> {
        self.gpu.scoped(|| {
            self.clear_grads();
            Ok(())
        })
    }

    fn clear_grads(&self) {
        let mut enc = self
            .gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim zero_grad"),
            });
        for (c, buf) in self.grad_bufs.iter().enumerate() {
            let size = self
                .borrowed
                .then(|| self.layout.chunk_bytes(c, self.layout.chunk_dtypes[c]));
            enc.clear_buffer(buf, 0, size);
        }
        self.gpu.queue().submit([enc.finish()]);
    }

    /// Overwrite a tensor's values (rounded to nearest even into a 16-bit tensor).
    pub fn write(&self, name: &str, data: &[f32]) -> Result<()> {
        self.write_to(&self.param_bufs, name, data)
    }

    /// Overwrite a tensor's gradient.
    pub fn write_grad(&self, name: &str, data: &[f32]) -> Result<()> {
        self.write_to(&self.grad_bufs, name, data)
    }

    /// Read a tensor's values back, widened to f32 from its storage dtype. Blocks until the GPU is
    /// done with earlier work ([`Params::read_async`] without the wait; in a browser, where
    /// nothing may block, this is an [`Error::WouldBlock`]).
    pub fn read(&self, name: &str) -> Result<Vec<f32>> {
        crate::gpu::block_on("Params::read", "Params::read_async", self.read_async(name))
    }

    /// Async form of [`Params::read`], on every target: the copy is submitted at once, the
    /// future resolves when the GPU has done it (natively it waits for the device when first
    /// polled; in a browser it yields to the page's event loop).
    ///
    /// ```no_run
    /// # async fn f(params: &wgpu_optim::Params) -> wgpu_optim::Result<()> {
    /// let w = params.read_async("w").await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_async(&self, name: &str) -> Result<Vec<f32>> {
        let slot = self.layout.slot(name)?;
        read_slot_async(&self.gpu, &self.param_bufs, slot, slot.dtype).await
    }

    /// Read a tensor's gradient back. Blocks ([`Params::read_grad_async`] without the wait).
    pub fn read_grad(&self, name: &str) -> Result<Vec<f32>> {
        crate::gpu::block_on(
            "Params::read_grad",
            "Params::read_grad_async",
            self.read_grad_async(name),
        )
    }

    /// Async form of [`Params::read_grad`], on every target.
    pub async fn read_grad_async(&self, name: &str) -> Result<Vec<f32>> {
        let slot = self.layout.slot(name)?;
        read_slot_async(&self.gpu, &self.grad_bufs, slot, slot.dtype).await
    }

    /// The tensor's parameter range, for binding in your own shaders (e.g. the forward pass).
    /// A 16-bit tensor's range is whole u32 words (two elements each, the first in the low half);
    /// with an odd length the last word's high half is padding.
    /// A tensor split across chunks (larger than the device's binding limit) is an
    /// [`Error::SplitTensor`]: bind its [`Params::pieces`] instead.
    pub fn binding(&self, name: &str) -> Result<wgpu::BufferBinding<'_>> {
        self.binding_in(&self.param_bufs, name)
    }

    /// The tensor's gradient range, for your backward kernel to write into.
    pub fn grad_binding(&self, name: &str) -> Result<wgpu::BufferBinding<'_>> {
        self.binding_in(&self.grad_bufs, name)
    }

    fn write_to(&self, bufs: &[wgpu::Buffer], name: &str, data: &[f32]) -> Result<()> {
        write_checked(&self.gpu, bufs, &self.layout, None, name, data)
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
                offset: (p.offset * slot.dtype.size()) as u64,
                size: NonZeroU64::new((p.len * slot.dtype.size()).next_multiple_of(4) as u64),
            }),
            _ => Err(Error::SplitTensor(name.to_string())),
        }
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
        // In a browser the scope answers only after the page yields: there the check cannot
        // be made synchronously, and a foreign buffer is reported by the first call using it.
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::ParamsMismatch(format!(
                "a buffer cannot be used on this device (is it from another device?): {e}"
            )));
        }
        #[cfg(target_arch = "wasm32")]
        drop(scope);
    }
    Ok(())
}

/// Gradient norm and clipping outside an optimizer, on the GPU.
impl Params {
    /// `torch.nn.utils.get_total_norm` over the gradients: the total norm of all of them
    /// together, computed on the GPU (the same passes as clipping), gradients untouched. Nothing
    /// is read back: the returned handle reads the norm when asked.
    ///
    /// `norm_type` is 1, 2 or `f32::INFINITY`; the norm is NaN or inf when a gradient is.
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, Params};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::zeros(&gpu, &[("w", 4)])?;
    /// params.write_grad("w", &[3.0, 0.0, 4.0, 0.0])?;
    /// assert_eq!(params.grad_norm(2.0)?.value()?, 5.0);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn grad_norm(&self, norm_type: f32) -> Result<GradNorm> {
        let norm = NormType::from_p(norm_type)?;
        let settings = NormSettings::step(None, false);
        self.grad_pass(Some(norm), settings, Rewrite::Keep)
    }

    /// `torch.nn.utils.clip_grad_norm_`: scale every gradient in place by
    /// `min(1, max_norm / (total_norm + 1e-6))`, with the total norm over all tensors computed on
    /// the GPU. Nothing is read back: the returned handle reads the norm when asked.
    ///
    /// `norm_type` is 1, 2 or `f32::INFINITY`. Unlike PyTorch (which multiplies by NaN), a
    /// non-finite norm leaves the gradients as they are; the handle reports it.
    pub fn clip_grad_norm(&mut self, max_norm: f32, norm_type: f32) -> Result<GradNorm> {
        check("max_norm", max_norm as f64, max_norm > 0.0, "must be > 0")?;
        let norm = NormType::from_p(norm_type)?;
        let settings = NormSettings::step(Some(max_norm), false);
        self.grad_pass(Some(norm), settings, Rewrite::Scale)
    }

    /// `torch.nn.utils.clip_grad_value_`: clamp every gradient to `[-clip, clip]` in place.
    pub fn clip_grad_value(&mut self, clip: f32) -> Result<()> {
        check("clip_value", clip as f64, clip >= 0.0, "must be >= 0")?;
        let settings = NormSettings {
            max_norm: clip,
            ..NormSettings::step(None, false)
        };
        self.grad_pass(None, settings, Rewrite::Clamp)?;
        Ok(())
    }

    /// Run the standalone passes with the cached [`Clipper`], (re)built for `norm`; `None`
    /// (clamping, which needs no norm) takes any cached one and builds L2 only when none is.
    fn grad_pass(
        &self,
        norm: Option<NormType>,
        settings: NormSettings,
        rewrite: Rewrite,
    ) -> Result<GradNorm> {
        let mut guard = self.clip.lock().unwrap_or_else(|e| e.into_inner());
        let cached = guard.as_ref().map(|c| c.norm());
        if cached.is_none() || norm.is_some_and(|n| Some(n) != cached) {
            *guard = Some(self.gpu.scoped(|| {
                Clipper::new(
                    &self.gpu,
                    &self.layout,
                    &self.grad_bufs,
                    self.borrowed,
                    norm.unwrap_or_default(),
                )
            })?);
        }
        let clipper = guard.as_ref().expect("the clipper was just built");
        self.gpu
            .scoped(|| Ok(clipper.run(&self.gpu, norm.is_some(), settings, rewrite)))
    }
}

/// One tensor a [`ParamsBuilder`] will make: name, shape, dtype, initial values.
type TensorSpec = (String, Vec<usize>, DType, Option<Vec<f32>>);

/// Builds a [`Params`] of shaped tensors of any [`DType`] ([`Params::builder`]). Everything is
/// validated in [`ParamsBuilder::build`] before any GPU memory is allocated.
#[derive(Debug)]
pub struct ParamsBuilder<'g> {
    gpu: &'g Gpu,
    tensors: Vec<TensorSpec>,
    max_chunk_bytes: u64,
}

impl ParamsBuilder<'_> {
    /// A zero-filled tensor of this shape (any rank; `&[]` is a scalar) and storage dtype.
    pub fn tensor(mut self, name: &str, shape: &[usize], dtype: DType) -> Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), dtype, None));
        self
    }

    /// A tensor with initial values (row-major, one per element; rounded to nearest even into a
    /// 16-bit dtype).
    pub fn tensor_with_data(
        mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        data: &[f32],
    ) -> Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), dtype, Some(data.to_vec())));
        self
    }

    #[doc(hidden)]
    /// Chunks no larger than this (for tests that want chunk boundaries without gigabytes).
    pub fn max_chunk_bytes(mut self, bytes: u64) -> Self {
        self.max_chunk_bytes = bytes;
        self
    }

    /// Allocate the arena and upload the given data; gradients start at zero.
    pub fn build(self) -> Result<Params> {
        for (name, shape, _, data) in &self.tensors {
            let n = crate::arena::elements(name, shape)?;
            if let Some(d) = data {
                if d.len() != n {
                    return Err(Error::LengthMismatch {
                        name: name.clone(),
                        expected: n,
                        got: d.len(),
                    });
                }
            }
        }
        let specs: Vec<(&str, &[usize], DType)> = self
            .tensors
            .iter()
            .map(|(n, s, d, _)| (n.as_str(), &s[..], *d))
            .collect();
        let params = Params::alloc(self.gpu, &specs, self.max_chunk_bytes)?;
        for (name, _, _, data) in &self.tensors {
            if let Some(d) = data {
                params.write(name, d)?;
            }
        }
        Ok(params)
    }
}
