//! How long saving and loading a checkpoint take with many small tensors (the case whose cost
//! used to grow with the tensor count): AdamW over `N` tensors of 1..=300 elements.
//!
//! ```text
//! cargo run --release --example checkpoint_bench            # 10,000 tensors
//! cargo run --release --example checkpoint_bench -- 1000    # another count
//! ```

use std::time::Instant;
use wgpu_optim::checkpoint::{self, SaveOptions};
use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params};

fn main() -> Result<(), wgpu_optim::Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.info().name);
    // Lengths 1..=300, deterministic.
    let lens: Vec<usize> = (0..n).map(|i| 1 + (i * 7919) % 300).collect();
    let names: Vec<String> = (0..n).map(|i| format!("layer{i}.weight")).collect();
    let specs: Vec<(&str, usize)> = names
        .iter()
        .map(|s| s.as_str())
        .zip(lens.iter().copied())
        .collect();
    let total: usize = lens.iter().sum();
    let mut params = Params::zeros(&gpu, &specs)?;
    let mut opt = Adam::new(&params, AdamConfig::adamw())?;
    for (name, &len) in names.iter().zip(&lens) {
        params.write(name, &vec![0.5; len])?;
        params.write_grad(name, &vec![0.1; len])?;
    }
    opt.step(&mut params)?;
    let _ = opt.step_count(); // wait for the GPU

    let dir = std::env::temp_dir().join(format!("wgpu-optim-ckbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("bench.safetensors");
    let mut save = Vec::new();
    let mut load = Vec::new();
    let mut p2 = Params::zeros(&gpu, &specs)?;
    let mut o2 = Adam::new(&p2, AdamConfig::adamw())?;
    for _ in 0..3 {
        let t = Instant::now();
        checkpoint::save(&path, &params, &opt, SaveOptions::default())?;
        save.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        checkpoint::load(&path, &mut p2, &mut o2)?;
        let _ = o2.state("exp_avg", &names[0])?; // the upload has finished
        load.push(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let ck = checkpoint::open(&path)?;
    let opened = t.elapsed().as_secs_f64();
    let t = Instant::now();
    ck.check(&p2, &o2)?;
    println!(
        "  of which open (header) {opened:.3} s, validation pass {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "{n} tensors, {total} elements, file {:.1} MB: save {:.3} s, load {:.3} s (best of 3; load/save {:.2})",
        bytes as f64 / 1e6,
        best(&save),
        best(&load),
        best(&load) / best(&save)
    );
    assert_eq!(p2.read(&names[n - 1])?, params.read(&names[n - 1])?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
