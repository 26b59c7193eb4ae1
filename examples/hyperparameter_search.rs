//! Hyperparameter search on the GPU: random search with successive halving over the learning
//! rate, weight decay and momentum/betas of AdamW, SGD with Nesterov momentum and Lion, on the
//! 64-64-10 digits MLP.
//!
//! For each optimizer, 27 configurations are drawn at random (log-uniform learning rate and
//! weight decay, uniform momentum coefficients), each set by its PyTorch name with
//! `OptimizerConfig::set_hyperparameter`. Successive halving with a factor of 3: all 27 train for
//! 1 epoch, the best third (by validation loss, on 20% of the training set held out) train on to
//! 3 epochs, the best third of those to 9, and the last one to 27. The winner of each optimizer
//! is then trained again from scratch on the whole training set for 27 epochs and scored on the
//! test set, which the search never saw. Writes `hyperparameter_search.png` (validation loss of
//! every trial against its epochs) and prints the tables.
//!
//! `cargo run --release --example hyperparameter_search`

#[path = "nn/mod.rs"]
mod nn;

use nn::{Mlp, Split};
use plotters::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;
use wgpu_optim::{
    AdamConfig, FusedOptimizer, Gpu, LionConfig, Optimizer, OptimizerConfig, Params, SgdConfig,
};

/// How one hyperparameter is drawn: log-uniform or uniform in `[lo, hi]`.
#[derive(Clone, Copy)]
enum Draw {
    Log(f64, f64),
    Uniform(f64, f64),
}

impl Draw {
    fn sample(self, rng: &mut StdRng) -> f64 {
        match self {
            Draw::Log(lo, hi) => (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp(),
            Draw::Uniform(lo, hi) => lo + rng.random::<f64>() * (hi - lo),
        }
    }
}

/// Builds an optimizer over a parameter set from hyperparameter values by PyTorch name.
type Build = fn(&Params, &[(&'static str, f64)]) -> Result<Box<dyn Optimizer>, wgpu_optim::Error>;

/// An optimizer under search: its name, a base configuration, the search space by PyTorch
/// hyperparameter name, and how to build it over a parameter set.
struct Candidate {
    name: &'static str,
    space: &'static [(&'static str, Draw)],
    build: Build,
}

/// `base` with every `(name, value)` set by name, validated, as a boxed optimizer over `params`.
fn configured<C: OptimizerConfig>(
    params: &Params,
    mut base: C,
    values: &[(&'static str, f64)],
) -> Result<Box<dyn Optimizer>, wgpu_optim::Error> {
    for &(name, v) in values {
        base.set_hyperparameter(name, v)?;
    }
    base.validate()?;
    Ok(Box::new(FusedOptimizer::new(params, base)?))
}

const CANDIDATES: &[Candidate] = &[
    Candidate {
        name: "AdamW",
        space: &[
            ("lr", Draw::Log(1e-4, 3e-2)),
            ("weight_decay", Draw::Log(1e-5, 1e-1)),
            ("betas[0]", Draw::Uniform(0.8, 0.95)),
            ("betas[1]", Draw::Uniform(0.99, 0.999)),
        ],
        build: |p, v| configured(p, AdamConfig::adamw(), v),
    },
    Candidate {
        name: "SGD Nesterov",
        space: &[
            ("lr", Draw::Log(1e-3, 1.0)),
            ("momentum", Draw::Uniform(0.5, 0.99)),
            ("weight_decay", Draw::Log(1e-6, 1e-2)),
        ],
        build: |p, v| {
            let base = SgdConfig {
                momentum: 0.9,
                nesterov: true,
                ..Default::default()
            };
            configured(p, base, v)
        },
    },
    Candidate {
        name: "Lion",
        space: &[
            ("lr", Draw::Log(1e-5, 3e-3)),
            ("weight_decay", Draw::Log(1e-4, 1.0)),
            ("betas[0]", Draw::Uniform(0.85, 0.95)),
            ("betas[1]", Draw::Uniform(0.97, 0.995)),
        ],
        build: |p, v| configured(p, LionConfig::default(), v),
    },
];

/// Configurations drawn per optimizer, the halving factor, and the rungs' epoch budgets.
const TRIALS: usize = 27;
const ETA: usize = 3;
const RUNGS: [usize; 4] = [1, 3, 9, 27];

/// One configuration in training: its network (same initial weights for all), optimizer,
/// batch order, and the validation loss after each epoch.
struct Trial {
    values: Vec<(&'static str, f64)>,
    net: Mlp,
    opt: Box<dyn Optimizer>,
    rng: StdRng,
    val: Vec<f32>,
}

fn mlp(gpu: &Gpu, train: &Split, test: &Split) -> Result<Mlp, wgpu_optim::Error> {
    Mlp::digits(gpu, train, test, 1, wgpu_optim::DType::F32)
}

impl Trial {
    /// Train on to `epochs` epochs, recording the validation loss (NaN from a diverged run
    /// counts as infinite) after each.
    fn train_to(&mut self, epochs: usize) -> Result<(), wgpu_optim::Error> {
        while self.val.len() < epochs {
            self.net.shuffle(&mut self.rng);
            for k in 0..self.net.batches_per_epoch() {
                self.net.forward_backward(k);
                self.opt.step(&mut self.net.params)?;
            }
            let (loss, _) = self.net.evaluate();
            self.val.push(if loss.is_finite() {
                loss
            } else {
                f32::INFINITY
            });
        }
        Ok(())
    }

    fn score(&self) -> f32 {
        self.val.last().copied().unwrap_or(f32::INFINITY)
    }
}

/// What the search found for one optimizer.
struct Found {
    name: &'static str,
    /// Every trial's validation curve, the winner's last.
    curves: Vec<Vec<f32>>,
    best: Vec<(&'static str, f64)>,
    best_val: f32,
    test_loss: f32,
    test_acc: f32,
    epochs_spent: usize,
    seconds: f64,
}

fn search(
    gpu: &Gpu,
    c: &Candidate,
    (train, val, full, test): (&Split, &Split, &Split, &Split),
    rng: &mut StdRng,
) -> Result<Found, wgpu_optim::Error> {
    let start = Instant::now();
    let mut alive: Vec<Trial> = (0..TRIALS)
        .map(|_| {
            let values: Vec<(&'static str, f64)> =
                c.space.iter().map(|&(n, d)| (n, d.sample(rng))).collect();
            let net = mlp(gpu, train, val)?;
            let opt = (c.build)(&net.params, &values)?;
            Ok(Trial {
                values,
                net,
                opt,
                rng: StdRng::seed_from_u64(3),
                val: Vec::new(),
            })
        })
        .collect::<Result<_, wgpu_optim::Error>>()?;
    let mut curves = Vec::new();
    let mut epochs_spent = 0;
    for (r, &epochs) in RUNGS.iter().enumerate() {
        for t in &mut alive {
            epochs_spent += epochs - t.val.len();
            t.train_to(epochs)?;
        }
        alive.sort_by(|a, b| a.score().total_cmp(&b.score()));
        println!(
            "  {}: rung {r} ({epochs} epochs): {} trials, best validation loss {:.4}",
            c.name,
            alive.len(),
            alive[0].score()
        );
        if r + 1 < RUNGS.len() {
            let keep = (alive.len() / ETA).max(1);
            for t in alive.drain(keep..) {
                curves.push(t.val);
            }
        }
    }
    let winner = alive.swap_remove(0);
    curves.push(winner.val.clone());
    // The winner again from scratch on the whole training set, scored on the test set.
    let net = mlp(gpu, full, test)?;
    let opt = (c.build)(&net.params, &winner.values)?;
    let mut fresh = Trial {
        values: winner.values.clone(),
        net,
        opt,
        rng: StdRng::seed_from_u64(3),
        val: Vec::new(),
    };
    fresh.train_to(RUNGS[RUNGS.len() - 1])?;
    let (test_loss, test_acc) = fresh.net.evaluate();
    Ok(Found {
        name: c.name,
        curves,
        best: winner.values,
        best_val: winner.val.last().copied().unwrap_or(f32::INFINITY),
        test_loss,
        test_acc,
        epochs_spent,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Validation loss against epochs for every trial, one colour per optimizer, log-log; the
/// winners drawn thick.
fn plot(found: &[Found], path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let text = wgpu_optim::lr_finder::register_plot_font();
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let finite = || {
        found
            .iter()
            .flat_map(|f| f.curves.iter().flatten())
            .copied()
            .filter(|v| v.is_finite())
    };
    let lo = finite().fold(f32::INFINITY, f32::min).max(1e-3);
    let hi = finite().fold(0.0, f32::max).min(10.0).max(lo * 2.0);
    let max_epochs = RUNGS[RUNGS.len() - 1] as f32;
    let mut chart = ChartBuilder::on(&root);
    chart
        .margin(15)
        .x_label_area_size(if text { 40 } else { 5 })
        .y_label_area_size(if text { 60 } else { 5 });
    if text {
        chart.caption(
            "Successive halving on the digits MLP: validation loss of every trial",
            ("sans-serif", 22),
        );
    }
    let mut chart =
        chart.build_cartesian_2d((1f32..max_epochs).log_scale(), (lo..hi).log_scale())?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("epochs (log)").y_desc("validation loss (log)");
    if !text {
        mesh.disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0);
    }
    mesh.draw()?;
    for (k, f) in found.iter().enumerate() {
        let color = Palette99::pick(k);
        let n = f.curves.len();
        for (j, c) in f.curves.iter().enumerate() {
            let winner = j + 1 == n;
            let points = c
                .iter()
                .enumerate()
                .map(|(e, &v)| ((e + 1) as f32, v.clamp(lo, hi)));
            let style = if winner {
                color.stroke_width(3)
            } else {
                color.mix(0.35).stroke_width(1)
            };
            // Where the trial stopped (a trial cut after one epoch is only this point).
            if let Some(&v) = c.last() {
                let end = (c.len() as f32, v.clamp(lo, hi));
                chart.draw_series(std::iter::once(Circle::new(end, 2, style.filled())))?;
            }
            let s = chart.draw_series(LineSeries::new(points, style))?;
            if winner && text {
                s.label(format!("{} (winner thick)", f.name))
                    .legend(move |(x, y)| {
                        PathElement::new(
                            vec![(x, y), (x + 20, y)],
                            Palette99::pick(k).stroke_width(3),
                        )
                    });
            }
        }
    }
    if text {
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new()?;
    println!("adapter: {} ({:?})", gpu.info().name, gpu.info().backend);
    let (full, test) = nn::digits_split(&mut StdRng::seed_from_u64(7));
    // The search's validation set: the last 20% of the training set.
    let n = full.1.len();
    let cut = n - n / 5;
    let train: Split = (full.0[..cut * 64].to_vec(), full.1[..cut].to_vec());
    let val: Split = (full.0[cut * 64..].to_vec(), full.1[cut..].to_vec());
    println!(
        "digits: {} train + {} validation for the search, {} test; {TRIALS} trials per optimizer, \
         rungs of {RUNGS:?} epochs, keeping the best 1/{ETA} at each",
        train.1.len(),
        val.1.len(),
        test.1.len()
    );
    let mut rng = StdRng::seed_from_u64(2026);
    let mut found = Vec::new();
    for c in CANDIDATES {
        found.push(search(&gpu, c, (&train, &val, &full, &test), &mut rng)?);
    }
    plot(&found, "hyperparameter_search.png")?;
    println!(
        "\n| optimizer | best configuration | validation loss | test loss | test accuracy | epochs trained | search time |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for f in &found {
        let cfg: Vec<String> = f.best.iter().map(|(k, v)| format!("{k} {v:.3e}")).collect();
        println!(
            "| {} | {} | {:.4} | {:.4} | {:.2}% | {} | {:.1} s |",
            f.name,
            cfg.join(", "),
            f.best_val,
            f.test_loss,
            100.0 * f.test_acc,
            f.epochs_spent,
            f.seconds
        );
    }
    println!(
        "\n(an exhaustive run of all {TRIALS} trials to {} epochs would train {} epochs per optimizer)",
        RUNGS[RUNGS.len() - 1],
        TRIALS * RUNGS[RUNGS.len() - 1]
    );
    println!("wrote hyperparameter_search.png");
    Ok(())
}
