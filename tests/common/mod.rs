//! Shared test harness: a real adapter (or a loud failure), fresh random data, and a generic
//! GPU-vs-CPU-reference runner.
#![allow(dead_code)]

use ndarray::Array1;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::OnceLock;
use wgpu_optim::reference::{self, State};
use wgpu_optim::{Gpu, Optim, Optimizer, OptimizerConfig, Params};

/// `(name, values)` pairs for `Params::new` from parallel lists of names and values.
pub fn named<'a>(
    names: impl IntoIterator<Item = &'a str>,
    values: &'a [Vec<f32>],
) -> Vec<(&'a str, &'a [f32])> {
    names
        .into_iter()
        .zip(values.iter().map(|v| &v[..]))
        .collect()
}

/// The adapter every test runs on. No adapter is a test failure that says how to get one.
pub fn gpu() -> Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = Gpu::new().unwrap_or_else(|e| {
            panic!(
                "these tests need a real GPU adapter and none was found: {e}\n\
                 On Linux without a GPU: `apt-get install -y mesa-vulkan-drivers` (lavapipe)."
            )
        });
        let i = gpu.info();
        eprintln!(
            "adapter: {} ({:?}, driver {} {})",
            i.name, i.backend, i.driver, i.driver_info
        );
        gpu
    })
    .clone()
}

/// A fresh seed per run (printed, and overridable with TEST_SEED to reproduce a failure).
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// Normal-ish random values (sum of uniforms), never all zero.
pub fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            (rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5) * 2.0 * scale
        })
        .collect()
}

pub type RefFn<C> = fn(&C, &mut Array1<f32>, &Array1<f32>, &mut State);

/// Relative tolerance per element after the run. The kernels use the same f32 operations in
/// the same order as the reference; what differs is the GPU's division (WGSL allows 2.5 ULP),
/// sqrt (not promised correctly rounded) and possible fused multiply-adds, a few ULP per step
/// that compound over the steps of a run.
pub const RTOL: f32 = 2e-5;

pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], atol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (&a, &b)) in gpu.iter().zip(cpu).enumerate() {
        let err = (a - b).abs();
        let allowed = atol + RTOL * b.abs();
        assert!(
            err <= allowed && a.is_finite() == b.is_finite(),
            "{what}[{i}] of {}: gpu {a} vs cpu {b} (err {err:e} > {allowed:e})",
            gpu.len()
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
    if worst.0 > 0.0 {
        eprintln!("{what}: worst |gpu - cpu| = {:e} at {}", worst.0, worst.1);
    }
}

/// Run `steps` steps of `cfg` on tensors of `sizes` on the GPU and in the reference, with fresh
/// random gradients each step, and compare params and every state buffer at the end.
pub fn run_vs_reference<C: OptimizerConfig>(
    name: &str,
    cfg: C,
    reference: RefFn<C>,
    sizes: &[usize],
    steps: usize,
    max_chunk_bytes: u64,
) {
    let mut rng = rng(name);
    let names: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("t{i}_{n}"))
        .collect();
    let init: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let tensors = named(names.iter().map(|n| n.as_str()), &init);
    let gpu = gpu();
    reference::set_fused_multiply_add(gpu.fused_multiply_add());
    let mut params = Params::with_max_chunk_bytes(&gpu, &tensors, max_chunk_bytes).unwrap();
    let mut opt = Optim::new(&params, cfg.clone()).unwrap();
    let mut cpu_p: Vec<Array1<f32>> = init.iter().map(|v| Array1::from(v.clone())).collect();
    let mut cpu_s: Vec<State> = sizes.iter().map(|&n| State::new(&cfg, n)).collect();
    for step in 0..steps {
        // Gradient magnitudes vary by step so eps and the moments' history both matter.
        let scale = [1.0, 0.1, 3.0, 1e-3][step % 4];
        for (i, n) in names.iter().enumerate() {
            let g = randn(&mut rng, sizes[i], scale);
            params.write_grad(n, &g).unwrap();
            reference(&cfg, &mut cpu_p[i], &Array1::from(g), &mut cpu_s[i]);
        }
        opt.step(&mut params).unwrap();
    }
    assert_eq!(opt.step_count(), steps as u64);
    let keys = opt.state_keys();
    for (i, n) in names.iter().enumerate() {
        assert_close(
            &format!("{name} {n} param"),
            &params.read(n).unwrap(),
            cpu_p[i].as_slice().unwrap(),
            1e-6,
        );
        assert_eq!(keys, cpu_s[i].keys(), "{name}: state keys");
        for k in &keys {
            let want = cpu_s[i].get(k).unwrap();
            assert_close(
                &format!("{name} {n} {k}"),
                &opt.state(k, n).unwrap(),
                want.as_slice().unwrap(),
                1e-6,
            );
        }
    }
}

/// The sizes every option combination runs on: edge cases around vec4, 64 and 256.
pub const SIZES: &[usize] = &[1, 3, 4, 5, 63, 64, 65, 1000, (1 << 20) + 3];
