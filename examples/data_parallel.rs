//! Data-parallel training with sharded optimizer state (ZeRO stage 1) over MPI: the digits MLP
//! of `mlp_classifier` (64-64-10, AdamW, clipping at 1.0, warm-up then cosine decay), with
//! every global batch of 64 split over the ranks. Each rank runs forward and backward on its
//! part of the batch on its own GPU; `Sharded` averages the gradients, clips by the global
//! norm, steps its shard of the Adam state and all-gathers the parameters.
//!
//! ```text
//! cargo build --release --features mpi --example data_parallel
//! mpirun -np 2 target/release/examples/data_parallel      # as root: --allow-run-as-root
//! mpirun -np 1 target/release/examples/data_parallel      # the same training on one rank
//! ```
//!
//! `--bench ELEMENTS STEPS` replaces the MLP by one tensor of ELEMENTS parameters with fixed
//! gradients and times STEPS sharded AdamW steps with clipping after 3 warm-up steps (the
//! numbers in BENCHMARKS.md).

#[path = "nn/mod.rs"]
mod nn;

use nn::{Loss, Mlp};
use rand::SeedableRng;
use wgpu_optim::distributed::{mpi, Sharded, StepStats};
use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer};

use mpi::collective::CommunicatorCollectives;
use mpi::topology::Communicator;

const GLOBAL_BATCH: usize = 64;

fn main() -> Result<(), wgpu_optim::Error> {
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let (rank, ranks) = (world.rank() as usize, world.size() as usize);
    let gpu = Gpu::new()?;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bench") {
        let num = |k: usize| args.get(i + k).and_then(|s| s.parse::<usize>().ok());
        let (Some(elems), Some(steps)) = (num(1), num(2)) else {
            eprintln!("usage: data_parallel --bench ELEMENTS STEPS");
            std::process::exit(2);
        };
        return bench(&world, &gpu, elems, steps);
    }
    if !GLOBAL_BATCH.is_multiple_of(ranks) {
        if rank == 0 {
            eprintln!(
                "the global batch of {GLOBAL_BATCH} must split evenly: use 1, 2, 4, 8, ... ranks"
            );
        }
        std::process::exit(2);
    }
    // The same seed on every rank: the same split, initial weights and epoch orders.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let ((train_x, train_y), (test_x, test_y)) = nn::digits_split(&mut rng);
    let mut net = Mlp::new(
        &gpu,
        &[64, 64, 10],
        Loss::SoftmaxXent,
        (&train_x, &train_y),
        (&test_x, &test_y),
        GLOBAL_BATCH / ranks,
        &mut rng,
    )?;
    if rank == 0 {
        println!(
            "{ranks} rank(s) on {} ({:?}); digits: {} train, {} test; {} samples per rank per batch",
            gpu.info().name,
            gpu.info().backend,
            train_y.len(),
            test_y.len(),
            GLOBAL_BATCH / ranks
        );
    }
    let peak = 3e-3;
    let mut opt = Sharded::new(
        &world,
        &net.params,
        AdamConfig {
            lr: peak,
            weight_decay: 1e-4,
            ..AdamConfig::adamw()
        },
    )?;
    opt.set_max_grad_norm(Some(1.0))?;
    let batches = train_y.len() / GLOBAL_BATCH;
    let epochs = 30;
    let steps = epochs * batches;
    // Linear warm-up over the first 10% of the steps from 1% of the peak, then cosine to zero
    // (as mlp_classifier's LinearLR + CosineAnnealingLR).
    let warmup = steps / 10;
    let lr_at = |t: usize| -> f32 {
        if t < warmup {
            peak * (0.01 + 0.99 * t as f32 / warmup as f32)
        } else {
            let x = (t - warmup) as f64 / (steps - warmup) as f64;
            (peak as f64 * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())) as f32
        }
    };
    let mut total = StepStats::default();
    let mut t = 0;
    let start = std::time::Instant::now();
    for _ in 0..epochs {
        net.shuffle_shard(&mut rng, rank, ranks);
        for k in 0..batches {
            opt.set_lr(lr_at(t))?;
            net.forward_backward(k);
            opt.step(&mut net.params)?;
            add(&mut total, &opt.last_step_stats());
            t += 1;
        }
    }
    world.barrier();
    let wall = start.elapsed();
    let (loss, acc) = net.evaluate();
    if rank == 0 {
        println!(
            "test: loss {loss:.4}, accuracy {:.2}% after {steps} AdamW steps (last grad norm {:.3})",
            100.0 * acc,
            opt.last_grad_norm().unwrap_or(f32::NAN)
        );
        report(&opt, &total, wall, steps);
    }
    Ok(())
}

/// Time `steps` sharded AdamW steps with clipping over one tensor of `elems` parameters.
fn bench(
    world: &impl Communicator,
    gpu: &Gpu,
    elems: usize,
    steps: usize,
) -> Result<(), wgpu_optim::Error> {
    let w: Vec<f32> = (0..elems)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let mut params = wgpu_optim::Params::new(gpu, &[("w", &w[..])])?;
    let rank = world.rank();
    let g: Vec<f32> = (0..elems)
        .map(|i| (((i * 31 + rank as usize * 7) % 101) as f32 - 50.0) * 1e-4)
        .collect();
    params.write_grad("w", &g)?;
    let mut opt = Sharded::new(world, &params, AdamConfig::adamw())?;
    opt.set_max_grad_norm(Some(1.0))?;
    for _ in 0..3 {
        opt.step(&mut params)?;
    }
    world.barrier();
    let mut total = StepStats::default();
    let start = std::time::Instant::now();
    for _ in 0..steps {
        opt.step(&mut params)?;
        add(&mut total, &opt.last_step_stats());
    }
    params.read("w")?; // the GPU's last work done
    world.barrier();
    let wall = start.elapsed();
    if rank == 0 {
        println!(
            "{} rank(s) on {}: {elems} parameters, {steps} steps",
            world.size(),
            gpu.info().name
        );
        report(&opt, &total, wall, steps);
    }
    if world.size() == 1 {
        // The same steps with one GPU's plain optimizer, for the cost of the sharded path.
        let mut plain = Adam::new(&params, AdamConfig::adamw())?;
        plain.set_max_grad_norm(Some(1.0))?;
        for _ in 0..3 {
            plain.step(&mut params)?;
        }
        params.read("w")?;
        let start = std::time::Instant::now();
        for _ in 0..steps {
            plain.step(&mut params)?;
        }
        params.read("w")?;
        println!(
            "plain Adam (one GPU, clipping on the GPU): {:.3} ms per step",
            start.elapsed().as_secs_f64() * 1e3 / steps as f64
        );
    }
    Ok(())
}

/// Print rank 0's averages per step.
fn report(opt: &Sharded<AdamConfig>, total: &StepStats, wall: std::time::Duration, steps: usize) {
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e3 / steps as f64;
    println!(
            "per step on rank 0: {:.3} ms in all ({:.3} ms of it in the optimizer step): read-back {:.3}, \
             reduce-scatter {:.3}, host sums {:.3}, norm exchange {:.3}, shard update {:.3}, \
             all-gather {:.3}, upload {:.3} ms",
            wall.as_secs_f64() * 1e3 / steps as f64,
            per(total.total),
            per(total.read_back),
            per(total.reduce_scatter),
            per(total.host_math),
            per(total.norm_exchange),
            per(total.update),
            per(total.all_gather),
            per(total.upload),
        );
    let params: usize = opt.plan().total_len();
    println!(
        "bytes per step on rank 0: received {}, sent {} ({} parameters, {} bytes of f32); \
             optimizer state on this rank: {} bytes",
        total.bytes_received / steps as u64,
        total.bytes_sent / steps as u64,
        params,
        params * 4,
        opt.state_bytes()
    );
}

fn add(total: &mut StepStats, s: &StepStats) {
    total.read_back += s.read_back;
    total.reduce_scatter += s.reduce_scatter;
    total.host_math += s.host_math;
    total.norm_exchange += s.norm_exchange;
    total.update += s.update;
    total.all_gather += s.all_gather;
    total.upload += s.upload;
    total.total += s.total;
    total.bytes_received += s.bytes_received;
    total.bytes_sent += s.bytes_sent;
}
