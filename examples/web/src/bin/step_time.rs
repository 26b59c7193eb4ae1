//! The browser benchmark's step times on a native adapter (lavapipe in CI), for the comparison
//! in BENCHMARKS.md: the same optimizers, sizes and method as `bench_step` in the page.
//!
//! `cargo run --release --bin step_time` in `examples/web` (native build).

#[cfg(not(target_arch = "wasm32"))]
fn main() -> Result<(), wgpu_optim::Error> {
    let gpu = wgpu_optim::Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let start = std::time::Instant::now();
    let now = || start.elapsed().as_secs_f64() * 1e3;
    println!("step time, median of 5 runs:");
    println!("| optimizer | elements | clipped | ms per step |");
    println!("| --- | ---: | --- | ---: |");
    // A discarded pass first, as in the page.
    for &n in wgpu_optim_web::bench::SIZES {
        let shapes = vec![("w".to_string(), vec![n])];
        let steps = wgpu_optim_web::bench::steps_for(n);
        pollster::block_on(wgpu_optim_web::bench::step_time(
            &gpu, "adam", &shapes, false, steps, now,
        ))?;
    }
    for (kind, clip) in wgpu_optim_web::bench::ROWS {
        for &n in wgpu_optim_web::bench::SIZES {
            let shapes = vec![("w".to_string(), vec![n])];
            let steps = wgpu_optim_web::bench::steps_for(n);
            let mut runs = Vec::new();
            for _ in 0..5 {
                runs.push(pollster::block_on(wgpu_optim_web::bench::step_time(
                    &gpu, kind, &shapes, clip, steps, now,
                ))?);
            }
            runs.sort_by(f64::total_cmp);
            let ms = runs[2];
            println!("| {kind} | {n} | {clip} | {ms:.3} |");
        }
    }
    Ok(())
}

#[cfg(target_arch = "wasm32")]
fn main() {}
