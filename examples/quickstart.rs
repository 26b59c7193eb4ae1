//! The README's quick start: Adam on two tensors for 100 steps.
//!
//! `cargo run --release --example quickstart`
//!
//! The same code as the README's example, `vec!` included.
#![allow(clippy::useless_vec)]
use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params};

fn main() -> Result<(), wgpu_optim::Error> {
    let gpu = Gpu::new()?; // default adapter, blocking; Gpu::from_device(device, queue) for your own
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let (w0, b0) = (vec![0.5f32; 1000], vec![0.0f32; 10]);
    let mut params = Params::new(&gpu, &[("w", &w0[..]), ("b", &b0[..])])?;
    let mut opt = Adam::new(
        &params,
        AdamConfig {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    for _ in 0..100 {
        params.write_grad("w", &vec![0.1; 1000])?; // or your own kernel writes params.grad_binding("w")
        params.write_grad("b", &vec![0.1; 10])?;
        opt.step(&mut params)?;
    }
    let w: Vec<f32> = params.read("w")?;
    let m: Vec<f32> = opt.state("exp_avg", "w")?; // PyTorch's state names
    opt.set_lr(5e-4)?;
    println!("w[0] = {}, exp_avg[0] = {}, lr = {}", w[0], m[0], opt.lr());
    Ok(())
}
