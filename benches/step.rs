//! Criterion benchmarks of one optimizer step.
//!
//! `cargo bench --features bench --bench step` (add `-- Adam` etc. to filter; `WGPU_OPTIM_BENCH_LARGE=1` adds
//! 2^26 elements).
//!
//! - `step/<optimizer>/<n>`: one step of every optimizer and its costly options, and the copy
//!   kernel as the bandwidth baseline, on one tensor of n = 2^10 ... 2^24 elements. One
//!   iteration is one `step()` (or one copy) and a blocking `device.poll` until it is done, so
//!   the time is the wall time of a step on an idle queue; criterion's throughput is the bytes
//!   the step must move (`bench::Workload::bytes_per_element`). Sample counts and measurement
//!   times adapt to the adapter's speed so that the default run stays within ~10 minutes on
//!   lavapipe.
//! - `storage/Adam <path>/<n>`: Adam on every storage path (`bench::StoragePath::all`: f32,
//!   bf16 params with f32 or bf16 state, stochastic rounding, f32 master weights, f16), the
//!   throughput in the bytes that path moves (`StoragePath::bytes_per_element`).
//! - `host/...`: the host CPU time (this thread's CPU time on Linux and macOS) of `step()`
//!   alone (recording and submitting) for a parameter set of 1000 tensors; the GPU work is
//!   waited for every `WGPU_OPTIM_BENCH_WAIT_EVERY` (default 8) steps, outside the timed
//!   region.
//!
//! GPU time from timestamp queries, and the fraction of the copy kernel's bandwidth, are in
//! `examples/throughput.rs`.
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use wgpu_optim::bench::{self, CopyKernel, Workload};
use wgpu_optim::{AdamConfig, Gpu, Optimizer, Params};

/// Steps between two waits for the GPU in the host-time benchmarks (default 8; override with
/// `WGPU_OPTIM_BENCH_WAIT_EVERY`).
fn wait_every() -> u64 {
    std::env::var("WGPU_OPTIM_BENCH_WAIT_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
        .max(1)
}

fn gpu() -> Gpu {
    let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e}"));
    let info = gpu.info();
    eprintln!(
        "adapter: {} ({:?}), driver: {} {}",
        info.name, info.backend, info.driver, info.driver_info
    );
    gpu
}

fn wait(gpu: &Gpu) {
    gpu.device()
        .poll(wgpu_optim::wgpu::PollType::wait_indefinitely())
        .expect("device lost");
}

/// Whether benchmark `id` may be selected by the command line's filter (criterion's first
/// positional argument, a regex): a plain filter must be a substring of the id, anything with
/// regex syntax selects all. Saves the setup of benchmarks that will not run.
fn selected(id: &str) -> bool {
    let mut args = std::env::args().skip(1);
    let mut filter = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            // Options of criterion's CLI that take a value.
            "--save-baseline"
            | "--baseline"
            | "--baseline-lenient"
            | "--load-baseline"
            | "--sample-size"
            | "--warm-up-time"
            | "--measurement-time"
            | "--nresamples"
            | "--noise-threshold"
            | "--confidence-level"
            | "--significance-level"
            | "--profile-time"
            | "--output-format"
            | "--color"
            | "--format"
            | "--plotting-backend"
            | "--skip" => {
                args.next();
            }
            _ if a.starts_with('-') => {}
            _ => {
                filter = Some(a);
                break;
            }
        }
    }
    match filter {
        None => true,
        Some(f) if f.contains(|c: char| "\\.^$|?*+()[]{}".contains(c)) => true,
        Some(f) => id.contains(&f),
    }
}

fn sizes() -> Vec<usize> {
    let mut s = vec![1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 24];
    if std::env::var("WGPU_OPTIM_BENCH_LARGE").is_ok_and(|v| v == "1") {
        s.push(1 << 26);
    }
    s
}

/// One iteration of a workload: submit, then wait until the GPU is done.
fn one(gpu: &Gpu, run: &mut dyn FnMut()) {
    run();
    wait(gpu);
}

fn steps(c: &mut Criterion) {
    if !sizes().iter().any(|n| {
        Workload::standard()
            .iter()
            .any(|w| selected(&format!("step/{}/{n}", w.label())))
    }) {
        return;
    }
    let gpu = gpu();
    for n in sizes() {
        for w in Workload::standard() {
            if !selected(&format!("step/{}/{n}", w.label())) {
                continue;
            }
            let mut group = c.benchmark_group(format!("step/{}", w.label()));
            group.throughput(Throughput::Bytes(w.bytes_per_element() * n as u64));
            // Prepare the work, then size the run from the time of one iteration.
            let copy;
            let mut params;
            let mut opt: Option<Box<dyn Optimizer>> = None;
            let mut run: Box<dyn FnMut()> = if w.is_copy() {
                copy = CopyKernel::new(&gpu, n).expect("copy kernel");
                Box::new(|| copy.submit())
            } else {
                params = Params::zeros(&gpu, &[("w", n)]).expect("params");
                params.write_grad("w", &bench::pattern(n, 2)).expect("grad");
                let o = opt.insert(w.optimizer(&params).expect("optimizer").unwrap());
                Box::new(move || o.step(&mut params).expect("step"))
            };
            one(&gpu, &mut *run);
            let t0 = Instant::now();
            one(&gpu, &mut *run);
            let once = t0.elapsed();
            configure(&mut group, once);
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| one(&gpu, &mut *run))
            });
            group.finish();
        }
    }
}

/// Adam on every storage path ([`bench::StoragePath::all`]): `storage/<path>/<n>`, throughput
/// in the bytes that path moves.
fn storage(c: &mut Criterion) {
    let paths = bench::StoragePath::all();
    let id = |p: &bench::StoragePath, n: usize| format!("storage/Adam {}/{n}", p.label);
    if !sizes()
        .iter()
        .any(|&n| paths.iter().any(|p| selected(&id(p, n))))
    {
        return;
    }
    let gpu = gpu();
    for n in sizes() {
        for path in &paths {
            if !selected(&id(path, n)) {
                continue;
            }
            let mut group = c.benchmark_group(format!("storage/Adam {}", path.label));
            group.throughput(Throughput::Bytes(path.bytes_per_element() * n as u64));
            let mut params = Params::builder(&gpu)
                .tensor_with_data("w", &[n], path.dtype, &bench::pattern(n, 3))
                .build()
                .expect("params");
            params.write_grad("w", &bench::pattern(n, 2)).expect("grad");
            let mut opt = wgpu_optim::Adam::new(&params, AdamConfig::default()).expect("adam");
            opt.set_precision(path.precision).expect("precision");
            opt.set_state_format(path.format).expect("state format");
            let mut run = || opt.step(&mut params).expect("step");
            one(&gpu, &mut run);
            let t0 = Instant::now();
            one(&gpu, &mut run);
            let once = t0.elapsed();
            configure(&mut group, once);
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| one(&gpu, &mut run))
            });
            group.finish();
        }
    }
}

/// Sampling for an iteration that takes `once`: for slow steps (> 20 ms), 10 samples of one
/// iteration each (flat sampling; criterion may say it needs a little longer than the target
/// time), for fast ones criterion's linear sampling, 20 samples in about a second.
fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    once: Duration,
) {
    group.sample_size(10);
    if once > Duration::from_millis(20) {
        group.sampling_mode(SamplingMode::Flat);
        group.warm_up_time(once.mul_f64(1.5));
        group.measurement_time(once.mul_f64(7.0));
    } else {
        group.sampling_mode(SamplingMode::Auto);
        group.sample_size(20);
        group.warm_up_time(Duration::from_millis(200));
        group.measurement_time(Duration::from_secs(1).max(once.mul_f64(230.0)));
    }
}

/// The clock of the host benchmarks: this thread's CPU time where the platform has it, so that
/// neither waiting in the driver nor being preempted by a CPU adapter's (lavapipe's) worker
/// threads counts; wall time elsewhere.
mod host_clock {
    use std::time::Duration;

    #[cfg(all(
        target_pointer_width = "64",
        any(target_os = "linux", target_os = "macos")
    ))]
    mod imp {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
        }
        #[cfg(target_os = "linux")]
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        #[cfg(target_os = "macos")]
        const CLOCK_THREAD_CPUTIME_ID: i32 = 16;
        pub const NAME: &str = "thread CPU time";

        pub fn now() -> std::time::Duration {
            let mut t = Timespec { sec: 0, nsec: 0 };
            // SAFETY: clock_gettime writes one timespec (two 64-bit fields on these targets).
            let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
            assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
            std::time::Duration::new(t.sec as u64, t.nsec as u32)
        }
    }

    #[cfg(not(all(
        target_pointer_width = "64",
        any(target_os = "linux", target_os = "macos")
    )))]
    mod imp {
        pub const NAME: &str = "wall time";

        pub fn now() -> std::time::Duration {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START.get_or_init(std::time::Instant::now).elapsed()
        }
    }

    pub use imp::NAME;

    /// The clock's current reading.
    pub fn now() -> Duration {
        imp::now()
    }
}

/// Host CPU time of `step()` alone (recording and submitting one step), for 1000 tensors: one
/// arena chunk, so one dispatch per step however many tensors. 1000 × 1000 elements as in a
/// small model; 1000 × 16 elements has the same host work with so little GPU work that a CPU
/// adapter does not flush the host's caches between steps (as a discrete GPU would not).
/// `host/copy_submit` is the floor: one copy dispatch recorded and submitted, nothing else.
fn host(c: &mut Criterion) {
    let cases = [
        ("adam/1000x1000", 1000, false),
        ("adam/1000x16", 16, false),
        ("adam_clip/1000x16", 16, true),
    ];
    let any = cases.iter().any(|(id, ..)| selected(&format!("host/{id}")));
    if !any && !selected("host/copy_submit") {
        return;
    }
    let gpu = gpu();
    eprintln!("host benchmarks measure {}", host_clock::NAME);
    let every = wait_every();
    let mut group = c.benchmark_group("host");
    group.sample_size(10);
    // Criterion sizes runs by wall time, which here is mostly the GPU work of each step.
    group.warm_up_time(Duration::from_millis(500));
    let names: Vec<String> = (0..1000).map(|i| format!("layer{i}.weight")).collect();
    for (id, len, clip) in cases {
        if !selected(&format!("host/{id}")) {
            continue;
        }
        let specs: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), len)).collect();
        let mut params = Params::zeros(&gpu, &specs).expect("params");
        for n in &names {
            params.write_grad(n, &bench::pattern(len, 5)).expect("grad");
        }
        let mut opt = Workload::new(AdamConfig::default())
            .optimizer(&params)
            .expect("optimizer")
            .unwrap();
        if clip {
            opt.set_max_grad_norm(Some(1.0)).expect("clip");
        }
        opt.step(&mut params).expect("step");
        wait(&gpu);
        group.measurement_time(Duration::from_secs(if len > 100 { 6 } else { 3 }));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for k in 0..iters {
                    let t = host_clock::now();
                    opt.step(&mut params).expect("step");
                    total += host_clock::now() - t;
                    if k % every == every - 1 {
                        wait(&gpu);
                    }
                }
                wait(&gpu);
                total
            })
        });
    }
    if selected("host/copy_submit") {
        let copy = CopyKernel::new(&gpu, 16 * 1024).expect("copy");
        group.measurement_time(Duration::from_secs(2));
        group.bench_function("copy_submit", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for k in 0..iters {
                    let t = host_clock::now();
                    copy.submit();
                    total += host_clock::now() - t;
                    if k % every == every - 1 {
                        wait(&gpu);
                    }
                }
                wait(&gpu);
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, steps, storage, host);
criterion_main!(benches);
