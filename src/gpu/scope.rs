//! Error scopes around the crate's GPU work, a lost device, and the blocking wait.

use super::Gpu;
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;

impl Gpu {
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
}
