//! The device handle: adapter choice, limits, and a cache of compiled pipelines.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// The process's wgpu instances, made on first use: 0 for `WGPU_BACKEND`'s backends or else the
/// primary ones (Vulkan, Metal, DX12, browser WebGPU), 1 for the GL fallback. Every `Gpu` of a
/// tier shares one instance: wgpu ids are per instance, so only devices of one instance can be
/// told apart (see `Params::from_buffers`' device check).
fn instance(tier: usize) -> &'static wgpu::Instance {
    static INSTANCES: [std::sync::OnceLock<wgpu::Instance>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    INSTANCES[tier].get_or_init(|| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if wgpu::Backends::from_env().is_none() {
            desc.backends = if tier == 0 {
                wgpu::Backends::PRIMARY
            } else {
                wgpu::Backends::SECONDARY
            };
        }
        wgpu::Instance::new(desc)
    })
}

/// A wgpu device and queue with the adapter's real limits, cheap to clone.
///
/// ```no_run
/// let gpu = wgpu_optim::Gpu::new()?;
/// println!("{} on {:?}", gpu.info().name, gpu.info().backend);
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Inner>,
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    dispatch_dim: u32,
    /// Identity of the device behind this handle (wgpu's own `Device` equality compares ids
    /// that repeat across instances, so it cannot tell two devices apart).
    uid: u64,
    fma: std::sync::OnceLock<bool>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    /// Times this crate blocked until the GPU finished its work (see `blocking_waits`).
    waits: AtomicU64,
    /// Set when the device is lost (its lost callback, or an error that says so): every later
    /// call fails with `Error::DeviceLost` before touching it.
    lost: Arc<Mutex<Option<String>>>,
    /// In a browser, error scopes resolve later than the call that pushed them: the first error
    /// of a synchronous call lands here and is returned by the next call (see `Gpu::scoped`).
    deferred: Arc<Mutex<Option<String>>>,
}

/// Run `f` to completion on this thread, for the blocking forms of the async calls (`call`,
/// whose async form is `instead`). Native only: in a browser nothing may block, so there it is
/// an [`Error::WouldBlock`] naming the async form.
pub(crate) fn block_on<T>(
    call: &'static str,
    instead: &'static str,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (call, instead);
        pollster::block_on(f)
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(f);
        Err(Error::WouldBlock { call, instead })
    }
}

/// Cache key of a compiled pipeline: the shader and its specialisation constants.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub shader: &'static str,
    pub entry: &'static str,
    /// Which generated source of `shader` (e.g. the dtype combination of an update kernel).
    pub variant: u32,
    pub constants: Vec<(&'static str, u32)>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .finish()
    }
}

impl Gpu {
    /// Open the default adapter, blocking ([`Gpu::new_async`] without the wait; in a browser,
    /// where nothing may block, this is an [`Error::WouldBlock`]).
    ///
    /// Honours `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`), `WGPU_ADAPTER_NAME` (a
    /// case-insensitive substring of the adapter name) and `WGPU_POWER_PREF`, as wgpu's own
    /// helpers do, and requests the adapter's full limits (wgpu's defaults would cap one storage
    /// binding at 128 MiB).
    pub fn new() -> Result<Self> {
        block_on("Gpu::new", "Gpu::new_async", Self::new_async())
    }

    /// Async form of [`Gpu::new`], on every target. In a browser (wasm32) it asks
    /// `navigator.gpu` for an adapter ([`wgpu::Backends::BROWSER_WEBGPU`]); an
    /// [`Error::NoAdapter`] there means the browser has no WebGPU.
    ///
    /// ```no_run
    /// # async fn f() -> wgpu_optim::Result<()> {
    /// let gpu = wgpu_optim::Gpu::new_async().await?;
    /// # Ok(()) }
    /// ```
    pub async fn new_async() -> Result<Self> {
        // wgpu's GL backend is asked only when no Vulkan, Metal or DX12 adapter exists (or
        // WGPU_BACKEND asks for it), so a normal run does not start EGL and print its warnings.
        let tiers: &[usize] = match wgpu::Backends::from_env() {
            Some(_) => &[0],
            None if cfg!(target_arch = "wasm32") => &[0],
            None => &[0, 1],
        };
        let mut tried = Vec::new();
        let mut found = None;
        for &tier in tiers {
            let gl_only = tier == 1 || wgpu::Backends::from_env() == Some(wgpu::Backends::GL);
            let found_here = if gl_only {
                Self::gl_adapter(instance(tier))
            } else {
                Self::find_adapter(instance(tier)).await
            };
            match found_here {
                Ok(a) => {
                    found = Some(a);
                    break;
                }
                Err(why) => tried.push(why),
            }
        }
        let adapter = found.ok_or_else(|| Error::NoAdapter(tried.join("; ")))?;
        let info = adapter.get_info();
        let wanted =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-optim"),
                required_features: adapter.features() & wanted,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let gpu = Self::from_device(device, queue);
        // The device is ours: its lost callback marks it (a device from `from_device` keeps
        // its owner's callback; loss is then learned from the errors it reports).
        let lost = gpu.inner.lost.clone();
        gpu.device()
            .set_device_lost_callback(move |reason, message| {
                let mut l = lost.lock().unwrap_or_else(|e| e.into_inner());
                l.get_or_insert(format!("{reason:?}: {message}"));
            });
        Ok(gpu)
    }

    /// The GL adapter of the process: found once, then shared. Every GL adapter of an instance
    /// wraps the same EGL context, each behind a lock of its own, and looking adapters up makes
    /// that context current too, so two threads doing either at once make it current twice
    /// (wgpu-hal panics with `BadAccess`). Devices of one adapter share its lock, so every GL
    /// device of the process is made from this one (looked up under a lock of ours).
    #[cfg(not(target_arch = "wasm32"))]
    fn gl_adapter(instance: &wgpu::Instance) -> std::result::Result<wgpu::Adapter, String> {
        static GL: Mutex<Option<wgpu::Adapter>> = Mutex::new(None);
        let mut cached = GL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = &*cached {
            return Ok(a.clone());
        }
        // wgpu's native adapter lookup does not suspend; blocking here keeps the lock's guard
        // out of the async function.
        let adapter = pollster::block_on(Self::find_adapter(instance))?;
        if adapter.get_info().backend == wgpu::Backend::Gl {
            *cached = Some(adapter.clone());
        }
        Ok(adapter)
    }

    /// A browser has no GL tier (`new_async` does not ask for one there).
    #[cfg(target_arch = "wasm32")]
    fn gl_adapter(_instance: &wgpu::Instance) -> std::result::Result<wgpu::Adapter, String> {
        Err("no GL fallback in a browser".into())
    }

    /// The adapter `WGPU_ADAPTER_NAME` names, or the default one, of `instance`.
    async fn find_adapter(instance: &wgpu::Instance) -> std::result::Result<wgpu::Adapter, String> {
        match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(wanted) => {
                let wanted = wanted.to_lowercase();
                let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
                let mut names: Vec<String> = Vec::new();
                for a in &adapters {
                    let info = a.get_info();
                    let name = format!("{} ({:?})", info.name, info.backend);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&wanted))
                    .ok_or_else(|| format!("WGPU_ADAPTER_NAME={wanted} matches none of {names:?}"))
            }
            Err(_) => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Wrap a device and queue the caller already has (e.g. the one their model runs on).
    ///
    /// The limits used for chunking are the device's own, so request large
    /// `max_storage_buffer_binding_size`/`max_buffer_size` when you create it.
    ///
    /// The device must come from the same major version of wgpu as this crate's (wgpu 30): use
    /// the re-exported [`crate::wgpu`] to create it, so the types are the same.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let info = device.adapter_info();
        let limits = device.limits();
        Gpu {
            inner: Arc::new(Inner {
                device,
                queue,
                info,
                dispatch_dim: limits.max_compute_workgroups_per_dimension,
                uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
                fma: Default::default(),
                limits,
                pipelines: Mutex::new(HashMap::new()),
                waits: AtomicU64::new(0),
                lost: Default::default(),
                deferred: Default::default(),
            }),
        }
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter's name, backend, driver, ...
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    #[doc(hidden)]
    /// A handle on the same device whose dispatches use at most `cap` workgroups per grid
    /// dimension (at least 1, at most the device's limit). Grids beyond it go 2-D; this lets a
    /// test exercise the 2-D path without gigabytes of data.
    pub fn with_dispatch_dim_cap(&self, cap: u32) -> Gpu {
        let i = &self.inner;
        Gpu {
            inner: Arc::new(Inner {
                device: i.device.clone(),
                queue: i.queue.clone(),
                info: i.info.clone(),
                limits: i.limits.clone(),
                dispatch_dim: cap.clamp(1, i.limits.max_compute_workgroups_per_dimension),
                uid: i.uid,
                fma: i.fma.clone(),
                pipelines: Mutex::new(HashMap::new()),
                waits: AtomicU64::new(0),
                lost: i.lost.clone(),
                deferred: i.deferred.clone(),
            }),
        }
    }

    /// Most workgroups per dimension of one dispatch (the device's limit unless capped).
    pub fn dispatch_dim(&self) -> u32 {
        self.inner.dispatch_dim
    }

    /// Whether WGSL's `fma` is fused (one rounding) on this device, probed once with a tiny
    /// kernel. ATen's CPU and CUDA kernels fuse the multiply-adds of `add(alpha=)`, `addcmul`
    /// and `lerp`; so do our shaders, through `fma`, which a driver may still split (lavapipe
    /// does). [`crate::reference::set_fused_multiply_add`] makes the CPU reference round the
    /// same way, for bit-for-bit comparisons. Blocks the first time (in a browser, use
    /// [`Gpu::fused_multiply_add_async`]; until that has run this says `true`).
    pub fn fused_multiply_add(&self) -> bool {
        if let Some(&f) = self.inner.fma.get() {
            return f;
        }
        match block_on(
            "Gpu::fused_multiply_add",
            "Gpu::fused_multiply_add_async",
            self.probe_fma(),
        ) {
            Ok(f) => *self.inner.fma.get_or_init(|| f),
            // Not cached: the async form can still find out.
            Err(Error::WouldBlock { .. }) => true,
            Err(_) => *self.inner.fma.get_or_init(|| true),
        }
    }

    /// Async form of [`Gpu::fused_multiply_add`].
    pub async fn fused_multiply_add_async(&self) -> bool {
        if let Some(&f) = self.inner.fma.get() {
            return f;
        }
        let probed = self.probe_fma().await;
        *self.inner.fma.get_or_init(|| probed.unwrap_or(true))
    }

    async fn probe_fma(&self) -> Result<bool> {
        // fma(a, a, -c) with a = 1 + 2^-12, c = 1 + 2^-11: a*a = c + 2^-24, which an unfused
        // multiply rounds back to c (a tie to even), giving 0; a fused one gives 2^-24.
        let a = f32::from_bits(0x3F80_0800);
        let c = f32::from_bits(0x3F80_1000);
        let buf = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-optim fma probe"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue()
            .write_buffer(&buf, 0, bytemuck::cast_slice(&[a, -c, 0.0, 0.0]));
        let src = "@group(0) @binding(0) var<storage, read_write> v: array<f32>;\n\
                   @compute @workgroup_size(1) fn main() { v[2] = fma(v[0], v[0], v[1]); }";
        let module = self
            .device()
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("wgpu-optim fma probe"),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let pipeline = self
            .device()
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("wgpu-optim fma probe"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        let bg = self.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: buf.as_entire_binding(),
            }],
        });
        let mut enc = self.device().create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        self.queue().submit([enc.finish()]);
        Ok(self.read_pieces_async(&[(&buf, 8, 4)]).await?[0] != 0.0)
    }

    /// Whether GPU timestamp queries are available (used by the benchmarks).
    pub fn has_timestamps(&self) -> bool {
        self.device()
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Largest storage binding this crate will use, in bytes (a multiple of 256).
    pub fn max_binding_bytes(&self) -> u64 {
        let l = self.limits();
        l.max_storage_buffer_binding_size.min(l.max_buffer_size) / 256 * 256
    }

    /// Whether two handles share one device: clones of one [`Gpu`] do; each [`Gpu::new`] and
    /// [`Gpu::from_device`] call makes a new identity.
    pub fn same_device(&self, other: &Gpu) -> bool {
        self.inner.uid == other.inner.uid
    }

    /// How many times this crate blocked until the device finished its work (read-backs, and
    /// the rare waits documented on `Optimizer::step`). For tests that check that a call does
    /// not wait.
    #[doc(hidden)]
    pub fn blocking_waits(&self) -> u64 {
        self.inner.waits.load(Ordering::Relaxed)
    }

    /// `Err(DeviceLost)` once the device is known to be lost; in a browser also the error an
    /// earlier synchronous call's error scopes caught after it returned (once).
    pub(crate) fn check_alive(&self) -> Result<()> {
        if let Some(why) = &*self.inner.lost.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(Error::DeviceLost(why.clone()));
        }
        match self
            .inner
            .deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(text) => Err(Error::Gpu(text)),
            None => Ok(()),
        }
    }

    /// Push the error scopes of [`Gpu::scoped`] (internal errors outermost).
    fn push_scopes(&self) -> [wgpu::ErrorScopeGuard; 3] {
        let device = self.device();
        [
            device.push_error_scope(wgpu::ErrorFilter::Internal),
            device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            device.push_error_scope(wgpu::ErrorFilter::Validation),
        ]
    }

    /// Run `f` (GPU work of one of this crate's calls) inside wgpu error scopes, so that a
    /// validation, out-of-memory or internal error becomes an `Err` instead of reaching wgpu's
    /// default handler (which panics); a lost device is an [`Error::DeviceLost`] from then on.
    ///
    /// Natively the scopes answer at once. In a browser they answer after the page's thread
    /// returns to its event loop, so a synchronous call (a step, an upload) cannot wait for
    /// them: what they catch is returned as an [`Error::Gpu`] by the next call on this device.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let scopes = self.push_scopes();
        let out = f();
        // wgpu pops a scope at once; what it caught is told by a future (at once natively,
        // after the page yields in a browser).
        let pops: Vec<_> = scopes.into_iter().rev().map(|s| s.pop()).collect();
        #[cfg(not(target_arch = "wasm32"))]
        {
            let mut first = None;
            for pop in pops {
                if let Some(e) = pollster::block_on(pop) {
                    first.get_or_insert(e);
                }
            }
            self.scope_outcome(first, out)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let deferred = self.inner.deferred.clone();
            wasm_bindgen_futures::spawn_local(async move {
                for pop in pops {
                    if let Some(e) = pop.await {
                        let mut d = deferred.lock().unwrap_or_else(|e| e.into_inner());
                        d.get_or_insert(e.to_string());
                    }
                }
            });
            self.check_alive()?;
            out
        }
    }

    /// [`Gpu::scoped`] that waits for the scopes' answers, on every target.
    pub(crate) async fn scoped_async<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        let scopes = self.push_scopes();
        let out = f();
        let pops: Vec<_> = scopes.into_iter().rev().map(|s| s.pop()).collect();
        let mut first = None;
        for pop in pops {
            if let Some(e) = pop.await {
                first.get_or_insert(e);
            }
        }
        self.scope_outcome(first, out)
    }

    /// `out`, unless the error scopes caught `first` (or the device is lost).
    fn scope_outcome<T>(&self, first: Option<wgpu::Error>, out: Result<T>) -> Result<T> {
        if let Some(e) = first {
            let text = e.to_string();
            // A destroyed device reports its loss once its queue is idle: wait for that (an
            // error path), so that the error names the loss and later calls fail early.
            let _ = self.wait();
            if text.contains("lost") || text.contains("Lost") {
                let mut l = self.inner.lost.lock().unwrap_or_else(|e| e.into_inner());
                l.get_or_insert(text.clone());
            }
            self.check_alive()?;
            return Err(match e {
                wgpu::Error::OutOfMemory { .. } => {
                    Error::DeviceLimit(format!("the device is out of memory: {text}"))
                }
                _ => Error::Gpu(text),
            });
        }
        self.check_alive()?;
        out
    }

    /// Block until the device has finished all submitted work (counted in `blocking_waits`).
    /// In a browser the device is polled by the browser and this returns at once.
    pub(crate) fn wait(&self) -> Result<()> {
        self.inner.waits.fetch_add(1, Ordering::Relaxed);
        self.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::ReadBack(e.to_string()))
    }

    /// A compute pipeline for `source`, specialised by `override` constants (booleans as 0/1),
    /// compiled once per `key`.
    ///
    /// `trusted`: the shader only indexes in bounds (checked by construction on the host), so
    /// naga's runtime bounds checks are left out.
    pub(crate) fn pipeline(
        &self,
        key: PipelineKey,
        source: impl FnOnce() -> String,
        layout: &wgpu::PipelineLayout,
        trusted: bool,
    ) -> wgpu::ComputePipeline {
        let mut cache = self
            .inner
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&key) {
            return p.clone();
        }
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(key.shader),
            source: wgpu::ShaderSource::Wgsl(source().into()),
        };
        let module = if trusted {
            // SAFETY: every array access in our kernels is proven in bounds on the host: the
            // dispatch covers whole 256-vec4 blocks of buffers whose lengths are multiples of
            // 1024 elements and each thread's index is checked against the block count first.
            unsafe {
                self.device()
                    .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
            }
        } else {
            self.device().create_shader_module(desc)
        };
        let constants: Vec<(&str, f64)> =
            key.constants.iter().map(|&(n, v)| (n, v as f64)).collect();
        let pipeline = self
            .device()
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key.shader),
                layout: Some(layout),
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        cache.insert(key, pipeline.clone());
        pipeline
    }

    /// Read the first `len` f32 of any buffer with `COPY_SRC` usage. Blocks (in a browser, use
    /// [`Gpu::read_buffer_f32_async`]).
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
        if (len * 4) as u64 > buffer.size()
            || !buffer.usage().contains(wgpu::BufferUsages::COPY_SRC)
        {
            return Err(Error::BufferSize(format!(
                "cannot read {len} f32 from a buffer of {} bytes with usage {:?}",
                buffer.size(),
                buffer.usage()
            )));
        }
        self.read_pieces_async(&[(buffer, 0, (len * 4) as u64)])
            .await
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
pub(crate) const READ_BATCH_BYTES: u64 = 64 << 20;

/// Where a staging buffer's `map_async` outcome arrives.
type MapReceiver =
    futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;
