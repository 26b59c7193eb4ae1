//! The browser demo of wgpu-optim: the digits MLP of the examples (`examples/nn/`, its WGSL
//! forward and backward kernels) trained on WebGPU by the fused optimizers, plus the checks the
//! browser test runs (GPU against the CPU reference, clipping, skipped non-finite steps, async
//! read-backs, checkpoints as bytes) and the step-time benchmark.
//!
//! Built for `wasm32-unknown-unknown` and bound with `wasm-bindgen --target web` by `build.sh`;
//! `index.html` drives it. Nothing here blocks: every read-back is awaited.

#[path = "../../nn/mod.rs"]
mod nn;

pub mod bench;
pub mod checks;

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wgpu_optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, Gpu, Optimizer, Params, RmsProp, RmsPropConfig, Sgd,
    SgdConfig,
};

/// The optimizers the page offers, by the names its menu uses.
pub const OPTIMIZERS: [&str; 5] = ["adam", "adamw", "sgd", "rmsprop", "adagrad"];

/// The page's optimizer `name` for `params` (learning rates that suit the digits MLP), with
/// clipping by the global gradient norm at 1.0 when `clip`.
pub fn optimizer(
    name: &str,
    params: &Params,
    clip: bool,
) -> Result<Box<dyn Optimizer>, wgpu_optim::Error> {
    let mut opt: Box<dyn Optimizer> = match name {
        "adam" => Box::new(Adam::new(
            params,
            AdamConfig {
                lr: 3e-3,
                ..Default::default()
            },
        )?),
        "adamw" => Box::new(Adam::new(
            params,
            AdamConfig {
                lr: 3e-3,
                ..AdamConfig::adamw()
            },
        )?),
        "sgd" => Box::new(Sgd::new(
            params,
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                ..Default::default()
            },
        )?),
        "rmsprop" => Box::new(RmsProp::new(
            params,
            RmsPropConfig {
                lr: 1e-3,
                ..Default::default()
            },
        )?),
        "adagrad" => Box::new(Adagrad::new(
            params,
            AdagradConfig {
                lr: 0.05,
                ..Default::default()
            },
        )?),
        other => {
            return Err(wgpu_optim::Error::InvalidOptions(format!(
                "unknown optimizer `{other}`; the page offers {OPTIMIZERS:?}"
            )))
        }
    };
    if clip {
        opt.set_max_grad_norm(Some(1.0))?;
    }
    Ok(opt)
}

fn js(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Milliseconds from the page's clock (`performance.now()`).
pub fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

/// One training run: the network, its optimizer and where it is in the epoch.
struct Run {
    gpu: Gpu,
    net: nn::Mlp,
    opt: Box<dyn Optimizer>,
    rng: StdRng,
    /// The page's name of the optimizer, and whether it clips.
    kind: String,
    clip: bool,
    /// The next batch of the current epoch.
    batch: usize,
    iterations: u64,
}

/// A training run the page drives: `train` records and submits work without waiting, the
/// `*_async` reads resolve when the GPU has answered.
#[wasm_bindgen]
pub struct Demo {
    run: Rc<RefCell<Run>>,
    adapter: String,
}

/// "busy" instead of a panic when the page calls in while a read-back holds the run.
fn busy() -> JsError {
    JsError::new("the run is busy with a read-back: await the previous call first")
}

// The read-backs hold a shared borrow of the run across their await on purpose: it keeps
// `train` (a mutable borrow, tried, never forced) from changing the run under them, and a page
// that calls in meanwhile gets "busy" instead of a panic.
#[allow(clippy::await_holding_refcell_ref)]
#[wasm_bindgen]
impl Demo {
    /// Open the browser's WebGPU adapter and build the 64-64-10 MLP on the digits (80% train,
    /// 20% test, shuffled with `seed`) with optimizer `name` (`adam`, `adamw`, `sgd` (momentum
    /// 0.9), `rmsprop`, `adagrad`), clipped at global norm 1.0 when `clip`.
    pub async fn create(name: String, clip: bool, seed: u32) -> Result<Demo, JsError> {
        let gpu = Gpu::new_async().await.map_err(js)?;
        let info = gpu.info();
        let adapter = format!(
            "{} ({:?}{}{})",
            if info.name.is_empty() {
                "WebGPU adapter"
            } else {
                &info.name
            },
            info.backend,
            if info.driver.is_empty() { "" } else { ", " },
            info.driver
        );
        let mut rng = StdRng::seed_from_u64(seed as u64);
        let ((train_x, train_y), (test_x, test_y)) = nn::digits_split(&mut rng);
        let net = nn::Mlp::new(
            &gpu,
            &[64, 64, 10],
            nn::Loss::SoftmaxXent,
            (&train_x, &train_y),
            (&test_x, &test_y),
            64,
            &mut rng,
        )
        .map_err(js)?;
        let opt = optimizer(&name, &net.params, clip).map_err(js)?;
        Ok(Demo {
            run: Rc::new(RefCell::new(Run {
                gpu,
                net,
                opt,
                rng,
                kind: name,
                clip,
                batch: usize::MAX,
                iterations: 0,
            })),
            adapter,
        })
    }

    /// The adapter's name and backend, e.g. `... (BrowserWebGpu)`.
    pub fn adapter(&self) -> String {
        self.adapter.clone()
    }

    /// Parameters of the network.
    pub fn parameters(&self) -> Result<u32, JsError> {
        let run = self.run.try_borrow().map_err(|_| busy())?;
        Ok(run.net.params.total_len() as u32)
    }

    /// Record and submit `n` training iterations (forward, loss, backward, one fused optimizer
    /// step each; a new shuffle every epoch). Does not wait for the GPU.
    pub fn train(&self, n: u32) -> Result<(), JsError> {
        let mut guard = self.run.try_borrow_mut().map_err(|_| busy())?;
        let run = &mut *guard;
        for _ in 0..n {
            if run.batch >= run.net.batches_per_epoch() {
                run.net.shuffle(&mut run.rng);
                run.batch = 0;
            }
            run.net.forward_backward(run.batch);
            run.opt.step(&mut run.net.params).map_err(js)?;
            run.batch += 1;
            run.iterations += 1;
        }
        Ok(())
    }

    /// Iterations submitted so far.
    pub fn iterations(&self) -> Result<f64, JsError> {
        Ok(self.run.try_borrow().map_err(|_| busy())?.iterations as f64)
    }

    /// `[mean training loss, accuracy]` of the iterations since the last call (one read-back;
    /// resolves when the GPU has done them).
    pub fn stats(&self) -> js_sys::Promise {
        let run = self.run.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let run = run.try_borrow().map_err(|_| busy())?;
            let (loss, acc) = run.net.take_train_stats_async().await.map_err(js)?;
            Ok(js_sys::Float32Array::from(&[loss, acc][..]).into())
        })
    }

    /// `[test loss, test accuracy]`: one forward pass over the held-out fifth.
    pub fn evaluate(&self) -> js_sys::Promise {
        let run = self.run.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let run = run.try_borrow().map_err(|_| busy())?;
            let (loss, acc) = run.net.evaluate_async().await.map_err(js)?;
            Ok(js_sys::Float32Array::from(&[loss, acc][..]).into())
        })
    }

    /// The optimizer's step count and, with clipping, the last step's global gradient norm
    /// (NaN without): `[steps, norm]`, read back asynchronously.
    pub fn optimizer_stats(&self) -> js_sys::Promise {
        let run = self.run.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let run = run.try_borrow().map_err(|_| busy())?;
            let steps = run.opt.step_count_async().await.map_err(js)?;
            let norm = match run.clip {
                true => run.opt.last_grad_norm_async().await.map_err(js)? as f64,
                false => f64::NAN,
            };
            Ok(js_sys::Float64Array::from(&[steps as f64, norm][..]).into())
        })
    }

    /// Milliseconds per fused optimizer step on tensors shaped as this network's (a separate
    /// parameter set with random gradients, so training is not disturbed): `steps` steps
    /// submitted back to back, then one read-back that waits for them, divided by `steps`.
    pub fn step_time(&self, steps: u32) -> js_sys::Promise {
        let run = self.run.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (gpu, name, clip, shapes) = {
                let run = run.try_borrow().map_err(|_| busy())?;
                let shapes: Vec<(String, Vec<usize>)> = run
                    .net
                    .params
                    .names()
                    .into_iter()
                    .map(|n| {
                        (
                            n.to_string(),
                            run.net.params.shape(n).unwrap_or(&[]).to_vec(),
                        )
                    })
                    .collect();
                (run.gpu.clone(), run.kind.clone(), run.clip, shapes)
            };
            let ms = bench::step_time(&gpu, &name, &shapes, clip, steps, now_ms)
                .await
                .map_err(js)?;
            Ok(JsValue::from_f64(ms))
        })
    }

    /// A checkpoint of the run as bytes (safetensors with checksums), saved asynchronously.
    pub fn checkpoint(&self) -> js_sys::Promise {
        let run = self.run.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let run = run.try_borrow().map_err(|_| busy())?;
            let bytes = wgpu_optim::checkpoint::save_to_bytes_async(
                &run.net.params,
                &*run.opt,
                Default::default(),
            )
            .await
            .map_err(js)?;
            Ok(js_sys::Uint8Array::from(&bytes[..]).into())
        })
    }
}

/// The checks of `checks.rs` on a fresh device: a JSON list of `{name, ok, detail}`.
#[wasm_bindgen]
pub async fn self_test() -> Result<String, JsError> {
    let gpu = Gpu::new_async().await.map_err(js)?;
    let results = checks::run_all(&gpu).await;
    serde_json::to_string(&results).map_err(js)
}

/// Milliseconds per fused step of optimizer `kind` on one tensor of `elements` elements
/// (`clip`: with clipping at global norm 1.0), over `steps` steps submitted back to back and
/// one read-back at the end.
#[wasm_bindgen]
pub async fn bench_step(
    kind: String,
    elements: u32,
    clip: bool,
    steps: u32,
) -> Result<f64, JsError> {
    let gpu = Gpu::new_async().await.map_err(js)?;
    let shapes = vec![("w".to_string(), vec![elements as usize])];
    bench::step_time(&gpu, &kind, &shapes, clip, steps, now_ms)
        .await
        .map_err(js)
}

/// Whether this browser exposes WebGPU at all (`navigator.gpu`), before any adapter request.
#[wasm_bindgen]
pub fn has_webgpu() -> bool {
    let get = |o: &JsValue, key: &str| js_sys::Reflect::get(o, &JsValue::from_str(key)).ok();
    let navigator = get(&js_sys::global().into(), "navigator");
    matches!(navigator.and_then(|n| get(&n, "gpu")), Some(g) if !g.is_undefined() && !g.is_null())
}
