//! `wgpu_optim::distributed::Sharded` over real MPI ranks, each with its own wgpu device.
//!
//! `cargo test --release --features mpi --test distributed` runs this file as a launcher: it
//! starts itself under `mpirun -np 1`, `-np 2` and `-np 3` (Open MPI: `--allow-run-as-root
//! --oversubscribe`; `MPIRUN` names another launcher), each with a time limit, so a hang is a
//! failure, never a stuck CI. Under `mpirun` (Open MPI's or MPICH's rank variables set) it is a
//! worker: every rank runs every case below in order, and a failed assertion on any rank
//! aborts the whole job (`MPI_Abort`) with its message.
//!
//! Fresh random data each run: rank 0 draws the seed and broadcasts it; `TEST_SEED` replays one.
//! The launcher checks across rank counts too: the case whose averaged gradients are the same
//! for every rank count must end with the same bits for 1, 2 and 3 ranks, and a second 2-rank
//! run must repeat the first bit for bit.

use mpi::collective::{CommunicatorCollectives, Root};
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wgpu_optim::checkpoint;
use wgpu_optim::distributed::{ShardPlan, Sharded};
use wgpu_optim::{
    Adam, AdamConfig, Error, Gpu, GradScaler, NormType, Optimizer, Params, ScalerConfig, Sgd,
    SgdConfig,
};

/// Awkward sizes: not multiples of 4/64/1024, a tiny tensor, one cut by every shard boundary.
const TENSORS: &[(&str, usize)] = &[
    ("emb", 3001),
    ("fc.weight", 4097),
    ("fc.bias", 3),
    ("norm", 70),
    ("out.weight", 2050),
    ("out.bias", 1),
];
const STEPS: usize = 20;

fn main() {
    if rank_env().is_some() {
        worker();
    } else {
        launcher();
    }
}

fn rank_env() -> Option<String> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
}

// ---------------------------------------------------------------- launcher

fn launcher() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::env::temp_dir().join(format!("wgpu-optim-distributed-{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("a scratch folder");
    let seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("distributed: seed {seed} (TEST_SEED={seed} replays it)");
    let mpirun = std::env::var("MPIRUN").unwrap_or_else(|_| "mpirun".into());
    let (mut passed, mut failed) = (0, 0);
    let mut runs = Vec::new();
    for (label, np) in [("np1", 1), ("np2", 2), ("np3", 3), ("np2-again", 2)] {
        let mut cmd = Command::new(&mpirun);
        if mpirun == "mpirun" && is_open_mpi(&mpirun) {
            cmd.args(["--allow-run-as-root", "--oversubscribe"]);
        }
        cmd.args(["-np", &np.to_string()])
            .arg(&exe)
            .env("TEST_SEED", seed.to_string())
            .env("DISTRIBUTED_OUT", out.join(label))
            .stdin(Stdio::null());
        let t = Instant::now();
        let ok = run_with_limit(cmd, Duration::from_secs(600));
        eprintln!(
            "distributed: {label} ({np} ranks): {} in {:.1} s",
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if ok {
            passed += 1;
            runs.push((
                label,
                std::fs::read_to_string(out.join(label)).unwrap_or_default(),
            ));
        } else {
            failed += 1;
        }
    }
    // The same final bits for every rank count (averaged gradients that do not depend on it),
    // and on a second run.
    if runs.len() == 4 {
        let line = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("same-any-n "))
                .map(str::to_string)
        };
        let first = line(&runs[0].1);
        let agree = first.is_some() && runs.iter().all(|(_, s)| line(s) == first);
        let repeat = runs[1].1 == runs[3].1 && !runs[1].1.is_empty();
        for (what, ok) in [
            ("same bits for 1, 2 and 3 ranks", agree),
            ("a second run repeats the first", repeat),
        ] {
            eprintln!("distributed: {what}: {}", if ok { "ok" } else { "FAILED" });
            if ok {
                passed += 1;
            } else {
                failed += 1;
                for (label, s) in &runs {
                    eprintln!("  {label}: {s}");
                }
            }
        }
    } else {
        failed += 2;
    }
    let _ = std::fs::remove_dir_all(&out);
    println!("distributed: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn is_open_mpi(mpirun: &str) -> bool {
    Command::new(mpirun)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("Open MPI"))
        .unwrap_or(false)
}

/// Run `cmd`, killing it past `limit`; true when it exits 0 in time.
fn run_with_limit(mut cmd: Command, limit: Duration) -> bool {
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("distributed: cannot start mpirun ({e}); install openmpi-bin");
            return false;
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if start.elapsed() > limit => {
                eprintln!("distributed: killed after {limit:?} (a hang)");
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------- worker

/// A named test case, run on every rank.
type Case = (&'static str, fn(&mut Ctx));

struct Ctx {
    world: SimpleCommunicator,
    rank: usize,
    n: usize,
    gpu: Gpu,
    seed: u64,
    out: Vec<String>,
}

fn worker() {
    let universe = mpi::initialize().expect("MPI initialises");
    let world = universe.world();
    let (rank, n) = (world.rank() as usize, world.size() as usize);
    // A failed assertion on any rank ends the whole job at once, with its message.
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("rank {rank}: {info}");
        mpi::topology::SimpleCommunicator::world().abort(1);
    }));
    let gpu = Gpu::new().unwrap_or_else(|e| {
        panic!(
            "these tests need a GPU adapter: {e}. On Linux: apt-get install -y mesa-vulkan-drivers"
        )
    });
    let mut seed: u64 = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    world.process_at_rank(0).broadcast_into(&mut seed);
    if rank == 0 {
        eprintln!(
            "{n} ranks on {} ({:?}), seed {seed}",
            gpu.info().name,
            gpu.info().backend
        );
    }
    let mut ctx = Ctx {
        world,
        rank,
        n,
        gpu,
        seed,
        out: Vec::new(),
    };
    let cases: &[Case] = &[
        (
            "adam_clipping_matches_one_gpu",
            adam_clipping_matches_one_gpu,
        ),
        ("sgd_momentum_matches_one_gpu", sgd_momentum_matches_one_gpu),
        (
            "inf_and_l1_norms_clip_as_one_gpu",
            inf_and_l1_norms_clip_as_one_gpu,
        ),
        ("same_bits_for_any_rank_count", same_bits_for_any_rank_count),
        (
            "scaler_skips_overflow_on_every_rank",
            scaler_skips_overflow_on_every_rank,
        ),
        (
            "scaler_tracker_saturates_as_one_gpu",
            scaler_tracker_saturates_as_one_gpu,
        ),
        ("state_memory_is_one_nth", state_memory_is_one_nth),
        (
            "tiny_model_leaves_ranks_empty",
            tiny_model_leaves_ranks_empty,
        ),
        ("checkpoint_reshards_exactly", checkpoint_reshards_exactly),
        (
            "mismatches_are_errors_on_every_rank",
            mismatches_are_errors_on_every_rank,
        ),
    ];
    for (name, case) in cases {
        let t = Instant::now();
        case(&mut ctx);
        ctx.world.barrier();
        if rank == 0 {
            eprintln!(
                "  {name} ({n} ranks): ok in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }
    if rank == 0 {
        if let Ok(path) = std::env::var("DISTRIBUTED_OUT") {
            std::fs::write(path, ctx.out.join("\n")).expect("the launcher's scratch file");
        }
    }
}

fn rng(ctx: &Ctx, what: u64) -> StdRng {
    StdRng::seed_from_u64(ctx.seed ^ what.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Uniform in (-scale, scale) with every mantissa bit random (drawn in f64, rounded to f32), so
/// that sums of them round and their order shows.
fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * scale as f64) as f32)
        .collect()
}

/// Values with few mantissa bits (k / 2^14, |k| <= 2^12): N of them add exactly, and their sum
/// divided by N (N <= 3) is exact too.
fn coarse(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-4096i32..=4096) as f32 / 16384.0)
        .collect()
}

fn specs() -> Vec<(&'static str, usize)> {
    TENSORS.to_vec()
}

fn init_values(ctx: &Ctx) -> Vec<Vec<f32>> {
    let mut r = rng(ctx, 1);
    TENSORS
        .iter()
        .map(|&(_, len)| randn(&mut r, len, 1.0))
        .collect()
}

/// The model's parameters on this rank, split into chunks (tensors cross chunk boundaries).
fn model(ctx: &Ctx, values: &[Vec<f32>]) -> Params {
    let tensors: Vec<(&str, &[f32])> = TENSORS
        .iter()
        .zip(values)
        .map(|(&(n, _), v)| (n, &v[..]))
        .collect();
    Params::with_max_chunk_bytes(&ctx.gpu, &tensors, 16 << 10).expect("params")
}

/// Rank `r`'s gradient of step `step` for every tensor.
fn grads_of(ctx: &Ctx, step: usize, r: usize, coarse_values: bool) -> Vec<Vec<f32>> {
    let mut g = rng(ctx, 1000 + (step * 16 + r) as u64);
    TENSORS
        .iter()
        .map(|&(_, len)| {
            if coarse_values {
                coarse(&mut g, len)
            } else {
                randn(&mut g, len, 0.5)
            }
        })
        .collect()
}

/// The average of every rank's gradient as the sharded step defines it: summed in rank order,
/// divided by the number of ranks, in f32.
fn average(all: &[Vec<Vec<f32>>]) -> Vec<Vec<f32>> {
    let n = all.len() as f32;
    (0..all[0].len())
        .map(|t| {
            let mut s = all[0][t].clone();
            for g in &all[1..] {
                for (a, b) in s.iter_mut().zip(&g[t]) {
                    *a += *b;
                }
            }
            s.iter().map(|x| x / n).collect()
        })
        .collect()
}

fn write_grads(params: &Params, g: &[Vec<f32>]) {
    for (&(name, _), v) in TENSORS.iter().zip(g) {
        params.write_grad(name, v).expect("grad");
    }
}

fn read_all(params: &Params) -> Vec<Vec<f32>> {
    TENSORS
        .iter()
        .map(|&(n, _)| params.read(n).expect("read"))
        .collect()
}

fn hash(vs: &[Vec<f32>]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in vs {
        for x in v {
            for b in x.to_bits().to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{what}[{i}]: {a:e} vs {b:e} (not the same bits)"
        );
    }
}

/// Every rank holds the same bits.
fn assert_same_on_every_rank(ctx: &Ctx, what: &str, h: u64) {
    let mut all = vec![0u64; ctx.n];
    ctx.world.all_gather_into(&h, &mut all[..]);
    assert!(
        all.iter().all(|&x| x == all[0]),
        "{what} differs between ranks: {all:x?}"
    );
}

/// Adam (AdamW) with clipping, gradients split over the ranks, 20 steps: every rank's params
/// and the gathered state are the bits of one GPU's plain Adam stepping the averaged gradients
/// multiplied by the same clip coefficient; against that optimizer clipping on its own GPU
/// norm (another summation order), within 1e-5 relative.
fn adam_clipping_matches_one_gpu(ctx: &mut Ctx) {
    let values = init_values(ctx);
    let mut params = model(ctx, &values);
    let cfg = AdamConfig {
        lr: 1e-2,
        weight_decay: 1e-2,
        ..AdamConfig::adamw()
    };
    let mut opt = Sharded::new(&ctx.world, &params, cfg.clone()).expect("sharded");
    let max_norm = 5.0;
    opt.set_max_grad_norm(Some(max_norm)).unwrap();
    let mut plain_p = model(ctx, &values);
    let mut plain = Adam::new(&plain_p, cfg.clone()).unwrap();
    let mut gpu_clip_p = model(ctx, &values);
    let mut gpu_clip = Adam::new(&gpu_clip_p, cfg).unwrap();
    gpu_clip.set_max_grad_norm(Some(max_norm)).unwrap();
    let mut clipped = 0;
    for step in 0..STEPS {
        let all: Vec<_> = (0..ctx.n).map(|r| grads_of(ctx, step, r, false)).collect();
        write_grads(&params, &all[ctx.rank]);
        opt.step(&mut params).expect("step");
        let avg = average(&all);
        let norm = opt.last_grad_norm().expect("a norm with clipping");
        // The norm is the averaged gradient's, computed in f64.
        let want: f64 = avg
            .iter()
            .flatten()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        assert!(
            ((norm as f64) - want).abs() <= want * 1e-6,
            "norm {norm} vs {want}"
        );
        let mul = (max_norm / (norm + 1e-6)).min(1.0);
        clipped += (mul < 1.0) as usize;
        let scaled: Vec<Vec<f32>> = avg
            .iter()
            .map(|v| v.iter().map(|x| x * mul).collect())
            .collect();
        write_grads(&plain_p, &scaled);
        plain.step(&mut plain_p).unwrap();
        write_grads(&gpu_clip_p, &avg);
        gpu_clip.step(&mut gpu_clip_p).unwrap();
        let gpu_norm = gpu_clip.last_grad_norm().unwrap();
        assert!(
            (gpu_norm - norm).abs() <= norm * 1e-5,
            "GPU norm {gpu_norm} vs {norm}"
        );
    }
    assert!(
        clipped >= STEPS / 2,
        "clipping was active in only {clipped} steps"
    );
    let got = read_all(&params);
    assert_same_on_every_rank(ctx, "Adam params", hash(&got));
    for (t, &(name, _)) in TENSORS.iter().enumerate() {
        assert_bits(name, &got[t], &plain_p.read(name).unwrap());
        for key in ["exp_avg", "exp_avg_sq"] {
            assert_bits(
                &format!("{name}.{key}"),
                &opt.state(key, name).unwrap(),
                &plain.state(key, name).unwrap(),
            );
        }
        let near = gpu_clip_p.read(name).unwrap();
        for (i, (a, b)) in got[t].iter().zip(&near).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1e-2),
                "{name}[{i}]: {a} vs GPU-clipped {b}"
            );
        }
    }
    assert_eq!(opt.step_count(), STEPS as u64);
}

/// SGD with Nesterov momentum and weight decay, no clipping: bit-identical to one GPU stepping
/// the averaged gradients, params and momentum buffers.
fn sgd_momentum_matches_one_gpu(ctx: &mut Ctx) {
    let values = init_values(ctx);
    let mut params = model(ctx, &values);
    let cfg = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-3,
        ..Default::default()
    };
    let mut opt = Sharded::new(&ctx.world, &params, cfg.clone()).expect("sharded");
    let mut plain_p = model(ctx, &values);
    let mut plain = Sgd::new(&plain_p, cfg).unwrap();
    for step in 0..STEPS {
        let all: Vec<_> = (0..ctx.n).map(|r| grads_of(ctx, step, r, false)).collect();
        write_grads(&params, &all[ctx.rank]);
        opt.step(&mut params).expect("step");
        assert!(opt.last_grad_norm().is_none());
        write_grads(&plain_p, &average(&all));
        plain.step(&mut plain_p).unwrap();
    }
    let got = read_all(&params);
    assert_same_on_every_rank(ctx, "SGD params", hash(&got));
    for (t, &(name, _)) in TENSORS.iter().enumerate() {
        assert_bits(name, &got[t], &plain_p.read(name).unwrap());
        assert_bits(
            &format!("{name}.momentum_buffer"),
            &opt.state("momentum_buffer", name).unwrap(),
            &plain.state("momentum_buffer", name).unwrap(),
        );
    }
}

/// Clipping by the inf norm (exact in any order: one GPU's own clipping gives the same bits)
/// and by the L1 norm (the f64 sum of magnitudes; one GPU given the same coefficient gives the
/// same bits), SGD with momentum, 10 steps each.
fn inf_and_l1_norms_clip_as_one_gpu(ctx: &mut Ctx) {
    for norm in [NormType::Inf, NormType::L1] {
        let values = init_values(ctx);
        let mut params = model(ctx, &values);
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        };
        let max_norm = if norm == NormType::Inf { 0.2 } else { 500.0 };
        let mut opt = Sharded::new(&ctx.world, &params, cfg.clone()).unwrap();
        opt.set_grad_norm_type(norm);
        opt.set_max_grad_norm(Some(max_norm)).unwrap();
        let mut plain_p = model(ctx, &values);
        let mut plain = Sgd::new(&plain_p, cfg).unwrap();
        if norm == NormType::Inf {
            plain.set_grad_norm_type(norm).unwrap();
            plain.set_max_grad_norm(Some(max_norm)).unwrap();
        }
        let mut clipped = 0;
        for step in 0..10 {
            let all: Vec<_> = (0..ctx.n).map(|r| grads_of(ctx, step, r, false)).collect();
            write_grads(&params, &all[ctx.rank]);
            opt.step(&mut params).unwrap();
            let avg = average(&all);
            let got = opt.last_grad_norm().unwrap();
            let flat = avg.iter().flatten();
            if norm == NormType::Inf {
                let want = flat.fold(0.0f32, |m, x| m.max(x.abs()));
                assert_eq!(got.to_bits(), want.to_bits(), "inf norm");
                write_grads(&plain_p, &avg);
            } else {
                let want: f64 = flat.map(|&x| x.abs() as f64).sum();
                assert!(
                    ((got as f64) - want).abs() <= want * 1e-6,
                    "L1 norm {got} vs {want}"
                );
                let mul = (max_norm / (got + 1e-6)).min(1.0);
                let scaled: Vec<Vec<f32>> = avg
                    .iter()
                    .map(|v| v.iter().map(|x| x * mul).collect())
                    .collect();
                write_grads(&plain_p, &scaled);
            }
            clipped += (got > max_norm) as usize;
            plain.step(&mut plain_p).unwrap();
        }
        assert!(
            clipped >= 5,
            "{norm:?}: clipping was active in only {clipped} steps"
        );
        for &(name, _) in TENSORS {
            assert_bits(
                &format!("{norm:?} {name}"),
                &params.read(name).unwrap(),
                &plain_p.read(name).unwrap(),
            );
        }
    }
}

/// Run `steps` of `opt`, with gradients whose average does not depend on the number of ranks
/// (every rank the same coarse values).
fn coarse_run(
    ctx: &Ctx,
    opt: &mut Sharded<AdamConfig>,
    params: &mut Params,
    steps: std::ops::Range<usize>,
) {
    for step in steps {
        write_grads(params, &grads_of(ctx, step, 0, true));
        opt.step(params).expect("step");
    }
}

/// AdamW clipped at 5 over `comm`.
fn coarse_adam(comm: &SimpleCommunicator, params: &Params) -> Sharded<AdamConfig> {
    let mut opt = Sharded::new(
        comm,
        params,
        AdamConfig {
            lr: 1e-2,
            ..AdamConfig::adamw()
        },
    )
    .expect("sharded");
    opt.set_max_grad_norm(Some(5.0)).unwrap();
    opt
}

/// With averaged gradients that are the same for any number of ranks, the final parameters and
/// state are the same bits for 1, 2 and 3 ranks (the launcher compares the runs): the global
/// norm sums the same granule partials in the same order whatever the cut.
fn same_bits_for_any_rank_count(ctx: &mut Ctx) {
    let values = init_values(ctx);
    let mut params = model(ctx, &values);
    let world = ctx.world.duplicate();
    let mut opt = coarse_adam(&world, &params);
    coarse_run(ctx, &mut opt, &mut params, 0..STEPS);
    let p = read_all(&params);
    let m: Vec<Vec<f32>> = TENSORS
        .iter()
        .map(|&(n, _)| opt.state("exp_avg_sq", n).unwrap())
        .collect();
    assert_same_on_every_rank(ctx, "params", hash(&p));
    ctx.out.push(format!(
        "same-any-n {:016x} {:016x} norm {:08x}",
        hash(&p),
        hash(&m),
        opt.last_grad_norm().unwrap().to_bits()
    ));
}

/// A loss scaler on every rank, an inf in one rank's gradient at step 5: every rank skips that
/// step and backs off, exactly as one GPU's Adam with the same scaler does on the averaged
/// gradients (unscaling is the same f32 multiply).
fn scaler_skips_overflow_on_every_rank(ctx: &mut Ctx) {
    let values = init_values(ctx);
    let mut params = model(ctx, &values);
    let cfg = AdamConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let sc = ScalerConfig {
        init_scale: 1024.0,
        growth_interval: 3,
        ..Default::default()
    };
    let mut opt = Sharded::new(&ctx.world, &params, cfg.clone()).expect("sharded");
    let scaler = GradScaler::new(&ctx.gpu, sc.clone()).unwrap();
    opt.set_grad_scaler(Some(&scaler)).unwrap();
    let mut plain_p = model(ctx, &values);
    let mut plain = Adam::new(&plain_p, cfg).unwrap();
    let plain_scaler = GradScaler::new(&ctx.gpu, sc).unwrap();
    plain.set_grad_scaler(Some(&plain_scaler)).unwrap();
    let bad_rank = ctx.n - 1;
    for step in 0..10 {
        let scale = scaler.scale().unwrap();
        assert_eq!(scale, plain_scaler.scale().unwrap(), "scale at step {step}");
        let mut all: Vec<_> = (0..ctx.n)
            .map(|r| {
                grads_of(ctx, step, r, false)
                    .into_iter()
                    .map(|v| v.iter().map(|x| x * scale).collect())
                    .collect::<Vec<Vec<f32>>>()
            })
            .collect();
        if step == 5 {
            all[bad_rank][1][17] = f32::INFINITY;
        }
        write_grads(&params, &all[ctx.rank]);
        opt.step(&mut params).expect("step");
        assert_eq!(opt.last_step_skipped(), step == 5, "skipped at step {step}");
        write_grads(&plain_p, &average(&all));
        plain.step(&mut plain_p).unwrap();
        assert_eq!(plain.last_step_skipped().unwrap(), step == 5);
    }
    assert_eq!(opt.step_count(), 9);
    assert_eq!(scaler.scale().unwrap(), plain_scaler.scale().unwrap());
    assert_eq!(
        scaler.growth_tracker().unwrap(),
        plain_scaler.growth_tracker().unwrap()
    );
    let got = read_all(&params);
    assert_same_on_every_rank(ctx, "params", hash(&got));
    for (t, &(name, _)) in TENSORS.iter().enumerate() {
        assert_bits(name, &got[t], &plain_p.read(name).unwrap());
    }
}

/// A growth tracker at u32::MAX (set by hand or from a checkpoint) stays there on every rank, as
/// one GPU's scaler keeps it, instead of overflowing; an overflow resets both to 0.
fn scaler_tracker_saturates_as_one_gpu(ctx: &mut Ctx) {
    let values = init_values(ctx);
    let mut params = model(ctx, &values);
    let cfg = AdamConfig::default();
    let sc = ScalerConfig {
        growth_interval: 3,
        ..Default::default()
    };
    let mut opt = Sharded::new(&ctx.world, &params, cfg.clone()).expect("sharded");
    let scaler = GradScaler::new(&ctx.gpu, sc.clone()).unwrap();
    scaler.set_state(64.0, u32::MAX).unwrap();
    opt.set_grad_scaler(Some(&scaler)).unwrap();
    let mut plain_p = model(ctx, &values);
    let mut plain = Adam::new(&plain_p, cfg).unwrap();
    let plain_scaler = GradScaler::new(&ctx.gpu, sc).unwrap();
    plain_scaler.set_state(64.0, u32::MAX).unwrap();
    plain.set_grad_scaler(Some(&plain_scaler)).unwrap();
    for step in 0..3 {
        let mut all: Vec<_> = (0..ctx.n)
            .map(|r| {
                grads_of(ctx, step, r, false)
                    .into_iter()
                    .map(|v| v.iter().map(|x| x * 64.0).collect())
                    .collect::<Vec<Vec<f32>>>()
            })
            .collect();
        if step == 2 {
            all[0][0][0] = f32::NAN;
        }
        write_grads(&params, &all[ctx.rank]);
        opt.step(&mut params).expect("step");
        write_grads(&plain_p, &average(&all));
        plain.step(&mut plain_p).unwrap();
        let want = if step == 2 {
            (32.0, 0)
        } else {
            (64.0, u32::MAX)
        };
        for s in [&scaler, &plain_scaler] {
            assert_eq!(
                (s.scale().unwrap(), s.growth_tracker().unwrap()),
                want,
                "step {step}"
            );
        }
    }
    assert_eq!(opt.step_count(), 2);
    let got = read_all(&params);
    assert_same_on_every_rank(ctx, "params", hash(&got));
    for (t, &(name, _)) in TENSORS.iter().enumerate() {
        assert_bits(name, &got[t], &plain_p.read(name).unwrap());
    }
}

/// Each rank's optimizer state is 1/N of one GPU's (up to a granule and a buffer's rounding),
/// and the shards add up to it.
fn state_memory_is_one_nth(ctx: &mut Ctx) {
    let specs = [("big", 300_001), ("mid", 77_777), ("small", 5)];
    let params = Params::zeros(&ctx.gpu, &specs).unwrap();
    let cfg = AdamConfig::default();
    let opt = Sharded::new(&ctx.world, &params, cfg.clone()).unwrap();
    // The same model on this rank alone: the whole state.
    let alone = ctx
        .world
        .split_by_color(Color::with_value(ctx.rank as i32))
        .expect("a one-rank communicator");
    let whole = Sharded::new(&alone, &params, cfg).unwrap().state_bytes();
    let mut all = vec![0u64; ctx.n];
    ctx.world.all_gather_into(&opt.state_bytes(), &mut all[..]);
    // Rounding: a shard is whole 1024-element granules (one more on some ranks) in a buffer of
    // a multiple of 1024 elements; 2 states of 4 bytes.
    let slack = 2 * 4 * 2048;
    for (r, &b) in all.iter().enumerate() {
        assert!(
            b <= whole / ctx.n as u64 + slack,
            "rank {r}: {b} bytes of state, whole {whole}"
        );
    }
    let sum: u64 = all.iter().sum();
    assert!(
        sum + slack >= whole && sum <= whole + ctx.n as u64 * slack,
        "shards {sum} vs whole {whole}"
    );
    if ctx.rank == 0 {
        eprintln!("    state bytes per rank {all:?}, one GPU {whole}");
    }
}

/// A model of one granule: with 2 or 3 ranks all but one own nothing, and still take part in
/// every step; the result is one GPU's.
fn tiny_model_leaves_ranks_empty(ctx: &mut Ctx) {
    let mut r = rng(ctx, 5);
    let (w, b) = (randn(&mut r, 100, 1.0), randn(&mut r, 3, 1.0));
    let tensors: [(&str, &[f32]); 2] = [("w", &w), ("b", &b)];
    let mut params = Params::new(&ctx.gpu, &tensors).unwrap();
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    };
    let mut opt = Sharded::new(&ctx.world, &params, cfg.clone()).unwrap();
    opt.set_skip_nonfinite(true);
    let mut plain_p = Params::new(&ctx.gpu, &tensors).unwrap();
    let mut plain = Sgd::new(&plain_p, cfg).unwrap();
    let owners = (0..ctx.n)
        .filter(|&k| !opt.plan().flat_range(k).unwrap().is_empty())
        .count();
    assert_eq!(owners, 1);
    assert_eq!(
        opt.state_bytes() == 0,
        opt.plan().flat_range(ctx.rank).unwrap().is_empty()
    );
    for step in 0..5 {
        let all: Vec<Vec<Vec<f32>>> = (0..ctx.n)
            .map(|k| {
                let mut g = rng(ctx, 2000 + (step * 16 + k) as u64);
                vec![randn(&mut g, 100, 0.5), randn(&mut g, 3, 0.5)]
            })
            .collect();
        params.write_grad("w", &all[ctx.rank][0]).unwrap();
        params.write_grad("b", &all[ctx.rank][1]).unwrap();
        opt.step(&mut params).unwrap();
        let avg = average(&all);
        plain_p.write_grad("w", &avg[0]).unwrap();
        plain_p.write_grad("b", &avg[1]).unwrap();
        plain.step(&mut plain_p).unwrap();
    }
    for name in ["w", "b"] {
        assert_bits(
            name,
            &params.read(name).unwrap(),
            &plain_p.read(name).unwrap(),
        );
        assert_bits(
            name,
            &opt.state("momentum_buffer", name).unwrap(),
            &plain.state("momentum_buffer", name).unwrap(),
        );
    }
}

/// Save with N - 1 ranks after 10 steps, load into N ranks (2 -> 3 with 3 ranks), 10 more
/// steps: the same bits as 20 steps on N ranks without the interruption; and the file is an
/// ordinary checkpoint a single GPU's Adam loads, with the gathered state.
fn checkpoint_reshards_exactly(ctx: &mut Ctx) {
    let dir = std::env::temp_dir().join(format!("wgpu-optim-ck-{}", ctx.seed));
    if ctx.rank == 0 {
        std::fs::create_dir_all(&dir).unwrap();
    }
    ctx.world.barrier();
    let path = dir.join(format!("np{}.safetensors", ctx.n));
    let values = init_values(ctx);
    // Uninterrupted, on all N ranks.
    let mut straight_p = model(ctx, &values);
    let world = ctx.world.duplicate();
    let mut straight = coarse_adam(&world, &straight_p);
    coarse_run(ctx, &mut straight, &mut straight_p, 0..STEPS);
    // 10 steps on N - 1 ranks (1 when N = 1), saved.
    let saving = ctx.rank < (ctx.n - 1).max(1);
    let sub = ctx.world.split_by_color(if saving {
        Color::with_value(0)
    } else {
        Color::undefined()
    });
    if let Some(sub) = &sub {
        let mut p = model(ctx, &values);
        let mut opt = coarse_adam(sub, &p);
        coarse_run(ctx, &mut opt, &mut p, 0..STEPS / 2);
        opt.save(&path, &p).expect("save");
    }
    ctx.world.barrier();
    // Loaded into N ranks (from other starting values: everything comes from the file).
    let mut p = model(
        ctx,
        &init_values(&Ctx {
            seed: ctx.seed ^ 77,
            ..clone_ctx(ctx)
        }),
    );
    let mut opt = Sharded::new(
        &ctx.world,
        &p,
        AdamConfig {
            lr: 0.5,
            ..AdamConfig::adamw()
        },
    )
    .unwrap();
    opt.load(&path, &mut p).expect("load");
    assert_eq!(opt.step_count(), (STEPS / 2) as u64);
    assert_eq!(opt.max_grad_norm(), Some(5.0));
    assert_eq!(opt.config().lr, 1e-2);
    coarse_run(ctx, &mut opt, &mut p, STEPS / 2..STEPS);
    let (a, b) = (read_all(&p), read_all(&straight_p));
    for (t, &(name, _)) in TENSORS.iter().enumerate() {
        assert_bits(name, &a[t], &b[t]);
        for key in ["exp_avg", "exp_avg_sq"] {
            assert_bits(
                &format!("{name}.{key}"),
                &opt.state(key, name).unwrap(),
                &straight.state(key, name).unwrap(),
            );
        }
    }
    // The N - 1 rank file in one GPU's Adam.
    let mut one_p = model(ctx, &values);
    let mut one = Adam::new(&one_p, AdamConfig::adamw()).unwrap();
    checkpoint::load(&path, &mut one_p, &mut one).expect("a single GPU loads it");
    assert_eq!(one.step_count(), (STEPS / 2) as u64);
    let ck = checkpoint::open(&path).unwrap();
    for &(name, _) in TENSORS {
        assert_bits(
            name,
            &one.state("exp_avg", name).unwrap(),
            &ck.read(&format!("state.{name}.exp_avg")).unwrap(),
        );
    }
    ctx.world.barrier();
    if ctx.rank == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn clone_ctx(ctx: &Ctx) -> Ctx {
    Ctx {
        world: ctx.world.duplicate(),
        rank: ctx.rank,
        n: ctx.n,
        gpu: ctx.gpu.clone(),
        seed: ctx.seed,
        out: Vec::new(),
    }
}

/// Differences between ranks and bad input on one rank are typed errors on every rank, found
/// before anything changes, never a hang.
fn mismatches_are_errors_on_every_rank(ctx: &mut Ctx) {
    let values = init_values(ctx);
    let last = ctx.n - 1;
    // Another length on the last rank.
    let mut specs = specs();
    if ctx.n > 1 && ctx.rank == last {
        specs[2].1 += 1;
    }
    let other = Params::zeros(&ctx.gpu, &specs).unwrap();
    let r = Sharded::new(&ctx.world, &other, AdamConfig::default());
    if ctx.n > 1 {
        match r {
            Err(Error::RankMismatch { what, rank }) => {
                assert!(what.contains("tensors") && rank == last, "{what} {rank}")
            }
            other => panic!("expected a RankMismatch, got {other:?}"),
        }
    } else {
        assert!(r.is_ok());
    }
    // Another lr on the last rank.
    let params = model(ctx, &values);
    let lr = if ctx.n > 1 && ctx.rank == last {
        2e-3
    } else {
        1e-3
    };
    let r = Sharded::new(
        &ctx.world,
        &params,
        AdamConfig {
            lr,
            ..Default::default()
        },
    );
    assert_eq!(r.is_err(), ctx.n > 1);
    if let Err(e) = r {
        assert!(
            matches!(&e, Error::RankMismatch { what, .. } if what.contains("options")),
            "{e}"
        );
    }
    // An invalid lr on the last rank: its own error there, RankFailed elsewhere.
    let lr = if ctx.rank == last { -1.0 } else { 1e-3 };
    match Sharded::new(
        &ctx.world,
        &params,
        AdamConfig {
            lr,
            ..Default::default()
        },
    ) {
        Err(Error::InvalidHyperparameter { name: "lr", .. }) => assert_eq!(ctx.rank, last),
        Err(Error::RankFailed { rank, reason }) => {
            assert!(rank == last && reason.contains("lr"), "{reason}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Steps: settings that differ, and the wrong parameter set on one rank, change nothing.
    let mut params = model(ctx, &values);
    let mut opt = Sharded::new(&ctx.world, &params, AdamConfig::default()).unwrap();
    write_grads(&params, &grads_of(ctx, 0, ctx.rank, false));
    if ctx.n > 1 {
        opt.set_max_grad_norm((ctx.rank == last).then_some(1.0))
            .unwrap();
        match opt.step(&mut params) {
            Err(Error::RankMismatch { what, rank }) => {
                assert!(what.contains("settings") && rank == last)
            }
            other => panic!("expected a RankMismatch, got {other:?}"),
        }
        opt.set_max_grad_norm(None).unwrap();
    }
    let mut wrong = model(ctx, &values);
    let r = if ctx.rank == last {
        opt.step(&mut wrong)
    } else {
        opt.step(&mut params)
    };
    match r {
        Err(Error::ParamsMismatch(_)) => assert_eq!(ctx.rank, last),
        Err(Error::RankFailed { rank, .. }) => assert_eq!(rank, last),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(opt.step_count(), 0);
    assert_bits("unchanged", &params.read("emb").unwrap(), &values[0]);
    // An unknown state key is an error everywhere; then a good step works.
    assert!(matches!(
        opt.state("momentum_buffer", "emb"),
        Err(Error::UnknownState { .. })
    ));
    opt.step(&mut params).expect("a good step after the errors");
    assert_eq!(opt.step_count(), 1);
    let plan = ShardPlan::new(TENSORS, ctx.n).unwrap();
    assert_eq!(
        plan.flat_range(ctx.rank).unwrap(),
        opt.plan().flat_range(ctx.rank).unwrap()
    );
}
