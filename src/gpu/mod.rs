//! The device handle: adapter choice, limits, and a cache of compiled pipelines. Its error
//! scopes (`scope`), read-backs (`read`) and the probe of how it rounds (`probe`) have
//! modules of their own.

mod probe;
mod read;
mod scope;

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
}
