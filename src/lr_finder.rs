//! The learning-rate range test (Smith 2015, popularised by fastai's `lr_find`): train for a
//! few hundred steps while the lr grows exponentially from `start_lr` to `end_lr`, smooth the
//! loss, stop once it explodes, and pick the lr where the loss falls fastest.
//!
//! The finder does not run the training loop: each step, apply [`LrFinder::lr`] to the
//! optimizer (or call [`LrFinder::apply`]), take one training step, and hand the loss to
//! [`LrFinder::record`], which says whether to go on.
//!
//! ```no_run
//! use wgpu_optim::{Gpu, LrFinder, Optimizer, Params, Sgd, SgdConfig};
//!
//! # fn compute_loss_and_grads(_: &mut Params) -> f64 { 1.0 }
//! let gpu = Gpu::new()?;
//! let mut params = Params::zeros(&gpu, &[("w", 1000)])?;
//! let mut opt = Sgd::new(&params, SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() })?;
//! let mut finder = LrFinder::new(1e-7, 10.0, 200)?;
//! loop {
//!     finder.apply(&mut opt)?;
//!     let loss = compute_loss_and_grads(&mut params); // forward + backward, writes the grads
//!     opt.step(&mut params)?;
//!     if !finder.record(loss) {
//!         break;
//!     }
//! }
//! println!("suggested lr: {:?}", finder.suggestion());
//! finder.plot("lr_find.png")?; // needs the `plot` feature (on by default)
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! Restore the model and the optimizer state afterwards: the test trains them with lrs that end
//! far too large.

use crate::error::{Error, Result};
use crate::optim::Optimizer;

/// An exponential learning-rate sweep with a smoothed loss record. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct LrFinder {
    start_lr: f64,
    end_lr: f64,
    num_steps: usize,
    beta: f64,
    diverge_factor: f64,
    lrs: Vec<f64>,
    losses: Vec<f64>,
    smoothed: Vec<f64>,
    avg: f64,
    best: f64,
    diverged: bool,
}

fn bad(name: &'static str, value: f64, rule: &'static str) -> Error {
    Error::InvalidScheduler { name, value, rule }
}

impl LrFinder {
    /// Sweep from `start_lr` to `end_lr` (0 < start < end) in `num_steps` (>= 2) exponentially
    /// spaced steps, smoothing with beta 0.98 and stopping when the smoothed loss exceeds 4x
    /// the best so far.
    pub fn new(start_lr: f64, end_lr: f64, num_steps: usize) -> Result<Self> {
        if !(start_lr.is_finite() && start_lr > 0.0) {
            return Err(bad("start_lr", start_lr, "must be > 0"));
        }
        if !(end_lr.is_finite() && end_lr > start_lr) {
            return Err(bad("end_lr", end_lr, "must be > start_lr"));
        }
        if num_steps < 2 {
            return Err(bad("num_steps", num_steps as f64, "must be >= 2"));
        }
        Ok(LrFinder {
            start_lr,
            end_lr,
            num_steps,
            beta: 0.98,
            diverge_factor: 4.0,
            lrs: Vec::with_capacity(num_steps),
            losses: Vec::with_capacity(num_steps),
            smoothed: Vec::with_capacity(num_steps),
            avg: 0.0,
            best: f64::INFINITY,
            diverged: false,
        })
    }

    /// Use another smoothing factor `beta` in [0, 1) (0: no smoothing). Before the first
    /// [`LrFinder::record`].
    pub fn with_smoothing(mut self, beta: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&beta) {
            return Err(bad("beta", beta, "must be in [0, 1)"));
        }
        self.beta = beta;
        Ok(self)
    }

    /// Stop when the smoothed loss exceeds `factor` (> 1) times the best one (default 4).
    pub fn with_divergence_factor(mut self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 1.0) {
            return Err(bad("diverge_factor", factor, "must be > 1"));
        }
        self.diverge_factor = factor;
        Ok(self)
    }

    /// The lr of step `i` of the sweep: `start_lr * (end_lr / start_lr)^(i / (num_steps - 1))`.
    pub fn lr_at(&self, i: usize) -> f64 {
        let t = i as f64 / (self.num_steps - 1) as f64;
        self.start_lr * (self.end_lr / self.start_lr).powf(t)
    }

    /// The lr to train the next step with.
    pub fn lr(&self) -> f64 {
        self.lr_at(self.lrs.len().min(self.num_steps - 1))
    }

    /// Set every parameter group of `opt` to [`LrFinder::lr`].
    pub fn apply(&self, opt: &mut dyn Optimizer) -> Result<()> {
        let lr = self.lr() as f32;
        for g in 0..opt.group_count() {
            opt.set_group_lr(g, lr)?;
        }
        Ok(())
    }

    /// Record the loss of the step just trained with [`LrFinder::lr`]. Returns whether to go
    /// on: false once `num_steps` losses are recorded or the smoothed loss diverged (more than
    /// the divergence factor times the best, or not finite). Losses after that are ignored.
    ///
    /// Smoothing is an exponential moving average with bias correction:
    /// `avg = beta avg + (1 - beta) loss`, `smoothed = avg / (1 - beta^(i+1))`.
    pub fn record(&mut self, loss: f64) -> bool {
        if self.is_done() {
            return false;
        }
        let i = self.lrs.len();
        self.avg = self.beta * self.avg + (1.0 - self.beta) * loss;
        let smoothed = self.avg / (1.0 - self.beta.powi(i as i32 + 1));
        self.lrs.push(self.lr_at(i));
        self.losses.push(loss);
        self.smoothed.push(smoothed);
        if !smoothed.is_finite() || (i > 0 && smoothed > self.diverge_factor * self.best) {
            self.diverged = true;
        } else if smoothed < self.best {
            self.best = smoothed;
        }
        !self.is_done()
    }

    /// Whether the sweep is over (all steps recorded, or diverged).
    pub fn is_done(&self) -> bool {
        self.diverged || self.lrs.len() >= self.num_steps
    }

    /// Whether the sweep stopped early because the loss diverged.
    pub fn diverged(&self) -> bool {
        self.diverged
    }

    /// The lrs of the recorded steps.
    pub fn lrs(&self) -> &[f64] {
        &self.lrs
    }

    /// The raw losses recorded.
    pub fn losses(&self) -> &[f64] {
        &self.losses
    }

    /// The smoothed (bias-corrected) losses.
    pub fn smoothed_losses(&self) -> &[f64] {
        &self.smoothed
    }

    /// The points the suggestion looks at: everything recorded but the step that diverged.
    fn usable(&self) -> usize {
        self.lrs.len() - usize::from(self.diverged)
    }

    /// The lr at the steepest descent of the smoothed loss against `log10(lr)` (central
    /// differences inside, one-sided at the ends, as `numpy.gradient`), ignoring the step that
    /// diverged. `None` with fewer than 3 usable points or where the loss never decreases.
    ///
    /// The moving average lags about `1 / (1 - beta)` steps (50 at the default 0.98) behind the
    /// raw loss, so the suggestion sits that many sweep steps above the raw curve's steepest
    /// point: sweep a few hundred steps, or smooth less ([`LrFinder::with_smoothing`]).
    pub fn suggestion(&self) -> Option<f64> {
        let n = self.usable();
        if n < 3 {
            return None;
        }
        let x: Vec<f64> = self.lrs[..n].iter().map(|l| l.log10()).collect();
        let y = &self.smoothed[..n];
        let grad = |i: usize| {
            let (a, b) = (i.saturating_sub(1), (i + 1).min(n - 1));
            (y[b] - y[a]) / (x[b] - x[a])
        };
        let (i, g) = (0..n)
            .map(|i| (i, grad(i)))
            .filter(|(_, g)| g.is_finite())
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        (g < 0.0).then(|| self.lrs[i])
    }

    /// Draw the raw and smoothed loss against the lr (log scale) with the suggestion marked, as
    /// a PNG at `path`.
    ///
    /// Text is drawn with a TrueType font found at run time: the file named by the
    /// `WGPU_OPTIM_FONT` environment variable, else a common system sans-serif font (DejaVu
    /// Sans, Liberation Sans, Arial, ...; Debian/Ubuntu: `apt-get install fonts-dejavu-core`).
    /// Without one the plot is drawn without text.
    #[cfg(all(feature = "plot", not(target_arch = "wasm32")))]
    pub fn plot(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        plot::draw(self, path.as_ref())
    }
}

/// Register a sans-serif TrueType font with plotters (once per process) for other plots of
/// yours, found as [`LrFinder::plot`] finds it; whether one was found (without one, plots are
/// drawn without text).
#[cfg(all(feature = "plot", not(target_arch = "wasm32")))]
pub fn register_plot_font() -> bool {
    plot::font()
}

#[cfg(all(feature = "plot", not(target_arch = "wasm32")))]
mod plot {
    use super::LrFinder;
    use crate::error::{Error, Result};
    use plotters::prelude::*;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    fn err(e: impl std::fmt::Display) -> Error {
        Error::Plot(e.to_string())
    }

    fn font_candidates() -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::env::var_os("WGPU_OPTIM_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        for p in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
            "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
            "/usr/share/fonts/noto/NotoSans-Regular.ttf",
            "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "/Library/Fonts/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ] {
            v.push(PathBuf::from(p));
        }
        v
    }

    /// Register a sans-serif font with plotters once; whether one was found.
    pub fn font() -> bool {
        static FOUND: OnceLock<bool> = OnceLock::new();
        *FOUND.get_or_init(|| {
            for p in font_candidates() {
                if let Ok(bytes) = std::fs::read(&p) {
                    // plotters keeps fonts for the life of the program.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .is_ok()
                    {
                        return true;
                    }
                }
            }
            false
        })
    }

    pub(super) fn draw(f: &LrFinder, path: &Path) -> Result<()> {
        let n = f.lrs.len();
        if n < 2 {
            return Err(Error::Plot(format!(
                "nothing to plot: {n} step(s) recorded, need at least 2"
            )));
        }
        let text = font();
        let usable = f.usable().max(2);
        let finite = |v: &&f64| v.is_finite();
        let lo = f.smoothed[..usable]
            .iter()
            .chain(&f.losses[..usable])
            .filter(finite)
            .fold(f64::INFINITY, |a, &b| a.min(b));
        // The top: the smoothed curve before it diverged; raw spikes are clipped.
        let hi = f.smoothed[..usable]
            .iter()
            .filter(finite)
            .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        if !lo.is_finite() || !hi.is_finite() {
            return Err(Error::Plot("no finite loss to plot".into()));
        }
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
        let (y0, y1) = (lo - pad, hi + pad);
        let (x0, x1) = (f.lrs[0], f.lrs[n - 1].max(f.lrs[0] * 1.0001));

        let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(20);
        if text {
            builder
                .caption("LR range test", ("sans-serif", 24))
                .x_label_area_size(50)
                .y_label_area_size(70);
        } else {
            builder.x_label_area_size(2).y_label_area_size(2);
        }
        let mut chart = builder
            .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
            .map_err(err)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("learning rate")
                .y_desc("loss")
                .x_label_formatter(&|x| format!("{x:.0e}"))
                .label_style(("sans-serif", 15));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(err)?;

        let clip = |v: f64| if v.is_finite() { v.clamp(y0, y1) } else { y1 };
        let raw = f.lrs.iter().zip(&f.losses).map(|(&x, &y)| (x, clip(y)));
        let grey = RGBColor(170, 170, 170);
        let series = chart.draw_series(LineSeries::new(raw, grey)).map_err(err)?;
        if text {
            series
                .label("loss")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
        }
        let smooth = f.lrs.iter().zip(&f.smoothed).map(|(&x, &y)| (x, clip(y)));
        let blue = RGBColor(31, 119, 180);
        let series = chart
            .draw_series(LineSeries::new(smooth, blue.stroke_width(2)))
            .map_err(err)?;
        if text {
            series
                .label("smoothed loss")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue));
        }
        if let Some(s) = f.suggestion() {
            let red = RGBColor(214, 39, 40);
            let series = chart
                .draw_series(LineSeries::new(vec![(s, y0), (s, y1)], red.stroke_width(1)))
                .map_err(err)?;
            if text {
                series
                    .label(format!("suggestion {s:.2e}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic range test: flat, then a descent steepest at lr = 1e-3 (in log10 lr), then
    /// an explosion past lr = 0.3.
    fn synthetic(lr: f64) -> f64 {
        let x = lr.log10();
        2.0 - (2.0 * (x + 3.0)).tanh() + (6.0 * (x + 0.5)).exp()
    }

    fn run(finder: &mut LrFinder) {
        while finder.record(synthetic(finder.lr())) {}
    }

    #[test]
    fn sweep_is_exponential() {
        let f = LrFinder::new(1e-6, 1.0, 7).unwrap();
        for i in 0..7 {
            let want = 10f64.powi(i as i32 - 6);
            assert!((f.lr_at(i) / want - 1.0).abs() < 1e-12, "{i}");
        }
    }

    #[test]
    fn smoothing_is_bias_corrected() {
        let mut f = LrFinder::new(1e-5, 1.0, 50).unwrap();
        for _ in 0..20 {
            assert!(f.record(3.25));
        }
        for s in f.smoothed_losses() {
            assert!((s - 3.25).abs() < 1e-12, "{s}");
        }
    }

    #[test]
    fn suggestion_on_a_synthetic_curve() {
        let mut f = LrFinder::new(1e-7, 10.0, 1000).unwrap();
        run(&mut f);
        assert!(f.diverged(), "the synthetic loss explodes");
        let n = f.lrs().len();
        assert!(n < 1000, "stopped early ({n} steps)");
        // Stopped at the first smoothed loss above 4x the best.
        let best = f.smoothed_losses()[..n - 1]
            .iter()
            .fold(f64::INFINITY, |a, &b| a.min(b));
        assert!(f.smoothed_losses()[n - 1] > 4.0 * best);
        assert!(f.smoothed_losses()[n - 2] <= 4.0 * best);
        // The EMA lags ~1/(1-beta) = 50 steps (0.4 decades here) behind the raw curve, so the
        // steepest smoothed descent sits a little above the raw one at 1e-3.
        let s = f.suggestion().unwrap();
        assert!(
            (1e-3..1e-3 * 10f64.powf(0.6)).contains(&s),
            "suggestion {s}"
        );
        // Without smoothing it is the raw curve's steepest point, to the sweep's resolution.
        let mut raw = LrFinder::new(1e-7, 10.0, 1000)
            .unwrap()
            .with_smoothing(0.0)
            .unwrap();
        run(&mut raw);
        let s = raw.suggestion().unwrap();
        assert!((s.log10() + 3.0).abs() < 0.01, "raw suggestion {s}");
    }

    #[test]
    fn no_suggestion_without_descent() {
        let mut f = LrFinder::new(1e-4, 1.0, 20).unwrap();
        while f.record(1.0 + 0.01 * f.lrs().len() as f64) {}
        assert!(!f.diverged());
        assert_eq!(f.lrs().len(), 20);
        assert_eq!(f.suggestion(), None);
        assert!(!f.record(0.0), "records nothing after the end");
        assert_eq!(f.losses().len(), 20);
    }

    #[test]
    fn nan_loss_stops() {
        let mut f = LrFinder::new(1e-4, 1.0, 20).unwrap();
        assert!(f.record(1.0));
        assert!(!f.record(f64::NAN));
        assert!(f.diverged());
    }

    #[test]
    fn invalid_options() {
        for (r, name) in [
            (LrFinder::new(0.0, 1.0, 10), "start_lr"),
            (LrFinder::new(1.0, 1.0, 10), "end_lr"),
            (LrFinder::new(1e-3, f64::INFINITY, 10), "end_lr"),
            (LrFinder::new(1e-3, 1.0, 1), "num_steps"),
            (
                LrFinder::new(1e-3, 1.0, 10).and_then(|f| f.with_smoothing(1.0)),
                "beta",
            ),
            (
                LrFinder::new(1e-3, 1.0, 10).and_then(|f| f.with_divergence_factor(1.0)),
                "diverge_factor",
            ),
        ] {
            match r {
                Err(Error::InvalidScheduler { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[cfg(all(feature = "plot", not(target_arch = "wasm32")))]
    #[test]
    fn plot_writes_a_png() {
        let mut f = LrFinder::new(1e-7, 10.0, 300).unwrap();
        run(&mut f);
        let dir = std::env::temp_dir().join(format!("wgpu_optim_lr_find_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lr_find.png");
        f.plot(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 1000, "{} bytes", bytes.len());
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: 900 x 560.
        assert_eq!(&bytes[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 900);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 560);
        if std::env::var_os("KEEP_PLOT").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        // Too few points is an error, not a panic.
        let mut one = LrFinder::new(1e-3, 1.0, 10).unwrap();
        one.record(1.0);
        assert!(matches!(one.plot(dir.join("x.png")), Err(Error::Plot(_))));
    }
}
