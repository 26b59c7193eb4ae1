//! Linear regression by SGD with momentum on the diabetes data set (442 patients, 10 features,
//! from the `linfa-datasets` crate): standardised features, forward and backward as WGSL kernels
//! bound to the `Params` arena, and a learning-rate schedule. Prints the test MSE next to the
//! closed-form least-squares solution's (f64 normal equations on the CPU).
//!
//! `cargo run --release --example linear_regression`

#[path = "nn/mod.rs"]
mod nn;

use nn::{Loss, Mlp};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use wgpu_optim::{ExponentialLR, Gpu, LrScheduler, Optimizer, Scheduler, Sgd, SgdConfig};

/// Least squares with an intercept: solve (A^T A) w = A^T y by Gaussian elimination in f64.
fn least_squares(x: &[f32], y: &[f32], f: usize) -> Vec<f64> {
    let n = y.len();
    let k = f + 1;
    let mut m = vec![vec![0.0f64; k + 1]; k];
    for i in 0..n {
        let row: Vec<f64> = x[i * f..(i + 1) * f]
            .iter()
            .map(|&v| v as f64)
            .chain([1.0])
            .collect();
        for a in 0..k {
            for b in 0..k {
                m[a][b] += row[a] * row[b];
            }
            m[a][k] += row[a] * y[i] as f64;
        }
    }
    for c in 0..k {
        let p = (c..k)
            .max_by(|&a, &b| m[a][c].abs().total_cmp(&m[b][c].abs()))
            .unwrap();
        m.swap(c, p);
        let pivot = m[c].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != c {
                let q = row[c] / pivot[c];
                for (v, p) in row.iter_mut().zip(&pivot).skip(c) {
                    *v -= q * p;
                }
            }
        }
    }
    (0..k).map(|i| m[i][k] / m[i][i]).collect()
}

fn mse_of(w: &[f64], x: &[f32], y: &[f32], f: usize, y_scale: f64) -> f64 {
    let n = y.len();
    (0..n)
        .map(|i| {
            let p: f64 = (0..f).map(|j| w[j] * x[i * f + j] as f64).sum::<f64>() + w[f];
            ((p - y[i] as f64) * y_scale).powi(2)
        })
        .sum::<f64>()
        / n as f64
}

fn main() -> Result<(), wgpu_optim::Error> {
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let ds = linfa_datasets::diabetes();
    let f = ds.records.ncols();
    let n = ds.records.nrows();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let mut x: Vec<f32> = order
        .iter()
        .flat_map(|&i| {
            ds.records
                .row(i)
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let y_raw: Vec<f64> = order.iter().map(|&i| ds.targets[i]).collect();
    let n_test = n / 5;
    let n_train = n - n_test;
    // Standardise features and target with training statistics.
    nn::standardize(&mut x, f, n_test..n);
    let mean = y_raw[n_test..].iter().sum::<f64>() / n_train as f64;
    let std = (y_raw[n_test..]
        .iter()
        .map(|v| (v - mean).powi(2))
        .sum::<f64>()
        / n_train as f64)
        .sqrt();
    let y: Vec<f32> = y_raw.iter().map(|v| ((v - mean) / std) as f32).collect();
    let (test_x, train_x) = x.split_at(n_test * f);
    let (test_y, train_y) = y.split_at(n_test);
    println!("diabetes: {n_train} train, {n_test} test, {f} standardised features");

    let batch = 32;
    let mut net = Mlp::new(
        &gpu,
        &[f, 1],
        Loss::Mse,
        (train_x, train_y),
        (test_x, test_y),
        batch,
        &mut rng,
    )?;
    let cfg = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        ..Default::default()
    };
    let mut opt = Sgd::new(&net.params, cfg)?;
    let mut sched = Scheduler::new(&mut opt, ExponentialLR::new(0.98))?; // stepped per epoch
    let epochs = 200;
    for epoch in 0..epochs {
        net.shuffle(&mut rng);
        for k in 0..net.batches_per_epoch() {
            net.forward_backward(k);
            opt.step(&mut net.params)?;
        }
        sched.step(&mut opt)?;
        if epoch % 40 == 39 {
            let (loss, _) = net.take_train_stats();
            println!(
                "epoch {:3}: train MSE {:8.1}  lr {:.4}",
                epoch + 1,
                loss as f64 * std * std,
                opt.lr()
            );
        }
    }
    let (test_mse, _) = net.evaluate();
    let sgd_mse = test_mse as f64 * std * std;
    let w = least_squares(train_x, train_y, f);
    let closed = mse_of(&w, test_x, test_y, f, std);
    println!(
        "test MSE: SGD {sgd_mse:.1}, closed-form least squares {closed:.1} ({:+.2}%)",
        100.0 * (sgd_mse / closed - 1.0)
    );
    Ok(())
}
