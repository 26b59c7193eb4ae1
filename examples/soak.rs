//! Soak run: many steps with clipping, non-finite skipping, the GradScaler and a scheduler,
//! printing the host's resident memory and wgpu's allocation report at intervals. Both should
//! stay flat after the first interval (no leak per step).
//!
//! ```sh
//! cargo run --release --example soak            # 100,000 steps
//! cargo run --release --example soak -- 20000   # fewer
//! ```

use wgpu_optim::{
    Adam, AdamConfig, CosineAnnealingLR, Gpu, GradScaler, LrScheduler, Optimizer, Params,
    ScalerConfig, Scheduler,
};

/// Resident set size of this process in KiB (Linux; `None` elsewhere).
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

fn main() -> Result<(), wgpu_optim::Error> {
    let steps: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let sizes = [("fc1.weight", 4096), ("fc1.bias", 64), ("fc2.weight", 640)];
    let mut params = Params::zeros(&gpu, &sizes)?;
    let mut opt = Adam::new(&params, AdamConfig::adamw())?;
    opt.set_max_grad_norm(Some(1.0))?;
    opt.set_skip_nonfinite(true)?;
    let scaler = GradScaler::new(
        &gpu,
        ScalerConfig {
            growth_interval: 500,
            ..Default::default()
        },
    )?;
    opt.set_grad_scaler(Some(&scaler))?;
    let mut sched = Scheduler::new(&mut opt, CosineAnnealingLR::new(steps))?;
    let grads: Vec<Vec<f32>> = sizes
        .iter()
        .map(|&(_, n)| (0..n).map(|i| ((i % 17) as f32 - 8.0) * 64.0).collect())
        .collect();
    let mut bad = grads[1].clone();
    bad[7] = f32::INFINITY;
    let interval = (steps / 10).max(1);
    println!(
        "{:>8} {:>10} {:>12} {:>14} {:>10}",
        "step", "rss KiB", "wgpu alloc", "scale", "applied"
    );
    for step in 1..=steps {
        // Your backward pass would write these; an overflowing step every 1000.
        for ((name, _), g) in sizes.iter().zip(&grads) {
            params.write_grad(name, g)?;
        }
        if step % 1000 == 0 {
            params.write_grad("fc1.bias", &bad)?;
        }
        opt.step(&mut params)?;
        sched.step(&mut opt)?;
        if step % interval == 0 || step == 1 {
            let alloc = gpu
                .device()
                .generate_allocator_report()
                .map(|r| r.total_allocated_bytes.to_string())
                .unwrap_or_else(|| "n/a".into());
            println!(
                "{step:>8} {:>10} {alloc:>12} {:>14} {:>10}",
                rss_kib().map_or("n/a".into(), |r| r.to_string()),
                scaler.scale()?,
                opt.step_count(),
            );
        }
    }
    Ok(())
}
