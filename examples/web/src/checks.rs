//! What the browser test asserts inside the page, through the async API only: every optimizer
//! against the CPU reference (`wgpu_optim::reference`) on small tensors of awkward sizes,
//! clipping by the global norm, a skipped step with a NaN gradient, 8-bit state code for code,
//! async read-backs, and a checkpoint saved to bytes and loaded back.
//!
//! Each check gives `{name, ok, detail}`; a check that cannot run (an `Err`) fails.

use ndarray::Array1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use wgpu_optim::reference::{self, State};
use wgpu_optim::{
    checkpoint, AdadeltaConfig, AdagradConfig, AdamConfig, AdamaxConfig, AsgdConfig,
    FusedOptimizer, Gpu, LambConfig, LionConfig, NAdamConfig, NormType, Optimizer, OptimizerConfig,
    Params, RAdamConfig, RmsPropConfig, RpropConfig, ScheduleFreeAdamWConfig, SgdConfig,
    StateFormat,
};

type Error = wgpu_optim::Error;

/// Tensor lengths: not multiples of 4, 64 or 256 (padding and partial workgroups).
const LENS: [usize; 3] = [5, 1000, 4099];
/// Steps of each optimizer run.
const STEPS: usize = 4;
/// The bound held against the reference off lavapipe, as the native suite holds it: WGSL
/// allows 2.5 ULP on f32 division and promises no correctly rounded sqrt.
const ATOL: f32 = 1e-6;
const RTOL: f32 = 2e-5;

fn check(name: &str, result: Result<String, String>) -> Value {
    match result {
        Ok(detail) => json!({"name": name, "ok": true, "detail": detail}),
        Err(detail) => json!({"name": name, "ok": false, "detail": detail}),
    }
}

/// The largest error of `got` against `want` and whether every element is within the bound.
fn compare(what: &str, got: &[f32], want: &[f32]) -> Result<f32, String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, expected {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        if err.is_nan() || err > ATOL + RTOL * w.abs() {
            return Err(format!("{what}[{i}] = {g}, the reference says {w}"));
        }
        worst = worst.max(err);
    }
    Ok(worst)
}

fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// The tensors of the checks, one per length of [`LENS`].
const NAMES: [&str; 3] = ["a", "b", "c"];

/// Parameters [`NAMES`] of [`LENS`] elements with random values, and those values.
fn random_params(gpu: &Gpu, rng: &mut StdRng) -> Result<(Params, Vec<Vec<f32>>), String> {
    let init: Vec<Vec<f32>> = LENS.iter().map(|&n| random(rng, n, 1.0)).collect();
    let tensors: Vec<(&str, &[f32])> = NAMES
        .iter()
        .copied()
        .zip(init.iter().map(|v| &v[..]))
        .collect();
    let params = Params::new(gpu, &tensors).map_err(|e| e.to_string())?;
    Ok((params, init))
}

/// `STEPS` steps of `cfg` on the GPU and in the reference, with the same random gradients
/// (`clip`: clipped by the global L2 norm; `nan_at`: the step whose gradient holds a NaN and
/// must be skipped), then params and every state tensor compared, read with the async API.
async fn vs_reference<C: OptimizerConfig>(
    gpu: &Gpu,
    cfg: C,
    step_ref: fn(&C, &mut Array1<f32>, &Array1<f32>, &mut State),
    clip: Option<f32>,
    nan_at: Option<usize>,
    seed: u64,
) -> Result<String, String> {
    let e = |e: Error| e.to_string();
    let mut rng = StdRng::seed_from_u64(seed);
    let names = NAMES;
    let (mut params, init) = random_params(gpu, &mut rng)?;
    let mut opt = FusedOptimizer::<C>::new(&params, cfg.clone()).map_err(e)?;
    opt.set_max_grad_norm(clip).map_err(e)?;
    if nan_at.is_some() {
        opt.set_skip_nonfinite(true).map_err(e)?;
    }
    let mut cpu: Vec<(Array1<f32>, State)> = init
        .iter()
        .map(|v| (Array1::from(v.clone()), State::new(&cfg, v.len())))
        .collect();
    let mut clipped = 0;
    let mut skipped = 0;
    for s in 0..STEPS {
        let mut grads: Vec<Vec<f32>> = LENS.iter().map(|&n| random(&mut rng, n, 2.0)).collect();
        if nan_at == Some(s) {
            grads[1][7] = f32::NAN;
        }
        for (n, g) in names.iter().zip(&grads) {
            params.write_grad(n, g).map_err(e)?;
        }
        let before = if nan_at == Some(s) {
            Some(params.read_async("b").await.map_err(e)?)
        } else {
            None
        };
        opt.step(&mut params).map_err(e)?;
        if let Some(before) = before {
            if !opt.last_step_skipped_async().await.map_err(e)? {
                return Err(format!("step {s} had a NaN gradient and was not skipped"));
            }
            if params.read_async("b").await.map_err(e)? != before {
                return Err(format!("the skipped step {s} changed the parameters"));
            }
            if opt.last_grad_norm_async().await.map_err(e)?.is_finite() {
                return Err(format!("step {s}: a NaN gradient gave a finite norm"));
            }
            skipped += 1;
            continue;
        }
        let mut coef = 1.0f32;
        if let Some(max_norm) = clip {
            let gpu_norm = opt.last_grad_norm_async().await.map_err(e)?;
            let arrays: Vec<Array1<f32>> = grads.iter().map(|g| Array1::from(g.clone())).collect();
            let refs: Vec<&Array1<f32>> = arrays.iter().collect();
            let want = reference::grad_norm(&refs, NormType::L2, 1.0)
                .ok_or("the reference norm is not finite")?;
            if ((gpu_norm as f64 - want) / want).abs() > 1e-5 {
                return Err(format!(
                    "step {s}: norm {gpu_norm}, the reference says {want}"
                ));
            }
            coef = reference::clip_coef(gpu_norm, max_norm);
            clipped += (coef < 1.0) as usize;
        }
        for ((p, state), g) in cpu.iter_mut().zip(&grads) {
            let g = Array1::from(g.iter().map(|x| x * coef).collect::<Vec<f32>>());
            step_ref(&cfg, p, &g, state);
        }
    }
    let mut worst = 0.0f32;
    for (i, n) in names.iter().enumerate() {
        let got = params.read_async(n).await.map_err(e)?;
        worst = worst.max(compare(
            &format!("param {n}"),
            &got,
            cpu[i].0.as_slice().unwrap(),
        )?);
        for key in opt.state_keys() {
            let got = opt.state_async(key, n).await.map_err(e)?;
            let want = cpu[i]
                .1
                .get(key)
                .ok_or(format!("the reference keeps no `{key}`"))?;
            worst = worst.max(compare(
                &format!("{key} of {n}"),
                &got,
                want.as_slice().unwrap(),
            )?);
        }
    }
    let steps = opt.step_count_async().await.map_err(e)?;
    if steps != (STEPS - skipped) as u64 {
        return Err(format!(
            "step count {steps} after {STEPS} steps, {skipped} skipped"
        ));
    }
    Ok(format!(
        "{STEPS} steps on {LENS:?} elements, {} state tensors; largest error {worst:e}{}{}",
        opt.state_keys().len(),
        if clip.is_some() {
            format!(", {clipped} steps clipped")
        } else {
            String::new()
        },
        if skipped > 0 {
            format!(", {skipped} skipped")
        } else {
            String::new()
        },
    ))
}

/// AdamW with 8-bit state (min_size 1000: the 5-element tensor keeps f32 state) for `STEPS`
/// steps against the reference requantized after each step (`reference::requantize`): codes,
/// absmax and params. A code may differ by one only where the value sits on a midpoint; such
/// codes are counted and must be rare.
async fn blockwise_vs_reference(gpu: &Gpu) -> Result<String, String> {
    let e = |e: Error| e.to_string();
    let cfg = AdamConfig {
        lr: 1e-2,
        ..AdamConfig::adamw()
    };
    let mut rng = StdRng::seed_from_u64(14);
    let names = NAMES;
    let (mut params, init) = random_params(gpu, &mut rng)?;
    let mut opt = FusedOptimizer::new(&params, cfg.clone()).map_err(e)?;
    let format = StateFormat::Blockwise8 { min_size: 1000 };
    opt.set_state_format(format).map_err(e)?;
    let mut cpu: Vec<(Array1<f32>, State)> = init
        .iter()
        .map(|v| (Array1::from(v.clone()), State::new(&cfg, v.len())))
        .collect();
    let mut last = Vec::new();
    for _ in 0..STEPS {
        let grads: Vec<Vec<f32>> = LENS.iter().map(|&n| random(&mut rng, n, 2.0)).collect();
        for (n, g) in names.iter().zip(&grads) {
            params.write_grad(n, g).map_err(e)?;
        }
        opt.step(&mut params).map_err(e)?;
        last.clear();
        for ((p, state), g) in cpu.iter_mut().zip(&grads) {
            reference::adam(&cfg, p, &Array1::from(g.clone()), state);
            let q = if format.quantizes(p.len()) {
                reference::requantize(&cfg, state).map_err(e)?
            } else {
                Vec::new()
            };
            last.push(q);
        }
    }
    let (mut codes, mut midpoint, mut worst) = (0usize, 0usize, 0.0f32);
    for (i, n) in names.iter().enumerate() {
        let got = params.read_async(n).await.map_err(e)?;
        worst = worst.max(compare(
            &format!("param {n}"),
            &got,
            cpu[i].0.as_slice().unwrap(),
        )?);
        for (key, want, before) in &last[i] {
            let got = opt
                .quantized_state_async(key, n)
                .await
                .map_err(e)?
                .ok_or(format!("{key} of {n} is not 8-bit"))?;
            compare(
                &format!("absmax of {key} of {n}"),
                &got.absmax,
                &want.absmax,
            )?;
            for (j, (&a, &b)) in got.codes.iter().zip(&want.codes).enumerate() {
                codes += 1;
                if a == b {
                    continue;
                }
                let x = before[j] / want.absmax[j / wgpu_optim::blockwise::BLOCK];
                let m = (want.map[a as usize] + want.map[b as usize]) / 2.0;
                if a.abs_diff(b) != 1 || (x - m).abs() > 4.0 * f32::EPSILON * m.abs() {
                    return Err(format!(
                        "{key} of {n}: code {j} is {a}, the reference has {b}"
                    ));
                }
                midpoint += 1;
            }
        }
    }
    if midpoint * 1000 > codes {
        return Err(format!("{midpoint} of {codes} codes differ at a midpoint"));
    }
    Ok(format!(
        "{STEPS} steps on {LENS:?} elements: {codes} codes, {midpoint} at a midpoint; params \
         within {worst:e}; {} bytes of state",
        opt.state_memory_bytes()
    ))
}

/// AdamW for `STEPS` steps with f32 state, then converted to 8-bit state: the blocking
/// `set_state_format` is a `WouldBlock` naming its async form and changes nothing; the async
/// form quantizes each state exactly as the host does (`blockwise::quantize`), and the
/// optimizer steps on; `set_quant_map_async` requantizes, and back to dense gives the values
/// the codes hold.
async fn converting_after_steps(gpu: &Gpu) -> Result<String, String> {
    let e = |e: Error| e.to_string();
    let mut rng = StdRng::seed_from_u64(15);
    let names = NAMES;
    let (mut params, _) = random_params(gpu, &mut rng)?;
    let mut opt = FusedOptimizer::new(&params, AdamConfig::adamw()).map_err(e)?;
    let step = |params: &mut Params, opt: &mut FusedOptimizer<AdamConfig>, rng: &mut StdRng| {
        for (n, &len) in names.iter().zip(&LENS) {
            params.write_grad(n, &random(rng, len, 2.0)).map_err(e)?;
        }
        opt.step(params).map_err(e)
    };
    for _ in 0..STEPS {
        step(&mut params, &mut opt, &mut rng)?;
    }
    let format = StateFormat::Blockwise8 { min_size: 1000 };
    match opt.set_state_format(format) {
        Err(Error::WouldBlock { instead, .. }) if instead == "set_state_format_async" => {}
        other => return Err(format!("set_state_format after steps gave {other:?}")),
    }
    if opt.state_format() != StateFormat::Dense {
        return Err("the refused conversion changed the format".into());
    }
    let mut dense = Vec::new();
    for key in ["exp_avg", "exp_avg_sq"] {
        for n in names {
            dense.push((key, n, opt.state_async(key, n).await.map_err(e)?));
        }
    }
    opt.set_state_format_async(format).await.map_err(e)?;
    let mut quantized = 0;
    for (key, n, values) in &dense {
        match opt.quantized_state_async(key, n).await.map_err(e)? {
            Some(q) => {
                let (codes, absmax) = wgpu_optim::blockwise::quantize(&q.map, values);
                if (q.codes, q.absmax) != (codes, absmax) {
                    return Err(format!("{key} of {n}: codes differ from the host's"));
                }
                quantized += 1;
            }
            None if values.len() < 1000 => {
                if opt.state_async(key, n).await.map_err(e)? != *values {
                    return Err(format!("{key} of {n}: the f32 state changed"));
                }
            }
            None => return Err(format!("{key} of {n} is not 8-bit")),
        }
    }
    step(&mut params, &mut opt, &mut rng)?;
    opt.set_quant_map_async("exp_avg_sq", wgpu_optim::QuantMap::Signed)
        .await
        .map_err(e)?;
    let q = opt
        .quantized_state_async("exp_avg_sq", "c")
        .await
        .map_err(e)?
        .ok_or("exp_avg_sq of c is not 8-bit")?;
    opt.set_state_format_async(StateFormat::Dense)
        .await
        .map_err(e)?;
    let back = opt.state_async("exp_avg_sq", "c").await.map_err(e)?;
    if back != wgpu_optim::blockwise::dequantize(&q.map, &q.codes, &q.absmax).map_err(e)? {
        return Err("back to dense: not the values the codes held".into());
    }
    Ok(format!(
        "after {STEPS} steps: {quantized} states quantized as the host does; blocking form \
         refused; requantized and back to dense"
    ))
}

/// Params written, read back asynchronously: exactly the values written.
async fn async_reads(gpu: &Gpu) -> Result<String, String> {
    let e = |e: Error| e.to_string();
    let mut rng = StdRng::seed_from_u64(1);
    let v = random(&mut rng, 4099, 3.0);
    let g = random(&mut rng, 4099, 3.0);
    let params = Params::new(gpu, &[("w", &v[..])]).map_err(e)?;
    params.write_grad("w", &g).map_err(e)?;
    let (rv, rg) = (
        params.read_async("w").await.map_err(e)?,
        params.read_grad_async("w").await.map_err(e)?,
    );
    if rv != v || rg != g {
        return Err("read_async / read_grad_async differ from what was written".into());
    }
    // The blocking form says what to use instead, and does not panic.
    match params.read("w") {
        Err(Error::WouldBlock { instead, .. }) => Ok(format!(
            "4099 values and gradients bit for bit; Params::read says: use {instead}"
        )),
        other => Err(format!("Params::read in a browser gave {other:?}")),
    }
}

/// AdamW with clipping, 3 steps, saved to bytes, loaded into a fresh set and optimizer: same
/// params, state and step count; one more step on each gives the same bits.
async fn checkpoint_bytes(gpu: &Gpu) -> Result<String, String> {
    let e = |e: Error| e.to_string();
    let mut rng = StdRng::seed_from_u64(2);
    let w = random(&mut rng, 1000, 1.0);
    let b = random(&mut rng, 5, 1.0);
    let cfg = AdamConfig {
        lr: 1e-2,
        ..AdamConfig::adamw()
    };
    let mut p1 = Params::new(gpu, &[("w", &w[..]), ("b", &b[..])]).map_err(e)?;
    let mut o1 = FusedOptimizer::<AdamConfig>::new(&p1, cfg.clone()).map_err(e)?;
    o1.set_max_grad_norm(Some(1.0)).map_err(e)?;
    let grads = |rng: &mut StdRng| (random(rng, 1000, 1.0), random(rng, 5, 1.0));
    for _ in 0..3 {
        let (gw, gb) = grads(&mut rng);
        p1.write_grad("w", &gw).map_err(e)?;
        p1.write_grad("b", &gb).map_err(e)?;
        o1.step(&mut p1).map_err(e)?;
    }
    let bytes = checkpoint::save_to_bytes_async(&p1, &o1, Default::default())
        .await
        .map_err(e)?;
    let ck = checkpoint::Checkpoint::from_bytes(bytes.clone()).map_err(e)?;
    if !ck.verified() || ck.step_count() != 3 || ck.optimizer() != "Adam" {
        return Err(format!(
            "the bytes say {} at step {}, verified {}",
            ck.optimizer(),
            ck.step_count(),
            ck.verified()
        ));
    }
    let mut p2 = Params::zeros(gpu, &[("w", 1000), ("b", 5)]).map_err(e)?;
    let mut o2 = FusedOptimizer::<AdamConfig>::new(&p2, cfg).map_err(e)?;
    o2.set_max_grad_norm(Some(1.0)).map_err(e)?;
    let report = checkpoint::load_from_bytes(&bytes, &mut p2, &mut o2).map_err(e)?;
    for n in ["w", "b"] {
        if p1.read_async(n).await.map_err(e)? != p2.read_async(n).await.map_err(e)? {
            return Err(format!("param {n} differs after loading"));
        }
        for key in o1.state_keys() {
            if o1.state_async(key, n).await.map_err(e)?
                != o2.state_async(key, n).await.map_err(e)?
            {
                return Err(format!("{key} of {n} differs after loading"));
            }
        }
    }
    if o2.step_count_async().await.map_err(e)? != 3 {
        return Err("the loaded optimizer's step count is not 3".into());
    }
    let (gw, gb) = grads(&mut rng);
    for (p, o) in [(&mut p1, &mut o1), (&mut p2, &mut o2)] {
        p.write_grad("w", &gw).map_err(e)?;
        p.write_grad("b", &gb).map_err(e)?;
        o.step(p).map_err(e)?;
    }
    if p1.read_async("w").await.map_err(e)? != p2.read_async("w").await.map_err(e)? {
        return Err("the step after loading differs from the uninterrupted one".into());
    }
    // A damaged byte is refused with a typed error, not a panic.
    let mut bad = bytes.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    let refused = match checkpoint::load_from_bytes(&bad, &mut p2, &mut o2) {
        Err(err @ (Error::CheckpointChecksum { .. } | Error::CheckpointFormat(_))) => err,
        other => return Err(format!("a flipped bit loaded: {other:?}")),
    };
    Ok(format!(
        "{} bytes, verified {}, resumed bit for bit; a flipped bit: {refused}",
        bytes.len(),
        report.verified
    ))
}

/// A wgpu error inside a synchronous call (a step on a destroyed buffer): in a browser its
/// error scopes answer only after the page yields, so the error comes back from a later call on
/// the device, as an `Error::Gpu`, never as a panic or a silent success.
async fn deferred_error(gpu: &Gpu) -> Result<String, String> {
    let e = |e: Error| e.to_string();
    let mut params = Params::new(gpu, &[("w", &[1.0f32; 64][..])]).map_err(e)?;
    let mut opt = FusedOptimizer::<SgdConfig>::new(&params, SgdConfig::default()).map_err(e)?;
    let fence = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("deferred error fence"),
        size: 16,
        usage: wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    params
        .param_buffer(0)
        .ok_or("no parameter buffer")?
        .destroy();
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let step = opt.step(&mut params);
        outcomes.push(format!("step: {step:?}"));
        if let Err(err @ Error::Gpu(_)) = step {
            return Ok(format!(
                "after {} calls, a step said: {err}",
                outcomes.len()
            ));
        }
        // Yield to the page so that the scopes answer: this read-back (the next call on the
        // device) may be the one that reports it.
        let read = gpu.read_buffer_f32_async(&fence, 1).await;
        outcomes.push(format!("read: {read:?}"));
        if let Err(err @ Error::Gpu(_)) = read {
            return Ok(format!(
                "after {} calls, a read-back said: {err}",
                outcomes.len()
            ));
        }
        sleep_ms(50).await;
    }
    Err(format!(
        "no Error::Gpu after a step on a destroyed buffer: {outcomes:?}"
    ))
}

/// Resolves after `ms` milliseconds of the page's event loop (a timer).
async fn sleep_ms(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

/// Every check, in order.
pub async fn run_all(gpu: &Gpu) -> Vec<Value> {
    let fused = gpu.fused_multiply_add_async().await;
    reference::set_fused_multiply_add(fused);
    let mut out = vec![json!({
        "name": "adapter",
        "ok": true,
        "detail": format!("{} ({:?}), fused fma: {fused}", gpu.info().name, gpu.info().backend),
    })];
    out.push(check("async reads", async_reads(gpu).await));
    macro_rules! row {
        ($name:expr, $cfg:expr, $f:path) => {
            out.push(check(
                $name,
                vs_reference(gpu, $cfg, $f, None, None, 10).await,
            ));
        };
    }
    row!(
        "Adam",
        AdamConfig {
            lr: 1e-2,
            ..Default::default()
        },
        reference::adam
    );
    row!(
        "AdamW",
        AdamConfig {
            lr: 1e-2,
            ..AdamConfig::adamw()
        },
        reference::adam
    );
    row!(
        "Adam amsgrad",
        AdamConfig {
            lr: 1e-2,
            amsgrad: true,
            ..Default::default()
        },
        reference::adam
    );
    row!(
        "SGD momentum",
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..Default::default()
        },
        reference::sgd
    );
    row!(
        "SGD nesterov",
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        },
        reference::sgd
    );
    row!(
        "RMSprop",
        RmsPropConfig {
            lr: 1e-2,
            ..Default::default()
        },
        reference::rmsprop
    );
    row!(
        "RMSprop centered momentum",
        RmsPropConfig {
            lr: 1e-2,
            centered: true,
            momentum: 0.9,
            ..Default::default()
        },
        reference::rmsprop
    );
    row!(
        "Adagrad",
        AdagradConfig {
            lr: 0.05,
            ..Default::default()
        },
        reference::adagrad
    );
    row!("Lion", LionConfig::default(), reference::lion);
    row!("Adadelta", AdadeltaConfig::default(), reference::adadelta);
    row!("Rprop", RpropConfig::default(), reference::rprop);
    row!("ASGD", AsgdConfig::default(), reference::asgd);
    row!("Adamax", AdamaxConfig::default(), reference::adamax);
    row!("RAdam", RAdamConfig::default(), reference::radam);
    row!("NAdam", NAdamConfig::default(), reference::nadam);
    row!(
        "Schedule-Free AdamW",
        ScheduleFreeAdamWConfig::default(),
        reference::schedule_free_adamw
    );
    row!(
        "LAMB",
        LambConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
        reference::lamb
    );
    out.push(check(
        "AdamW clipped at norm 1",
        vs_reference(
            gpu,
            AdamConfig::adamw(),
            reference::adam,
            Some(1.0),
            None,
            11,
        )
        .await,
    ));
    out.push(check(
        "SGD momentum clipped, NaN gradient skipped",
        vs_reference(
            gpu,
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                ..Default::default()
            },
            reference::sgd,
            Some(1.0),
            Some(2),
            12,
        )
        .await,
    ));
    out.push(check(
        "Adam skip_nonfinite, NaN gradient skipped",
        vs_reference(
            gpu,
            AdamConfig::default(),
            reference::adam,
            None,
            Some(1),
            13,
        )
        .await,
    ));
    out.push(check(
        "AdamW with 8-bit state, code for code",
        blockwise_vs_reference(gpu).await,
    ));
    out.push(check(
        "8-bit conversion after steps",
        converting_after_steps(gpu).await,
    ));
    out.push(check("checkpoint bytes", checkpoint_bytes(gpu).await));
    out.push(check("deferred GPU error", deferred_error(gpu).await));
    out
}
