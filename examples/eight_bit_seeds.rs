//! Does 8-bit state cost accuracy? The digits MLP (64-64-10) trained with AdamW in f32 and with
//! bitsandbytes-style 8-bit state (`StateFormat::blockwise8()`: tensors of at least 4096
//! elements, here the first layer's 64x64 weight, keep 8-bit state), at the same learning rate,
//! over several seeds. Each seed draws its own initial weights and batch order; both runs of a
//! seed start from the same weights and see the same batches. A single run is noisy (one test
//! digit of 359 is 0.28 points), so the table ends with the mean and standard deviation of the
//! accuracy gap over the seeds.
//!
//! `cargo run --release --example eight_bit_seeds [-- --seeds 10 --lr 0.0145 --epochs 15]`
//! (the default lr is the one `compare_optimizers`' LR range test picks for AdamW).

#[path = "nn/mod.rs"]
mod nn;

use nn::Mlp;
use rand::rngs::StdRng;
use rand::SeedableRng;
use wgpu_optim::{AdamConfig, FusedOptimizer, Gpu, Optimizer, StateFormat};

type Split = (Vec<f32>, Vec<f32>);

/// Train one run; returns (test loss, test accuracy).
fn run(
    gpu: &Gpu,
    data: &(Split, Split),
    seed: u64,
    lr: f32,
    epochs: usize,
    eight_bit: bool,
) -> Result<(f32, f32), wgpu_optim::Error> {
    let (train, test) = data;
    let mut net = Mlp::digits(gpu, train, test, seed, wgpu_optim::DType::F32)?;
    let mut opt = FusedOptimizer::new(
        &net.params,
        AdamConfig {
            lr,
            ..AdamConfig::adamw()
        },
    )?;
    if eight_bit {
        opt.set_state_format(StateFormat::blockwise8())?;
    }
    let mut order = StdRng::seed_from_u64(1000 + seed);
    for _ in 0..epochs {
        net.shuffle(&mut order);
        for k in 0..net.batches_per_epoch() {
            net.forward_backward(k);
            opt.step(&mut net.params)?;
        }
    }
    Ok(net.evaluate())
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn main() -> Result<(), wgpu_optim::Error> {
    let (mut seeds, mut lr, mut epochs) = (10u64, 1.45e-2f32, 15usize);
    let args: Vec<String> = std::env::args().collect();
    for (i, a) in args.iter().enumerate() {
        match (a.as_str(), args.get(i + 1)) {
            ("--seeds", Some(v)) => seeds = v.parse().expect("--seeds N"),
            ("--lr", Some(v)) => lr = v.parse().expect("--lr X"),
            ("--epochs", Some(v)) => epochs = v.parse().expect("--epochs N"),
            _ => {}
        }
    }
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    // The train/test split of compare_optimizers.
    let data = nn::digits_split(&mut StdRng::seed_from_u64(7));
    println!(
        "AdamW lr {lr:.3e}, {epochs} epochs of batch 32, {seeds} seeds\n\n\
         | seed | f32 test accuracy | 8-bit test accuracy | gap (points) | f32 test loss | 8-bit test loss |\n\
         |---:|---:|---:|---:|---:|---:|"
    );
    let (mut gaps, mut f32_acc, mut q_acc, mut f32_loss, mut q_loss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for seed in 1..=seeds {
        let (lf, af) = run(&gpu, &data, seed, lr, epochs, false)?;
        let (lq, aq) = run(&gpu, &data, seed, lr, epochs, true)?;
        let gap = 100.0 * (af as f64 - aq as f64);
        println!(
            "| {seed} | {:.2}% | {:.2}% | {gap:+.2} | {lf:.4} | {lq:.4} |",
            100.0 * af,
            100.0 * aq
        );
        gaps.push(gap);
        f32_acc.push(100.0 * af as f64);
        q_acc.push(100.0 * aq as f64);
        f32_loss.push(lf as f64);
        q_loss.push(lq as f64);
    }
    let (g, gs) = mean_std(&gaps);
    let (fa, fas) = mean_std(&f32_acc);
    let (qa, qas) = mean_std(&q_acc);
    let (fl, _) = mean_std(&f32_loss);
    let (ql, _) = mean_std(&q_loss);
    println!(
        "| mean ± sd | {fa:.2}% ± {fas:.2} | {qa:.2}% ± {qas:.2} | {g:+.2} ± {gs:.2} | {fl:.4} | {ql:.4} |"
    );
    println!(
        "\nf32 minus 8-bit accuracy: mean {g:+.2} points, standard error {:.2}",
        gs / (gaps.len() as f64).sqrt()
    );
    Ok(())
}
