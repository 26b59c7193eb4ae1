//! The digits MLP (64-64-10) written in Burn, trained twice from the same start on the same
//! batches: with Burn's AdamW (`AdamWConfig::new().init()`) and with `wgpu_optim::burn`'s
//! fused AdamW, swapped in with one line. Prints the time of one optimizer step of each
//! (the device synchronised right before and right after the step, nothing else inside the
//! timed region), the final test accuracy of both, and writes `burn_loss_curves.png`.
//!
//! Then the same comparison on a model with GPT-2 small's 148 parameter tensors scaled to
//! 2^20 and 2^24 parameters (`--many 20,24` to choose; gradients are random tensors in
//! Burn's `GradientsParams`, so only the optimizer step runs), with the two optimizers' steps
//! alternating, and with the time of our fused update alone on the same layout (a plain
//! `FusedOptimizer` on an arena of its own): the floor of our step inside the Burn loop.
//!
//! `cargo run --release --features burn --example burn_mlp [-- --epochs 10 --many 20,24
//! --backend vulkan|gl|metal|dx12]` (without `--backend`, Burn picks the graphics API: the
//! first of Vulkan, DX12 and GL with a hardware adapter, which on a machine with only Mesa's
//! CPU drivers is llvmpipe's GL rather than lavapipe's Vulkan).

#[path = "nn/mod.rs"]
mod nn;
#[path = "nn/plot.rs"]
mod plot;

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{activation::relu, Device, Distribution, Int, Tensor, TensorData};
use cubecl::wgpu::{WgpuBackend, WgpuDevice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;
use wgpu_optim::burn::{init, BurnOptimizer};
use wgpu_optim::{AdamConfig, FusedOptimizer, Gpu, Optimizer, Params};

/// AdamW's hyperparameters, the same for both optimizers.
const LR: f64 = 3e-3;
const BETAS: (f32, f32) = (0.9, 0.999);
const EPS: f32 = 1e-8;
const WEIGHT_DECAY: f32 = 1e-2;
const BATCH: usize = 64;

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// Burn's default Linear init (uniform in ±1/sqrt(fan_in)), from `seed`.
    fn new(seed: u64, device: &Device) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut linear = |i: usize, o: usize| {
            let k = 1.0 / (i as f32).sqrt();
            let mut u =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-k..k)).collect() };
            Linear {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(u(i * o), [i, o]),
                    device,
                )),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(u(o), [o]),
                    device,
                ))),
            }
        };
        Mlp {
            fc1: linear(64, 64),
            fc2: linear(64, 10),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

/// A model with GPT-2 small's 148 parameter tensors, every size scaled to total about `n`.
#[derive(Module, Debug)]
struct Many {
    tensors: Vec<Param<Tensor<1>>>,
}

fn gpt2_small_sizes(n: usize) -> Vec<usize> {
    let (d, vocab, ctx) = (768usize, 50257usize, 1024usize);
    let mut t = vec![vocab * d, ctx * d];
    for _ in 0..12 {
        t.extend([
            d,
            d,
            d * 3 * d,
            3 * d,
            d * d,
            d,
            d,
            d,
            d * 4 * d,
            4 * d,
            4 * d * d,
            d,
        ]);
    }
    t.extend([d, d]);
    let total: usize = t.iter().sum();
    let scale = n as f64 / total as f64;
    t.into_iter()
        .map(|len| ((len as f64 * scale).round() as usize).max(1))
        .collect()
}

struct Data {
    train: (Vec<f32>, Vec<f32>),
    test: (Vec<f32>, Vec<f32>),
}

/// A batch of rows `order[at..at + BATCH]` as tensors on `device`.
fn batch(
    split: &(Vec<f32>, Vec<f32>),
    rows: &[usize],
    device: &Device,
) -> (Tensor<2>, Tensor<1, Int>) {
    let x: Vec<f32> = rows
        .iter()
        .flat_map(|&i| split.0[i * 64..(i + 1) * 64].to_vec())
        .collect();
    let y: Vec<i64> = rows.iter().map(|&i| split.1[i] as i64).collect();
    (
        Tensor::from_data(TensorData::new(x, [rows.len(), 64]), device),
        Tensor::from_data(TensorData::new(y, [rows.len()]), device),
    )
}

/// Waits for everything submitted to the device: Burn's work and ours (one queue).
fn sync(device: &Device, gpu: &Gpu) {
    device.sync().expect("device sync");
    let _ = gpu.device().poll(wgpu::PollType::wait_indefinitely());
}

/// One training run. `step` is the optimizer step; returns (losses, step times in ms, test
/// accuracy).
fn train(
    data: &Data,
    epochs: usize,
    device: &Device,
    gpu: &Gpu,
    mut step: impl FnMut(f64, Mlp, GradientsParams) -> Mlp,
) -> (Vec<f32>, Vec<f64>, f32) {
    let mut model = Mlp::new(1, device);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = StdRng::seed_from_u64(2);
    let n = data.train.1.len();
    let (mut losses, mut times) = (Vec::new(), Vec::new());
    for _ in 0..epochs {
        let mut order: Vec<usize> = (0..n).collect();
        rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
        for rows in order.chunks_exact(BATCH) {
            let (x, y) = batch(&data.train, rows, device);
            let loss = loss_fn.forward(model.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            losses.push(loss.into_scalar::<f32>());
            sync(device, gpu);
            let t = Instant::now();
            model = step(LR, model, grads);
            sync(device, gpu);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let rows: Vec<usize> = (0..data.test.1.len()).collect();
    let (x, y) = batch(&data.test, &rows, &device.clone().inner());
    let model = model.valid(); // inference on the plain device
    let pred = model.forward(x).argmax(1).flatten::<1>(0, 1);
    let correct: i64 = pred.equal(y).int().sum().into_scalar();
    (losses, times, correct as f32 / rows.len() as f32)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn adamw() -> AdamConfig {
    AdamConfig {
        lr: LR as f32,
        betas: BETAS,
        eps: EPS,
        weight_decay: WEIGHT_DECAY,
        decoupled_weight_decay: true,
        ..Default::default()
    }
}

fn ours() -> BurnOptimizer<AdamConfig> {
    BurnOptimizer::new(adamw())
}

fn burn_adamw() -> burn::optim::ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(BETAS.0)
        .with_beta_2(BETAS.1)
        .with_epsilon(EPS)
        .with_weight_decay(WEIGHT_DECAY)
        .init()
}

/// Timed steps on the many-tensor models (after 2 warm-up steps).
const STEPS_MANY: usize = 15;

/// The many-tensor comparison: tensor and parameter counts, then step times in ms (medians of
/// `steps` after 2 warm-up steps, the steps alternating): Burn's AdamW, ours in the Burn loop,
/// and our fused update alone on the same layout in an arena of its own (no Burn tensors, no
/// copies): the floor of ours in the Burn loop.
struct ManyTimes {
    tensors: usize,
    params: usize,
    burn: f64,
    ours: f64,
    update_alone: f64,
}

fn many_tensors(n: usize, steps: usize, device: &Device, gpu: &Gpu) -> ManyTimes {
    let sizes = gpt2_small_sizes(n);
    let make = || Many {
        tensors: sizes
            .iter()
            .map(|&len| {
                Param::from_tensor(Tensor::<1>::random(
                    [len],
                    Distribution::Normal(0.0, 0.02),
                    device,
                ))
            })
            .collect(),
    };
    let grads_for = |m: &Many| {
        let mut g = GradientsParams::new();
        let inner = device.clone().inner();
        for p in &m.tensors {
            let len = p.lazy_shape().num_elements();
            g.register(
                p.id,
                Tensor::<1>::random([len], Distribution::Normal(0.0, 1e-3), &inner),
            );
        }
        g
    };
    // The two optimizers' steps alternate, so that both see the same machine load.
    let mut b = burn_adamw();
    let mut o = ours();
    let (mut burn_model, mut our_model) = (make(), make());
    let (mut theirs, mut mine, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    let specs: Vec<(String, usize)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("t{i}"), len))
        .collect();
    let specs: Vec<(&str, usize)> = specs.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    let mut arena = Params::zeros(gpu, &specs).expect("arena");
    let mut plain = FusedOptimizer::new(&arena, adamw()).expect("optimizer");
    let timed = |model: Many, step: &mut dyn FnMut(Many, GradientsParams) -> Many| {
        let grads = grads_for(&model);
        sync(device, gpu);
        let start = Instant::now();
        let model = step(model, grads);
        sync(device, gpu);
        (model, start.elapsed().as_secs_f64() * 1e3)
    };
    for i in 0..steps + 2 {
        let (m, t) = timed(burn_model, &mut |m, g| b.step(LR, m, g));
        burn_model = m;
        let (m, u) = timed(our_model, &mut |m, g| o.step(LR, m, g).expect("step"));
        our_model = m;
        sync(device, gpu);
        let start = Instant::now();
        plain.step(&mut arena).expect("step");
        sync(device, gpu);
        let a = start.elapsed().as_secs_f64() * 1e3;
        if i >= 2 {
            theirs.push(t);
            mine.push(u);
            alone.push(a);
        }
    }
    ManyTimes {
        tensors: sizes.len(),
        params: sizes.iter().sum(),
        burn: median(theirs),
        ours: median(mine),
        update_alone: median(alone),
    }
}

fn main() -> Result<(), wgpu_optim::Error> {
    let mut epochs = 10;
    let mut many = vec![20u32, 24];
    // Burn picks the graphics API itself unless told: `--backend vulkan|gl` pins it.
    let mut backend = WgpuBackend::Auto;
    let args: Vec<String> = std::env::args().collect();
    for (i, a) in args.iter().enumerate() {
        match (a.as_str(), args.get(i + 1)) {
            ("--epochs", Some(v)) => epochs = v.parse().expect("--epochs N"),
            ("--many", Some(v)) => {
                many = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().expect("--many 20,24"))
                    .collect()
            }
            ("--backend", Some(v)) => {
                backend = match v.as_str() {
                    "vulkan" => WgpuBackend::Vulkan,
                    "gl" => WgpuBackend::Gl,
                    "metal" => WgpuBackend::Metal,
                    "dx12" => WgpuBackend::Dx12,
                    _ => panic!("--backend vulkan|gl|metal|dx12"),
                }
            }
            _ => {}
        }
    }
    let (device, gpu) = init(WgpuDevice::default().on(backend))?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let device = device.autodiff();
    let (train_split, test_split) = nn::digits_split(&mut StdRng::seed_from_u64(7));
    let data = Data {
        train: train_split,
        test: test_split,
    };

    let mut burn_optim = burn_adamw();
    let (burn_losses, burn_times, burn_acc) = train(&data, epochs, &device, &gpu, |lr, m, g| {
        burn_optim.step(lr, m, g)
    });
    let mut optim = ours();
    let (our_losses, our_times, our_acc) = train(&data, epochs, &device, &gpu, |lr, m, g| {
        optim.step(lr, m, g).expect("step") // the one changed line
    });
    let (burn_ms, our_ms) = (median(burn_times), median(our_times));
    let tail = |l: &[f32]| l[l.len() - 20..].iter().sum::<f32>() / 20.0;
    println!(
        "digits MLP, {epochs} epochs of {} steps (batch {BATCH}), AdamW lr {LR}:",
        burn_losses.len() / epochs
    );
    println!(
        "  Burn AdamW:        {burn_ms:.3} ms/step (median)  final train loss {:.4}  test accuracy {:.2}%",
        tail(&burn_losses),
        100.0 * burn_acc
    );
    println!(
        "  wgpu-optim AdamW:  {our_ms:.3} ms/step (median)  final train loss {:.4}  test accuracy {:.2}%  ({:.2}x Burn's time)",
        tail(&our_losses),
        100.0 * our_acc,
        our_ms / burn_ms
    );
    plot::losses(
        &[
            ("Burn AdamW", burn_losses),
            ("wgpu-optim AdamW", our_losses),
        ],
        "Burn MLP on handwritten digits: Burn's AdamW and wgpu-optim's",
        "burn_loss_curves.png",
    )
    .map_err(|e| wgpu_optim::Error::Plot(e.to_string()))?;
    println!("wrote burn_loss_curves.png");

    let mut rows = vec![format!(
        "| digits MLP 64-64-10 | 4 | {} | {burn_ms:.3} | {our_ms:.3} | {:.2} | | |",
        64 * 64 + 64 + 64 * 10 + 10,
        our_ms / burn_ms
    )];
    for e in many {
        let ManyTimes {
            tensors,
            params,
            burn,
            ours,
            update_alone,
        } = many_tensors(1 << e, STEPS_MANY, &device, &gpu);
        println!(
            "GPT-2 small layout, {tensors} tensors, {params} params (2^{e}): Burn AdamW {burn:.2} ms/step, wgpu-optim {ours:.2} ms/step ({:.2}x), the fused update alone {update_alone:.2} ms ({:.2}x)",
            ours / burn,
            update_alone / burn
        );
        rows.push(format!(
            "| GPT-2 small layout (2^{e}) | {tensors} | {params} | {burn:.2} | {ours:.2} | {:.2} | {update_alone:.2} | {:.2} |",
            ours / burn,
            update_alone / burn
        ));
    }
    println!(
        "\n| model | tensors | parameters | Burn AdamW ms/step | wgpu-optim ms/step | ratio | fused update alone ms | its ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
