//! Throughput table: every optimizer against the copy kernel's bandwidth on one adapter, and
//! against the single-threaded CPU reference.
//!
//! ```text
//! cargo run --release --features bench --example throughput -- [--backend vulkan|metal|dx12|gl]
//!     [--sizes 1048576,16777216] [--iters N] [--json PATH] [--cpu-all] [--timer encoder|pass|wall]
//! ```
//!
//! For each size (default 2^20, 2^22, 2^24) and optimizer: the median GPU time of one step
//! (timestamp queries when the adapter has them, else wall time around submit + wait), the
//! effective bandwidth (bytes moved per element × elements / time), the fraction of the copy
//! kernel's bandwidth, and the CPU reference's time per step (one thread; skipped above 2^24
//! elements unless `--cpu-all`). Then, at the largest size: Adam with gradient clipping
//! (`max_grad_norm`) against Adam alone, the norm passes alone (`Params::grad_norm`) against
//! the copy kernel and Adam, the passes of LAMB and Adafactor before their last pass against
//! the whole step, GPT-2 small's 148-tensor layout against one tensor,
//! and that layout with AdamW's usual decay / no-decay parameter groups against one group;
//! last, 10,000 tensors of 1-300 elements: Adam clipped against unclipped, and
//! `Params::grad_norm` on them against one tensor of the same total size.
//!
//! Each step runs alone on an idle queue, and steps alternate with runs of the copy kernel of
//! the same size (`step copy step copy ...`), so a change of load on a shared machine hits both
//! alike: the copy fraction is the median over pairs of (step bandwidth / bandwidth of the copy
//! run right after it), and the clipping, layout and group ratios likewise pair the steps they
//! compare. Without `--iters`, each cell takes about 3 s of GPU time (5 to 50 steps). `WGPU_BACKEND`/`WGPU_ADAPTER_NAME` pick the adapter too.
use std::cell::RefCell;
use std::time::{Duration, Instant};

use ndarray::Array1;
use serde_json::json;
use wgpu_optim::bench::{self, CopyKernel, GpuTimer, TimerMode, Workload, COPY_BYTES_PER_ELEMENT};
use wgpu_optim::{
    Adafactor, AdafactorConfig, Adam, AdamConfig, DType, FusedOptimizer, Gpu, Lamb, LambConfig,
    Optimizer, ParamGroup, Params,
};

struct Args {
    sizes: Vec<usize>,
    iters: Option<usize>,
    json: Option<String>,
    cpu_all: bool,
    timer: Option<TimerMode>,
}

const USAGE: &str = "usage: throughput [--backend vulkan|metal|dx12|gl] [--sizes N,N,...] \
                     [--iters N] [--json PATH] [--cpu-all] [--timer encoder|pass|wall]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        sizes: vec![1 << 20, 1 << 22, 1 << 24],
        iters: None,
        json: None,
        cpu_all: false,
        timer: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        match a.as_str() {
            "--backend" => {
                let b = value("--backend")?;
                if !["vulkan", "metal", "dx12", "gl"].contains(&b.to_lowercase().as_str()) {
                    return Err(format!("unknown backend {b}\n{USAGE}"));
                }
                // Gpu::new honours WGPU_BACKEND; set before any wgpu call, single-threaded.
                std::env::set_var("WGPU_BACKEND", b);
            }
            "--sizes" => {
                args.sizes = value("--sizes")?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--sizes {s}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                if args.sizes.is_empty() || args.sizes.contains(&0) {
                    return Err("--sizes needs positive sizes".into());
                }
            }
            "--iters" => {
                let n: usize = value("--iters")?
                    .parse()
                    .map_err(|e| format!("--iters: {e}"))?;
                args.iters = Some(n.max(1));
            }
            "--json" => args.json = Some(value("--json")?),
            "--cpu-all" => args.cpu_all = true,
            "--timer" => {
                args.timer = Some(match value("--timer")?.as_str() {
                    "encoder" => TimerMode::EncoderTimestamps,
                    "pass" => TimerMode::PassTimestamps,
                    "wall" => TimerMode::WallClock,
                    t => return Err(format!("unknown timer {t}\n{USAGE}")),
                })
            }
            "-h" | "--help" => return Err(USAGE.into()),
            // cargo passes --bench to examples run through `cargo bench`; ignore it.
            "--bench" => {}
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// Median CPU-reference time per step of `workload` on `n` elements, on this thread: 2 to 5
/// timed steps (about 2 s), after one untimed step (first-step rules). `None` when the
/// workload has no reference.
fn cpu_step(workload: &Workload, n: usize) -> Option<Duration> {
    let mut step = workload.reference_step(n)?;
    let grad = Array1::from(bench::pattern(n, 2));
    let mut p = Array1::from(bench::pattern(n, 3));
    step(&mut p, &grad);
    let mut times: Vec<Duration> = Vec::new();
    while times.is_empty() || times.len() < adaptive_runs(times[0], 2.0, 2, 5) {
        let t = Instant::now();
        step(&mut p, &grad);
        times.push(t.elapsed());
    }
    std::hint::black_box(&p);
    Some(bench::median(&times))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn size_label(n: usize) -> String {
    if n.is_power_of_two() {
        format!("2^{}", n.trailing_zeros())
    } else {
        n.to_string()
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new()?;
    let info = gpu.info();
    let mut timer = match args.timer {
        Some(m) => GpuTimer::with_mode(&gpu, m)?,
        None => GpuTimer::new(&gpu),
    };
    println!(
        "adapter: {} ({:?}, {:?}), driver: {} {}",
        info.name, info.backend, info.device_type, info.driver, info.driver_info
    );
    println!(
        "timer: {:?} ({}); steps per cell: {}; each step timed alone, alternating with a copy \
         of the same size; copy fraction = median over (step, copy) pairs; CPU reference: 1 thread",
        timer.mode(),
        if timer.mode().is_gpu() {
            "GPU timestamps"
        } else {
            "wall time around submit + wait"
        },
        args.iters
            .map_or("adaptive (about 3 s per cell, 5 to 50)".into(), |n| n
                .to_string()),
    );
    let mut rows = Vec::new();
    let mut table = vec![
        "| optimizer | size | B/elem | GPU ms/step | GB/s | copy fraction | CPU ms/step | CPU/GPU |"
            .to_string(),
        "|---|---:|---:|---:|---:|---:|---:|---:|".to_string(),
    ];
    let mut overhead_bound = std::collections::BTreeSet::new();
    for &n in &args.sizes {
        let copy = CopyKernel::new(&gpu, n)?;
        // The copy covers n rounded up to 1024 elements: scale to what n elements cost.
        let copy_scale = n as f64 / copy.elems() as f64;
        bench::time_copy(&mut timer, &copy, 1)?;
        let mut copy_all = Vec::new();
        let mut cells = Vec::new();
        for w in Workload::standard() {
            if w.is_copy() {
                continue;
            }
            progress(&format!("{} {}", size_label(n), w.label()));
            let mut params = Params::builder(&gpu)
                .tensor("w", &w.shape(n), DType::F32)
                .build()?;
            params.write("w", &bench::pattern(n, 3))?;
            params.write_grad("w", &bench::pattern(n, 2))?;
            let mut opt = w.optimizer(&params)?.expect("an optimizer");
            opt.step(&mut params)?;
            let first = timer.time(1, || opt.step(&mut params))?[0];
            let runs = args
                .iters
                .unwrap_or_else(|| adaptive_runs(first, 3.0, 5, 50));
            let mut step = || opt.step(&mut params);
            let mut copy_run = || {
                copy.submit();
                Ok(())
            };
            let times = timer.time_interleaved(runs, &mut [&mut step, &mut copy_run])?;
            let copies: Vec<Duration> = times[1].iter().map(|t| t.mul_f64(copy_scale)).collect();
            copy_all.extend_from_slice(&copies);
            // Each step against the copy run right after it: a change of load between pairs
            // cancels out.
            let pair_fractions: Vec<f64> = times[0]
                .iter()
                .zip(&copies)
                .map(|(s, c)| {
                    (w.bytes_per_element() as f64 * c.as_secs_f64())
                        / (COPY_BYTES_PER_ELEMENT as f64 * s.as_secs_f64())
                })
                .collect();
            cells.push((
                w,
                bench::median(&times[0]),
                bench::median(&copies),
                runs,
                median_f64(pair_fractions),
            ));
        }
        progress(&format!("{} CPU reference", size_label(n)));
        let copy_median = bench::median(&copy_all);
        cells.insert(
            0,
            (
                Workload::copy(),
                copy_median,
                copy_median,
                copy_all.len(),
                1.0,
            ),
        );
        for (w, gpu_time, copy_time, runs, fraction) in cells {
            if fraction > 1.05 {
                overhead_bound.insert(n);
            }
            let bpe = w.bytes_per_element();
            let gbps = bench::gb_per_s(bpe * n as u64, gpu_time);
            let copy_gbps = bench::gb_per_s(8 * n as u64, copy_time);
            let cpu = (args.cpu_all || n <= 1 << 24)
                .then(|| cpu_step(&w, n))
                .flatten();
            table.push(format!(
                "| {} | {} | {} | {:.3} | {:.2} | {:.2} | {} | {} |",
                w.label(),
                size_label(n),
                bpe,
                ms(gpu_time),
                gbps,
                fraction,
                cpu.map_or("-".into(), |c| format!("{:.2}", ms(c))),
                cpu.map_or("-".into(), |c| format!(
                    "{:.1}",
                    c.as_secs_f64() / gpu_time.as_secs_f64()
                )),
            ));
            rows.push(json!({
                "optimizer": w.label(),
                "n": n,
                "bytes_per_elem": bpe,
                "runs": runs,
                "gpu_s": gpu_time.as_secs_f64(),
                "gb_per_s": gbps,
                "copy_s": copy_time.as_secs_f64(),
                "copy_gb_per_s": copy_gbps,
                "copy_fraction": fraction,
                "cpu_s": cpu.map(|c| c.as_secs_f64()),
            }));
        }
    }
    progress("");
    println!();
    for line in &table {
        println!("{line}");
    }
    if !overhead_bound.is_empty() {
        let sizes: Vec<String> = overhead_bound.iter().map(|&n| size_label(n)).collect();
        println!(
            "\nAt {}: copy fractions above 1 mean the kernels' fixed per-dispatch cost, not \
             their bandwidth, sets the time (a step moves more bytes than the copy in about the \
             same time); read the fractions at the larger sizes.",
            sizes.join(", ")
        );
    }

    // Clipping: the fused norm pass reads the gradients once more and reduces them.
    let n = *args.sizes.iter().max().expect("sizes");
    let mut params = Params::zeros(&gpu, &[("w", n)])?;
    params.write_grad("w", &bench::pattern(n, 2))?;
    let workload = Workload::new(AdamConfig::default());
    let mut plain = workload.optimizer(&params)?.expect("Adam");
    let mut clipped = workload.optimizer(&params)?.expect("Adam");
    clipped.set_max_grad_norm(Some(1.0))?;
    for _ in 0..2 {
        plain.step(&mut params)?;
        clipped.step(&mut params)?;
    }
    let first = timer.time(1, || clipped.step(&mut params))?[0];
    let runs = args
        .iters
        .unwrap_or_else(|| adaptive_runs(first, 3.0, 5, 50));
    // The norm passes alone (`Params::grad_norm`: the same passes, gradients untouched) and a
    // copy of the same size, to see what the norm costs in copy-kernel units.
    let copy = CopyKernel::new(&gpu, n)?;
    let params = RefCell::new(params);
    let mut a = || plain.step(&mut params.borrow_mut());
    let mut b = || clipped.step(&mut params.borrow_mut());
    let mut c = || params.borrow().grad_norm(2.0).map(|_| ());
    let mut d = || {
        copy.submit();
        Ok(())
    };
    let times = timer.time_interleaved(runs, &mut [&mut a, &mut b, &mut c, &mut d])?;
    let (t_plain, t_clip, t_norm) = (
        bench::median(&times[0]),
        bench::median(&times[1]),
        bench::median(&times[2]),
    );
    let paired = |x: &[Duration], y: &[Duration]| {
        median_f64(
            x.iter()
                .zip(y)
                .map(|(x, y)| x.as_secs_f64() / y.as_secs_f64())
                .collect(),
        )
    };
    let ratio = paired(&times[1], &times[0]);
    let copy_scale = n as f64 / copy.elems() as f64;
    let copies: Vec<Duration> = times[3].iter().map(|t| t.mul_f64(copy_scale)).collect();
    let norm_copies = paired(&times[2], &copies);
    let norm_adam = paired(&times[2], &times[0]);
    println!();
    println!(
        "Adam + max_grad_norm vs Adam at {}: {:.3} ms vs {:.3} ms per step, ratio {:.3} \
         (bytes alone: (28 + 4) / 28 = {:.3})",
        size_label(n),
        ms(t_clip),
        ms(t_plain),
        ratio,
        32.0 / 28.0
    );
    println!(
        "Norm passes alone (Params::grad_norm, L2): {:.3} ms, {:.2} copy-kernel times, {:.3} of an Adam step",
        ms(t_norm),
        norm_copies,
        norm_adam
    );

    // The two-pass optimizers: what runs before the last pass (Adafactor's row and column
    // passes, the first pass and the reduction between the passes) against the whole step.
    // Adafactor on the squarest matrix, LAMB on one tensor.
    let shape = bench::matrix_shape(n);
    let mut params = Params::builder(&gpu)
        .tensor("w", &shape, DType::F32)
        .build()?;
    params.write("w", &bench::pattern(n, 3))?;
    params.write_grad("w", &bench::pattern(n, 2))?;
    let mut adafactor = Adafactor::new(&params, AdafactorConfig::default())?;
    let mut lamb = Lamb::new(&params, LambConfig::default())?;
    adafactor.step(&mut params)?;
    lamb.step(&mut params)?;
    let first = timer.time(1, || adafactor.step(&mut params))?[0];
    let runs = args
        .iters
        .unwrap_or_else(|| adaptive_runs(first, 3.0, 5, 50));
    let (adafactor, lamb, params) = (
        RefCell::new(adafactor),
        RefCell::new(lamb),
        RefCell::new(params),
    );
    let mut a = || adafactor.borrow_mut().step(&mut params.borrow_mut());
    let mut b = || {
        assert!(adafactor.borrow().submit_factored_passes());
        Ok(())
    };
    let mut c = || {
        assert!(adafactor.borrow().submit_passes_before_update());
        Ok(())
    };
    let mut d = || lamb.borrow_mut().step(&mut params.borrow_mut());
    let mut e = || {
        assert!(lamb.borrow().submit_passes_before_update());
        Ok(())
    };
    let times = timer.time_interleaved(runs, &mut [&mut a, &mut b, &mut c, &mut d, &mut e])?;
    println!(
        "Adafactor on a {} x {} matrix: {:.3} ms per step; its row and column passes alone \
         {:.3} ms ({:.3} of the step); everything before the last pass (those, the first pass \
         and the reduction) {:.3} ms ({:.3}), so the last pass {:.3}",
        shape[0],
        shape[1],
        ms(bench::median(&times[0])),
        ms(bench::median(&times[1])),
        paired(&times[1], &times[0]),
        ms(bench::median(&times[2])),
        paired(&times[2], &times[0]),
        1.0 - paired(&times[2], &times[0])
    );
    println!(
        "LAMB at {}: {:.3} ms per step; the first pass and the reduction alone {:.3} ms \
         ({:.3} of the step), so the last pass {:.3}",
        size_label(n),
        ms(bench::median(&times[3])),
        ms(bench::median(&times[4])),
        paired(&times[4], &times[3]),
        1.0 - paired(&times[4], &times[3])
    );

    // Many tensors at the cost of one: GPT-2 small's 148-tensor layout scaled to n elements
    // against one tensor of the same total, both Adam.
    let layout = gpt2_small_layout(n);
    let total: usize = layout.iter().map(|t| t.1).sum();
    let specs: Vec<(&str, usize)> = layout
        .iter()
        .map(|(name, len)| (name.as_str(), *len))
        .collect();
    let mut many = Params::zeros(&gpu, &specs)?;
    let mut one = Params::zeros(&gpu, &[("flat", total)])?;
    let flat = bench::pattern(total, 2);
    let mut at = 0;
    for (name, len) in &specs {
        many.write_grad(name, &flat[at..at + len])?;
        at += len;
    }
    one.write_grad("flat", &flat)?;
    let mut opt_many = workload.optimizer(&many)?.expect("Adam");
    let mut opt_one = workload.optimizer(&one)?.expect("Adam");
    // The usual AdamW split: no weight decay on biases and layer norms.
    let decay = AdamConfig::adamw();
    let no_decay = AdamConfig {
        weight_decay: 0.0,
        ..decay.clone()
    };
    let mut opt_groups: Adam = FusedOptimizer::with_groups(
        &many,
        vec![
            ParamGroup::matching(|n| n.ends_with(".bias") || n.contains("ln_"), no_decay),
            ParamGroup::rest(decay),
        ],
    )?;
    for _ in 0..2 {
        opt_many.step(&mut many)?;
        opt_one.step(&mut one)?;
        opt_groups.step(&mut many)?;
    }
    let many = RefCell::new(many);
    let mut a = || opt_one.step(&mut one);
    let mut b = || opt_many.step(&mut many.borrow_mut());
    let mut c = || opt_groups.step(&mut many.borrow_mut());
    let times = timer.time_interleaved(runs, &mut [&mut a, &mut b, &mut c])?;
    let (t_one, t_many, t_groups) = (
        bench::median(&times[0]),
        bench::median(&times[1]),
        bench::median(&times[2]),
    );
    let layout_ratio = paired(&times[1], &times[0]);
    let groups_ratio = paired(&times[2], &times[1]);
    println!(
        "GPT-2 small layout ({} tensors, {} elements) vs one tensor, Adam: {:.3} ms vs {:.3} ms per step, ratio {:.3}",
        specs.len(),
        total,
        ms(t_many),
        ms(t_one),
        layout_ratio
    );
    println!(
        "Same layout, AdamW with decay / no-decay groups vs one group: {:.3} ms vs {:.3} ms per step, ratio {:.3}",
        ms(t_groups),
        ms(t_many),
        groups_ratio
    );

    // Issue 16's case: 10,000 tensors of 1-300 elements. A step should cost what its bytes
    // cost, clipped or not, however many tensors there are.
    let tiny_sizes: Vec<usize> = bench::pattern(10_000, 11)
        .iter()
        .map(|x| 1 + ((x + 1.0) * 150.0) as usize % 300)
        .collect();
    let tiny_names: Vec<String> = (0..tiny_sizes.len())
        .map(|i| format!("layer{i}.bias"))
        .collect();
    let tiny_specs: Vec<(&str, usize)> = tiny_names
        .iter()
        .zip(&tiny_sizes)
        .map(|(name, &len)| (name.as_str(), len))
        .collect();
    let tiny_total: usize = tiny_sizes.iter().sum();
    let tiny = Params::zeros(&gpu, &tiny_specs)?;
    let tiny_flat = Params::zeros(&gpu, &[("flat", tiny_total)])?;
    let grads = bench::pattern(tiny_total, 2);
    let mut at = 0;
    for (name, len) in &tiny_specs {
        tiny.write_grad(name, &grads[at..at + len])?;
        at += len;
    }
    tiny_flat.write_grad("flat", &grads)?;
    let mut tiny_plain = workload.optimizer(&tiny)?.expect("Adam");
    let mut tiny_clipped = workload.optimizer(&tiny)?.expect("Adam");
    tiny_clipped.set_max_grad_norm(Some(1.0))?;
    let tiny = RefCell::new(tiny);
    for _ in 0..2 {
        tiny_plain.step(&mut tiny.borrow_mut())?;
        tiny_clipped.step(&mut tiny.borrow_mut())?;
    }
    let mut a = || tiny_plain.step(&mut tiny.borrow_mut());
    let mut b = || tiny_clipped.step(&mut tiny.borrow_mut());
    let mut c = || tiny.borrow().grad_norm(2.0).map(|_| ());
    let mut d = || tiny_flat.grad_norm(2.0).map(|_| ());
    let times = timer.time_interleaved(runs, &mut [&mut a, &mut b, &mut c, &mut d])?;
    let (t_tiny, t_tiny_clip, t_tiny_norm, t_flat_norm) = (
        bench::median(&times[0]),
        bench::median(&times[1]),
        bench::median(&times[2]),
        bench::median(&times[3]),
    );
    let tiny_clip_ratio = paired(&times[1], &times[0]);
    let tiny_norm_ratio = paired(&times[2], &times[3]);
    println!(
        "{} tensors of 1-300 elements ({tiny_total} in all), Adam + max_grad_norm vs Adam: \
         {:.3} ms vs {:.3} ms per step, ratio {:.3}",
        tiny_specs.len(),
        ms(t_tiny_clip),
        ms(t_tiny),
        tiny_clip_ratio
    );
    println!(
        "Same tensors, Params::grad_norm vs one tensor of {tiny_total} elements: {:.3} ms vs \
         {:.3} ms, ratio {:.3}",
        ms(t_tiny_norm),
        ms(t_flat_norm),
        tiny_norm_ratio
    );

    let low_precision = low_precision_table(&gpu, &mut timer, n, args.iters)?;

    if let Some(path) = &args.json {
        let doc = json!({
            "adapter": info.name,
            "backend": format!("{:?}", info.backend),
            "device_type": format!("{:?}", info.device_type),
            "driver": info.driver,
            "driver_info": info.driver_info,
            "timer": format!("{:?}", timer.mode()),
            "iters": args.iters,
            "results": rows,
            "clip": {
                "n": n,
                "runs": runs,
                "adam_s": t_plain.as_secs_f64(),
                "adam_clip_s": t_clip.as_secs_f64(),
                "ratio": ratio,
                "norm_alone_s": t_norm.as_secs_f64(),
                "norm_copy_ratio": norm_copies,
                "norm_adam_ratio": norm_adam,
            },
            "gpt2_layout": {
                "tensors": specs.len(),
                "elements": total,
                "one_tensor_s": t_one.as_secs_f64(),
                "gpt2_layout_s": t_many.as_secs_f64(),
                "ratio": layout_ratio,
                "two_groups_s": t_groups.as_secs_f64(),
                "two_groups_ratio": groups_ratio,
            },
            "many_tiny": {
                "tensors": tiny_specs.len(),
                "elements": tiny_total,
                "adam_s": t_tiny.as_secs_f64(),
                "adam_clip_s": t_tiny_clip.as_secs_f64(),
                "clip_ratio": tiny_clip_ratio,
                "grad_norm_s": t_tiny_norm.as_secs_f64(),
                "one_tensor_grad_norm_s": t_flat_norm.as_secs_f64(),
                "grad_norm_ratio": tiny_norm_ratio,
            },
        });
        let mut doc = doc;
        doc["low_precision"] = json!(low_precision);
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        println!("wrote {path}");
    }
    Ok(())
}

/// Adam on every storage path at `n` elements: bytes per element, time, the fraction of the
/// copy kernel's bandwidth in bytes, and the time against f32 Adam.
fn low_precision_table(
    gpu: &Gpu,
    timer: &mut GpuTimer,
    n: usize,
    iters: Option<usize>,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let copy = CopyKernel::new(gpu, n)?;
    let copy_scale = n as f64 / copy.elems() as f64;
    let mut rows = Vec::new();
    let mut f32_time = None;
    println!(
        "\nAdam on each storage path at {} elements (copy fraction in bytes; time against f32 Adam):\n",
        size_label(n)
    );
    println!(
        "| storage | B/elem moved | state B/elem | GPU ms/step | GB/s | copy fraction | × f32 Adam time |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for path in bench::StoragePath::all() {
        let (label, dtype, precision) = (path.label, path.dtype, path.precision);
        progress(&format!("{} Adam {label}", size_label(n)));
        let mut params = Params::builder(gpu)
            .tensor_with_data("w", &[n], dtype, &bench::pattern(n, 3))
            .build()?;
        params.write_grad("w", &bench::pattern(n, 2))?;
        let mut opt = Adam::new(&params, AdamConfig::default())?;
        opt.set_precision(precision)?;
        opt.set_state_format(path.format)?;
        let state_bytes = opt.state_memory_bytes() as f64 / n as f64;
        opt.step(&mut params)?;
        let first = timer.time(1, || opt.step(&mut params))?[0];
        let runs = iters.unwrap_or_else(|| adaptive_runs(first, 3.0, 5, 50));
        let mut step = || opt.step(&mut params);
        let mut copy_run = || {
            copy.submit();
            Ok(())
        };
        let times = timer.time_interleaved(runs, &mut [&mut step, &mut copy_run])?;
        let copies: Vec<Duration> = times[1].iter().map(|t| t.mul_f64(copy_scale)).collect();
        let bpe = path.bytes_per_element();
        let fraction = median_f64(
            times[0]
                .iter()
                .zip(&copies)
                .map(|(t, c)| {
                    (bpe as f64 * c.as_secs_f64())
                        / (COPY_BYTES_PER_ELEMENT as f64 * t.as_secs_f64())
                })
                .collect(),
        );
        let time = bench::median(&times[0]);
        let base = *f32_time.get_or_insert(time);
        let ratio = time.as_secs_f64() / base.as_secs_f64();
        println!(
            "| {label} | {bpe} | {state_bytes:.2} | {:.3} | {:.2} | {fraction:.2} | {ratio:.2} |",
            ms(time),
            bench::gb_per_s(bpe * n as u64, time),
        );
        rows.push(json!({
            "storage": label,
            "n": n,
            "bytes_per_elem": bpe,
            "state_bytes_per_elem": state_bytes,
            "runs": runs,
            "gpu_s": time.as_secs_f64(),
            "copy_fraction": fraction,
            "vs_f32_adam": ratio,
        }));
    }
    progress("");
    Ok(rows)
}

/// GPT-2 small's 148 parameter tensors (124M elements) with every size scaled to total about
/// `n` elements (at least 1 each).
fn gpt2_small_layout(n: usize) -> Vec<(String, usize)> {
    let (d, vocab, ctx, layers) = (768usize, 50257usize, 1024usize, 12);
    let mut t: Vec<(String, usize)> = vec![
        ("wte.weight".into(), vocab * d),
        ("wpe.weight".into(), ctx * d),
    ];
    for l in 0..layers {
        for (name, len) in [
            ("ln_1.weight", d),
            ("ln_1.bias", d),
            ("attn.c_attn.weight", d * 3 * d),
            ("attn.c_attn.bias", 3 * d),
            ("attn.c_proj.weight", d * d),
            ("attn.c_proj.bias", d),
            ("ln_2.weight", d),
            ("ln_2.bias", d),
            ("mlp.c_fc.weight", d * 4 * d),
            ("mlp.c_fc.bias", 4 * d),
            ("mlp.c_proj.weight", 4 * d * d),
            ("mlp.c_proj.bias", d),
        ] {
            t.push((format!("h.{l}.{name}"), len));
        }
    }
    t.push(("ln_f.weight".into(), d));
    t.push(("ln_f.bias".into(), d));
    let total: usize = t.iter().map(|x| x.1).sum();
    let scale = n as f64 / total as f64;
    t.into_iter()
        .map(|(name, len)| (name, ((len as f64 * scale).round() as usize).max(1)))
        .collect()
}

/// Show what is being measured on one terminal line (nothing when stderr is not a terminal).
fn progress(what: &str) {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r{what:<60}\r");
        let _ = err.flush();
    }
}

/// The median of `v` (NaN when empty).
fn median_f64(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let k = v.len() / 2;
    if v.len() % 2 == 1 {
        v[k]
    } else {
        (v[k - 1] + v[k]) / 2.0
    }
}

/// Runs that take about `budget_s` seconds when one takes `first`, within `[min, max]`.
fn adaptive_runs(first: Duration, budget_s: f64, min: usize, max: usize) -> usize {
    ((budget_s / first.as_secs_f64().max(1e-9)) as usize).clamp(min, max)
}
