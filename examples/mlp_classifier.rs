//! A 64-64-10 MLP with softmax cross-entropy on the UCI handwritten digits, trained with AdamW,
//! gradient clipping and a linear warm-up followed by cosine decay. Forward and backward are
//! WGSL kernels bound to the `Params` arena; the data stays on the GPU; the loop reads back only
//! the per-epoch loss/accuracy it prints.
//!
//! `cargo run --release --example mlp_classifier`

#[path = "nn/mod.rs"]
mod nn;

use indicatif::{ProgressBar, ProgressStyle};
use nn::{Loss, Mlp};
use rand::SeedableRng;
use wgpu_optim::{
    Adam, AdamConfig, CosineAnnealingLR, Gpu, LinearLR, LrScheduler, Optimizer, Scheduler,
    SequentialLR,
};

fn main() -> Result<(), wgpu_optim::Error> {
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Shuffle once, hold out 20% for testing.
    let ((train_x, train_y), (test_x, test_y)) = nn::digits_split(&mut rng);
    println!(
        "digits: {} train, {} test, 64 features, 10 classes",
        train_y.len(),
        test_y.len()
    );

    let batch = 64;
    let mut net = Mlp::new(
        &gpu,
        &[64, 64, 10],
        Loss::SoftmaxXent,
        (&train_x, &train_y),
        (&test_x, &test_y),
        batch,
        &mut rng,
    )?;
    let epochs = 30;
    let steps = epochs * net.batches_per_epoch();
    let warmup = (steps / 10) as u64;
    let mut opt = Adam::new(
        &net.params,
        AdamConfig {
            lr: 3e-3,
            weight_decay: 1e-4,
            ..AdamConfig::adamw()
        },
    )?;
    opt.set_max_grad_norm(Some(1.0))?;
    // Linear warm-up from 1% of the peak lr, then cosine decay to zero, stepped every batch.
    let warm = LinearLR {
        start_factor: 0.01,
        end_factor: 1.0,
        total_iters: warmup,
    };
    let cosine = CosineAnnealingLR::new(steps as u64 - warmup);
    let mut sched = Scheduler::new(
        &mut opt,
        SequentialLR::new(vec![warm.into(), cosine.into()], vec![warmup]),
    )?;
    let bar = ProgressBar::new(epochs as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} epoch {pos}/{len} {msg}").unwrap());
    for epoch in 0..epochs {
        net.shuffle(&mut rng);
        for k in 0..net.batches_per_epoch() {
            net.forward_backward(k);
            opt.step(&mut net.params)?;
            sched.step(&mut opt)?;
        }
        // The only read-back of the epoch: the loss and accuracy totals it prints.
        let (loss, acc) = net.take_train_stats();
        bar.set_message(format!(
            "loss {loss:.4} acc {:.1}% lr {:.2e}",
            100.0 * acc,
            opt.lr()
        ));
        bar.inc(1);
        if !bar.is_hidden() {
            continue;
        }
        if epoch % 5 == 4 {
            println!(
                "epoch {:2}: train loss {loss:.4}, accuracy {:.1}%, lr {:.2e}",
                epoch + 1,
                100.0 * acc,
                opt.lr()
            );
        }
    }
    bar.finish();
    let (loss, acc) = net.evaluate();
    println!(
        "test: loss {loss:.4}, accuracy {:.2}% after {steps} AdamW steps (last grad norm {:.3})",
        100.0 * acc,
        opt.last_grad_norm()?
    );
    Ok(())
}
