//! Training in bf16: the 64-64-10 digits MLP with its weights, biases and gradients stored as
//! bf16 (forward and backward read and write bf16 in the arena), trained with AdamW in three
//! ways against the same network in f32:
//!
//! - bf16, round to nearest even: each step's update is rounded into the bf16 weight, so an
//!   update smaller than half the weight's bf16 spacing is lost;
//! - bf16, stochastic rounding: the update survives in expectation;
//! - bf16 weights with f32 master weights in the optimizer (apex/DeepSpeed's mixed precision);
//!
//! plus bf16 weights with bf16 optimizer state and stochastic rounding (the 14 bytes per
//! element path). Same initial weights, same batches, same learning rate. Writes
//! `bf16_loss_curves.png` and prints final loss, test accuracy, the fraction of the last
//! epoch's weight updates that were lost to rounding, and the memory of params and state.
//!
//! `cargo run --release --example bf16_training`

#[path = "nn/mod.rs"]
mod nn;
#[path = "nn/plot.rs"]
mod plot;

use nn::Mlp;
use rand::SeedableRng;
use wgpu_optim::{Adam, AdamConfig, DType, Gpu, Optimizer, Precision};

fn main() -> Result<(), wgpu_optim::Error> {
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let (train, test) = nn::digits_split(&mut rand::rngs::StdRng::seed_from_u64(7));
    let runs: [(&str, DType, Precision); 5] = [
        ("f32", DType::F32, Precision::default()),
        ("bf16, round to nearest", DType::Bf16, Precision::default()),
        (
            "bf16, stochastic rounding",
            DType::Bf16,
            Precision {
                stochastic_rounding: true,
                ..Precision::default()
            },
        ),
        (
            "bf16, f32 master weights",
            DType::Bf16,
            Precision {
                master_weights: true,
                ..Precision::default()
            },
        ),
        (
            "bf16 + bf16 state, stochastic",
            DType::Bf16,
            Precision {
                state: DType::Bf16,
                master_weights: false,
                stochastic_rounding: true,
            },
        ),
    ];
    let epochs = 30;
    let lr = 1e-3;
    let mut curves = Vec::new();
    let mut rows = Vec::new();
    for (name, dtype, precision) in runs {
        // Same seed for every run: the same initial weights (rounded to bf16 for bf16 runs)
        // and the same batches.
        let mut net = Mlp::digits(&gpu, &train, &test, 1, dtype)?;
        let mut opt = Adam::new(
            &net.params,
            AdamConfig {
                lr,
                ..AdamConfig::adamw()
            },
        )?;
        opt.set_precision(precision)?;
        opt.set_rounding_seed(11);
        let mut shuffle = rand::rngs::StdRng::seed_from_u64(3);
        let steps = epochs * net.batches_per_epoch();
        let mut step = 0;
        let (mut lost, mut total) = (0usize, 0usize);
        for epoch in 0..epochs {
            net.shuffle(&mut shuffle);
            for k in 0..net.batches_per_epoch() {
                net.log_losses_at(Some(step));
                net.forward_backward(k);
                // In the last epoch, count the weight elements a step left unchanged.
                let before = (epoch + 1 == epochs && k % 8 == 0)
                    .then(|| net.params.read("fc0.weight"))
                    .transpose()?;
                opt.step(&mut net.params)?;
                if let Some(before) = before {
                    let after = net.params.read("fc0.weight")?;
                    lost += before.iter().zip(&after).filter(|(a, b)| a == b).count();
                    total += after.len();
                }
                step += 1;
            }
        }
        let (test_loss, acc) = net.evaluate();
        let curve = net.read_loss_log(steps);
        let tail = &curve[steps - net.batches_per_epoch()..];
        let final_loss = tail.iter().sum::<f32>() / tail.len() as f32;
        let unchanged = lost as f64 / total as f64;
        let memory = net.params.memory_bytes() + opt.state_memory_bytes();
        println!(
            "{name:>30}: final train loss {final_loss:.4}  test loss {test_loss:.4}  test accuracy {:.2}%  unchanged weights per step {:.1}%  params+grads+state {} KiB",
            100.0 * acc,
            100.0 * unchanged,
            memory / 1024
        );
        rows.push((name, final_loss, test_loss, acc, unchanged, memory));
        curves.push((name, curve));
    }
    plot::losses(
        &curves,
        "digits MLP, AdamW: f32 against bf16 storage",
        "bf16_loss_curves.png",
    )
    .map_err(|e| wgpu_optim::Error::Plot(e.to_string()))?;
    println!(
        "\n| run | final train loss | test loss | test accuracy | weights unchanged by a step (last epoch) | params + grads + state |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, fl, tl, acc, unchanged, memory) in rows {
        println!(
            "| {name} | {fl:.4} | {tl:.4} | {:.2}% | {:.1}% | {} KiB |",
            100.0 * acc,
            100.0 * unchanged,
            memory / 1024
        );
    }
    println!("\nwrote bf16_loss_curves.png");
    Ok(())
}
