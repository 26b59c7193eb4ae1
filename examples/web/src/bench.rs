//! Time per fused optimizer step, the same way in a browser and natively: `steps` steps
//! submitted back to back after a warm-up, then one tiny read-back queued behind them, whose
//! arrival ends the clock. The read-back's latency is shared by all the steps (use enough).

use wgpu_optim::{DType, Error, Gpu, Params};

/// Milliseconds per step of the page's optimizer `kind` (see [`crate::optimizer`]) on fresh
/// tensors of `shapes`, random values and gradients; `now` is a clock in milliseconds.
pub async fn step_time(
    gpu: &Gpu,
    kind: &str,
    shapes: &[(String, Vec<usize>)],
    clip: bool,
    steps: u32,
    now: impl Fn() -> f64,
) -> Result<f64, Error> {
    let mut builder = Params::builder(gpu);
    for (name, shape) in shapes {
        builder = builder.tensor(name, shape, DType::F32);
    }
    let mut params = builder.build()?;
    let mut x = 0x2545_f491u32;
    let mut noise = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    };
    for (name, shape) in shapes {
        let n = shape.iter().product();
        params.write(name, &noise(n))?;
        params.write_grad(name, &noise(n))?;
    }
    let mut opt = crate::optimizer(kind, &params, clip)?;
    let fence = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("step time fence"),
        size: 16,
        usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    // Warm-up: pipelines compiled, bind groups and state made.
    for _ in 0..3 {
        opt.step(&mut params)?;
    }
    gpu.read_buffer_f32_async(&fence, 1).await?;
    let t0 = now();
    for _ in 0..steps.max(1) {
        opt.step(&mut params)?;
    }
    gpu.read_buffer_f32_async(&fence, 1).await?;
    Ok((now() - t0) / steps.max(1) as f64)
}

/// The benchmark's rows: (optimizer, clipped).
pub const ROWS: [(&str, bool); 6] = [
    ("adam", false),
    ("adam", true),
    ("sgd", false),
    ("rmsprop", false),
    ("adagrad", false),
    ("adamw", false),
];

/// The benchmark's tensor sizes (elements of one f32 tensor).
pub const SIZES: &[usize] = &[1 << 12, 1 << 16, 1 << 20];

/// Steps timed at `n` elements: enough that the closing read-back's latency is a small share.
pub fn steps_for(n: usize) -> u32 {
    if n >= 1 << 20 {
        20
    } else {
        100
    }
}
