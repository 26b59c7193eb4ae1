//! Which optimizer should I use? The same 64-64-10 MLP on the handwritten digits, trained with
//! SGD, SGD+momentum, Nesterov, RMSprop, Adagrad, Adadelta, Rprop, ASGD, Adam, AdamW, AdamW with
//! 8-bit state, Adamax, RAdam, NAdam, Lion, LAMB, Adafactor and Schedule-Free AdamW for the same budget, each at the learning rate an
//! LR range test suggests for it (Schedule-Free is evaluated at its average, after `eval()`).
//! Writes `loss_curves.png` and prints final loss, test accuracy and time per step.
//!
//! Losses are logged on the GPU (one f32 per step) and read back once per run: the training loop
//! itself never waits for the GPU.
//!
//! `cargo run --release --example compare_optimizers`

#[path = "nn/mod.rs"]
mod nn;
#[path = "nn/plot.rs"]
mod plot;

use nn::Mlp;
use rand::SeedableRng;
use std::time::Instant;
use wgpu_optim::{
    AdadeltaConfig, AdafactorConfig, AdagradConfig, AdamConfig, AdamaxConfig, AsgdConfig,
    FusedOptimizer, Gpu, LambConfig, LionConfig, LrFinder, NAdamConfig, Optimizer, OptimizerConfig,
    Params, RAdamConfig, RmsPropConfig, RpropConfig, ScheduleFreeAdamW, ScheduleFreeAdamWConfig,
    SgdConfig, StateFormat,
};

type Build = fn(&Params, f32) -> Result<Trainer, wgpu_optim::Error>;

/// An optimizer under comparison. Schedule-Free AdamW evaluates its average: it is switched to
/// eval mode before the test-set evaluation.
enum Trainer {
    Plain(Box<dyn Optimizer>),
    ScheduleFree(Box<ScheduleFreeAdamW>),
}

impl Trainer {
    fn opt(&mut self) -> &mut dyn Optimizer {
        match self {
            Trainer::Plain(o) => &mut **o,
            Trainer::ScheduleFree(o) => &mut **o,
        }
    }

    fn before_eval(&mut self, params: &Params) -> Result<(), wgpu_optim::Error> {
        match self {
            Trainer::Plain(_) => Ok(()),
            Trainer::ScheduleFree(o) => o.eval(params),
        }
    }
}

fn plain<C: OptimizerConfig>(p: &Params, cfg: C) -> Result<Trainer, wgpu_optim::Error> {
    Ok(Trainer::Plain(Box::new(FusedOptimizer::new(p, cfg)?)))
}

const CANDIDATES: &[(&str, Build)] = &[
    ("SGD", |p, lr| {
        plain(
            p,
            SgdConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("SGD momentum", |p, lr| {
        plain(
            p,
            SgdConfig {
                lr,
                momentum: 0.9,
                ..Default::default()
            },
        )
    }),
    ("Nesterov", |p, lr| {
        plain(
            p,
            SgdConfig {
                lr,
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            },
        )
    }),
    ("RMSprop", |p, lr| {
        plain(
            p,
            RmsPropConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("Adagrad", |p, lr| {
        plain(
            p,
            AdagradConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("Adadelta", |p, lr| {
        plain(
            p,
            AdadeltaConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("Rprop", |p, lr| {
        plain(
            p,
            RpropConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("ASGD", |p, lr| {
        plain(
            p,
            AsgdConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("Adam", |p, lr| {
        plain(
            p,
            AdamConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("AdamW", |p, lr| {
        plain(
            p,
            AdamConfig {
                lr,
                ..AdamConfig::adamw()
            },
        )
    }),
    // bitsandbytes' 8-bit AdamW: tensors of at least 4096 elements (here the first layer's
    // weight) keep 8-bit state; then every tensor (min_size 1).
    ("AdamW 8-bit", |p, lr| {
        let mut o = FusedOptimizer::new(
            p,
            AdamConfig {
                lr,
                ..AdamConfig::adamw()
            },
        )?;
        o.set_state_format(StateFormat::blockwise8())?;
        Ok(Trainer::Plain(Box::new(o)))
    }),
    ("AdamW 8-bit, all tensors", |p, lr| {
        let mut o = FusedOptimizer::new(
            p,
            AdamConfig {
                lr,
                ..AdamConfig::adamw()
            },
        )?;
        o.set_state_format(StateFormat::Blockwise8 { min_size: 1 })?;
        Ok(Trainer::Plain(Box::new(o)))
    }),
    ("Adamax", |p, lr| {
        plain(
            p,
            AdamaxConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("RAdam", |p, lr| {
        plain(
            p,
            RAdamConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("NAdam", |p, lr| {
        plain(
            p,
            NAdamConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("Lion", |p, lr| {
        plain(
            p,
            LionConfig {
                lr,
                weight_decay: 0.1,
                ..Default::default()
            },
        )
    }),
    ("LAMB", |p, lr| {
        plain(
            p,
            LambConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("Adafactor", |p, lr| {
        plain(
            p,
            AdafactorConfig {
                lr,
                ..Default::default()
            },
        )
    }),
    ("Schedule-Free AdamW", |p, lr| {
        Ok(Trainer::ScheduleFree(Box::new(ScheduleFreeAdamW::new(
            p,
            ScheduleFreeAdamWConfig {
                lr,
                ..Default::default()
            },
        )?)))
    }),
];

struct Data {
    train: (Vec<f32>, Vec<f32>),
    test: (Vec<f32>, Vec<f32>),
}

fn net(gpu: &Gpu, data: &Data) -> Result<Mlp, wgpu_optim::Error> {
    // Same seed for every run: every optimizer starts from the same weights and sees the same
    // batches.
    Mlp::digits(gpu, &data.train, &data.test, 1, wgpu_optim::DType::F32)
}

/// Steps of the LR range test.
const SWEEP: usize = 200;

/// LR range test: 1e-5 to 10 over SWEEP steps; losses logged on the GPU, read once.
fn find_lr(gpu: &Gpu, data: &Data, build: Build) -> Result<(f32, LrFinder), wgpu_optim::Error> {
    let mut net = net(gpu, data)?;
    let mut finder = LrFinder::new(1e-5, 10.0, SWEEP)?.with_smoothing(0.95)?;
    let mut trainer = build(&net.params, finder.lr() as f32)?;
    let opt = trainer.opt();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let per_epoch = net.batches_per_epoch();
    for i in 0..SWEEP {
        if i % per_epoch == 0 {
            net.shuffle(&mut rng);
        }
        opt.set_lr(finder.lr_at(i) as f32)?;
        net.log_losses_at(Some(i));
        net.forward_backward(i % per_epoch);
        opt.step(&mut net.params)?;
    }
    for loss in net.read_loss_log(SWEEP) {
        if !finder.record(loss as f64) {
            break;
        }
    }
    // Minibatch losses are noisy and the steepest point of a short sweep jumps around; the
    // robust classic is a tenth of the lr at the smoothed minimum, capped by the steepest point.
    let smoothed = finder.smoothed_losses();
    let best = (0..smoothed.len())
        .min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]))
        .unwrap_or(0);
    let lr_min = finder.lrs().get(best).copied().unwrap_or(1e-2) / 10.0;
    let lr = finder.suggestion().map_or(lr_min, |s| s.min(lr_min)) as f32;
    Ok((lr, finder))
}

fn main() -> Result<(), wgpu_optim::Error> {
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let (train, test) = nn::digits_split(&mut rand::rngs::StdRng::seed_from_u64(7));
    let data = Data { train, test };
    let epochs = 15;
    let mut curves = Vec::new();
    let mut rows = Vec::new();
    for &(name, build) in CANDIDATES {
        let (lr, _finder) = find_lr(&gpu, &data, build)?;
        let mut net = net(&gpu, &data)?;
        let mut trainer = build(&net.params, lr)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let steps = epochs * net.batches_per_epoch();
        let start = Instant::now();
        let mut step = 0;
        for _ in 0..epochs {
            net.shuffle(&mut rng);
            for k in 0..net.batches_per_epoch() {
                net.log_losses_at(Some(step));
                net.forward_backward(k);
                trainer.opt().step(&mut net.params)?;
                step += 1;
            }
        }
        trainer.before_eval(&net.params)?;
        let (test_loss, acc) = net.evaluate(); // waits for the GPU
        let per_step = start.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let curve = net.read_loss_log(steps);
        let tail = &curve[steps - net.batches_per_epoch()..];
        let final_loss = tail.iter().sum::<f32>() / tail.len() as f32;
        println!("{name:>13}: lr {lr:.2e}  final train loss {final_loss:.4}  test loss {test_loss:.4}  test accuracy {:.2}%  {per_step:.2} ms/step", 100.0 * acc);
        rows.push((name, lr, final_loss, test_loss, acc, per_step));
        curves.push((name, curve));
    }
    plot::losses(
        &curves,
        "MLP on handwritten digits: training loss",
        "loss_curves.png",
    )
    .map_err(|e| wgpu_optim::Error::Plot(e.to_string()))?;
    println!(
        "\n| optimizer | lr (LR finder) | final train loss | test loss | test accuracy | ms/step |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, lr, fl, tl, acc, ms) in rows {
        println!(
            "| {name} | {lr:.2e} | {fl:.4} | {tl:.4} | {:.2}% | {ms:.2} |",
            100.0 * acc
        );
    }
    println!("\nwrote loss_curves.png");
    Ok(())
}
