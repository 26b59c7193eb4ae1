//! Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled"), as
//! facebookresearch/schedule_free's `AdamWScheduleFree` steps it.

use super::{check_adam_like, widen};
use super::{FusedOptimizer, Optimizer, OptimizerConfig};
use crate::error::{check, Error, Result};
use crate::params::Params;
use std::collections::VecDeque;
use std::sync::Mutex;

/// Schedule-Free AdamW: no learning-rate schedule, an average of the iterates instead.
pub type ScheduleFreeAdamW = FusedOptimizer<ScheduleFreeAdamWConfig>;

/// Options of [`ScheduleFreeAdamW`], with `schedulefree.AdamWScheduleFree`'s names and
/// defaults.
///
/// The parameters hold the sequence `y` the gradients are taken at while training, and the
/// average `x` (what to evaluate and deploy) in eval mode: call [`ScheduleFreeAdamW::eval`]
/// before evaluating or saving the model and [`ScheduleFreeAdamW::train`] before stepping again
/// (a step in eval mode is an error). Unlike the Python package, the optimizer starts in train
/// mode. State: `z` (the base sequence, a copy of the parameter at the first step) and
/// `exp_avg_sq`.
///
/// Each step `t` (1-based; `k = t - 1`), per element, in f32 with the scalars from f64:
/// `sched = min(1, t / warmup_steps)`, `lr_t = lr * sched`,
/// `weight_t = t^r * lr_max^weight_lr_power` (`lr_max`, the largest `lr_t` so far, is `lr_t`
/// with a constant `lr`), `c = weight_t / sum(weight_1..t)`;
/// `v = beta2 * v + (1 - beta2) * g^2`, `u = g / (sqrt(v / (1 - beta2^t)) + eps) + wd * y`,
/// `y = lerp(y, z, c) + lr_t * (beta1 * (1 - c) - 1) * u`, `z = z - lr_t * u`.
///
/// The weights follow the current `lr` as if it had always been the same (the method is meant
/// to run at a constant `lr`; use `warmup_steps` for a warm-up, not a scheduler): with a
/// constant `lr` they are the package's bit for bit.
///
/// ```
/// use wgpu_optim::ScheduleFreeAdamWConfig;
/// let cfg = ScheduleFreeAdamWConfig { warmup_steps: 100, ..Default::default() };
/// assert_eq!((cfg.lr, cfg.betas, cfg.weight_lr_power), (2.5e-3, (0.9, 0.999), 2.0));
/// assert!(cfg.train_mode);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleFreeAdamWConfig {
    /// Learning rate (default 2.5e-3).
    pub lr: f32,
    /// `betas[0]` interpolates between the average and the base sequence (and must be > 0),
    /// `betas[1]` averages the squared gradient ((0.9, 0.999)).
    pub betas: (f32, f32),
    /// Added to the denominator (1e-8).
    pub eps: f32,
    /// L2 penalty at `y`, added to the normalised gradient (0).
    pub weight_decay: f32,
    /// Linear warm-up of the learning rate over this many steps (0).
    pub warmup_steps: u64,
    /// Polynomial weighting of the average, `t^r` (0); at most 16, where the weight sum, about
    /// `t^(r + 1) / (r + 1)`, still fits in f64 at the step-count cap (2^53).
    pub r: f32,
    /// The average's weights are `lr_max` to this power (2).
    pub weight_lr_power: f32,
    /// Whether the parameters hold the training sequence `y` (true) or the average `x`
    /// (false); switched by [`ScheduleFreeAdamW::train`] / [`ScheduleFreeAdamW::eval`], kept in
    /// checkpoints.
    pub train_mode: bool,
}

impl Default for ScheduleFreeAdamWConfig {
    fn default() -> Self {
        ScheduleFreeAdamWConfig {
            lr: 2.5e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            r: 0.0,
            weight_lr_power: 2.0,
            train_mode: true,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/schedule_free.wgsl` reads each step, per group (and, in its switch mode,
    /// the weight of `lerp(y, z, w)` in `ckp1`).
    pub struct ScheduleFreeAdamWScalars {
        /// `c`, the weight of the new iterate in the average.
        pub ckp1: f32,
        /// `lr_t * (beta1 * (1 - c) - 1)`.
        pub adaptive_lr: f32,
        /// `-lr_t`.
        pub neg_lr: f32,
        /// `beta2`.
        pub beta2: f32,
        /// `1 - beta2`.
        pub one_minus_beta2: f32,
        /// `1 - beta2^t`.
        pub bias_correction2: f32,
        /// `eps`.
        pub eps: f32,
        /// `weight_decay`.
        pub weight_decay: f32,
        /// 1 on the first step (`z` starts as a copy of the parameter), else 0.
        pub first: u32,
    }
}

impl ScheduleFreeAdamWConfig {
    /// `lr_t`, the warmed-up learning rate of step `t` (1-based), in f64 as the package has it.
    pub fn scheduled_lr(&self, t: u64) -> f64 {
        let k = t.saturating_sub(1);
        let sched = if k < self.warmup_steps {
            (k + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        widen(self.lr) * sched
    }

    /// `weight_t`, the weight of step `t`'s iterate in the average.
    fn weight(&self, t: u64) -> f64 {
        (t as f64).powf(widen(self.r)) * self.scheduled_lr(t).powf(widen(self.weight_lr_power))
    }

    /// `c_t = weight_t / sum(weight_1..t)` (0 while the sum is 0), the sum accumulated in f64
    /// step by step as the package does. Reaching a step far from the last one asked (a
    /// resumed run) costs no loop over the steps between: where the weights are equal (past
    /// the warmup, `r = 0`) the sum is still bit for bit the package's; where they change,
    /// stretches of more than 2^20 steps are summed in closed form, within that sum's own
    /// rounding (relative 1e-12 at most in tests at 3 million steps, the same f32 `c_t`).
    pub fn ckp1(&self, t: u64) -> f64 {
        let sum = weight_sum(self, t);
        if sum == 0.0 {
            0.0
        } else {
            self.weight(t) / sum
        }
    }
}

/// Recent weight sums per configuration, so that a step costs O(1): the sum after step `base`,
/// `base + 1`, ... for the last few steps asked of each (a few configurations at a time).
struct Sums {
    key: [u64; 4],
    base: u64,
    sums: VecDeque<f64>,
}

static SUMS: Mutex<Vec<Sums>> = Mutex::new(Vec::new());

/// `sum(weight_1..t)` for `cfg`, added up in order in f64, so that a run resumed at any step
/// starts at once:
/// - past the warmup with `r = 0`, a stretch of equal weights is added without a loop over its
///   steps ([`add_repeatedly`]), bit for bit the step-by-step sum;
/// - otherwise (`r > 0`, weights that grow with `t`, or inside the warmup), a stretch of more
///   than [`CLOSED_FORM_STEPS`] is summed in closed form ([`power_sum`]): it differs from the
///   step-by-step sum by about that sum's own rounding error, far below f32's resolution of
///   the `c_t` it gives. Shorter stretches, and the last steps before `t`, are added one by one.
fn weight_sum(cfg: &ScheduleFreeAdamWConfig, t: u64) -> f64 {
    const KEEP: usize = 256;
    let key = [
        cfg.lr.to_bits() as u64,
        cfg.warmup_steps,
        cfg.r.to_bits() as u64,
        cfg.weight_lr_power.to_bits() as u64,
    ];
    let mut all = SUMS.lock().unwrap_or_else(|e| e.into_inner());
    let at = match all.iter().position(|s| s.key == key) {
        Some(i) => i,
        None => {
            if all.len() >= 8 {
                all.remove(0);
            }
            all.push(Sums {
                key,
                base: 0,
                sums: VecDeque::from([0.0]),
            });
            all.len() - 1
        }
    };
    let s = &mut all[at];
    if t < s.base {
        // Earlier than remembered (a restored or rewound run): add up again from the start.
        s.base = 0;
        s.sums = VecDeque::from([0.0]);
    }
    while s.base + (s.sums.len() as u64) <= t {
        let next = s.base + s.sums.len() as u64;
        let prev = *s.sums.back().expect("never empty");
        // After the warmup, and with r = 0, every weight is the same: far from `t`, add them
        // up without a loop over the steps (the same f64 sum, each addition rounded).
        let far = t - next + 1;
        if cfg.r == 0.0 && next > cfg.warmup_steps && far > 2 * KEEP as u64 {
            let jump = far - KEEP as u64;
            let sum = add_repeatedly(prev, cfg.weight(next), jump);
            s.base = next + jump - 1;
            s.sums = VecDeque::from([sum]);
            continue;
        }
        // Weights that change from step to step: a long stretch up to the warmup's end, or
        // after it, in closed form. Each is `scale * k^q` for step `k` (the warmed-up lr is
        // `lr * k / warmup_steps`).
        if far > CLOSED_FORM_STEPS {
            let (r, power) = (widen(cfg.r), widen(cfg.weight_lr_power));
            // `t - next >= CLOSED_FORM_STEPS`, far more than the steps kept before `t`.
            let last = t - KEEP as u64 / 2;
            let (end, scale, q) = match next <= cfg.warmup_steps {
                true => {
                    let w = cfg.warmup_steps as f64;
                    let end = cfg.warmup_steps.min(last);
                    (end, (widen(cfg.lr) / w).powf(power), r + power)
                }
                false => (last, widen(cfg.lr).powf(power), r),
            };
            if end - next >= CLOSED_FORM_STEPS {
                s.base = end;
                s.sums = VecDeque::from([prev + scale * power_sum(q, next, end)]);
                continue;
            }
        }
        s.sums.push_back(prev + cfg.weight(next));
        if s.sums.len() > KEEP {
            s.sums.pop_front();
            s.base += 1;
        }
    }
    s.sums[(t - s.base) as usize]
}

/// The largest `r` of [`ScheduleFreeAdamWConfig`]: the weight sum, about `t^(r + 1) / (r + 1)`,
/// stays finite in f64 up to the step-count cap (2^53) for `r` up to 18; beyond it `c_t`
/// would be NaN.
const MAX_R: f32 = 16.0;

/// The shortest stretch of steps [`weight_sum`] sums in closed form where it cannot add them up
/// exactly without a loop: about 30 ms of steps added one by one.
const CLOSED_FORM_STEPS: u64 = 1 << 20;

/// `sum(k^q for k in a..=b)` for `q >= 0`, `1 <= a <= b`, in f64: the terms below 1024 one by
/// one, the rest by the Euler-Maclaurin formula, whose corrections past the third fall below
/// f64's resolution there (each is about `(q / (2 pi k))^2` times the one before).
fn power_sum(q: f64, a: u64, b: u64) -> f64 {
    const DIRECT: u64 = 1024;
    let mut sum = 0.0;
    let mut a = a;
    while a <= b && a < DIRECT {
        sum += (a as f64).powf(q);
        a += 1;
    }
    if a > b {
        return sum;
    }
    let (x, y) = (a as f64, b as f64);
    let f = |z: f64| z.powf(q);
    // The n-th derivative of z^q at z.
    let d = |n: i32, z: f64| (0..n).map(|i| q - i as f64).product::<f64>() * z.powf(q - n as f64);
    // The integral from x to y, without the cancellation of y^(q+1) - x^(q+1) when y is near x.
    let integral = x.powf(q + 1.0) * ((q + 1.0) * ((y - x) / x).ln_1p()).exp_m1() / (q + 1.0);
    let corrections =
        (d(1, y) - d(1, x)) / 12.0 - (d(3, y) - d(3, x)) / 720.0 + (d(5, y) - d(5, x)) / 30240.0;
    sum + integral + (f(x) + f(y)) / 2.0 + corrections
}

/// `s + c + c + ...` with `n` additions of `c >= 0`, each rounded to f64 as a loop would round
/// it, in a few steps per binade of `s` instead of `n`.
///
/// Within a binade, `s` sits on a grid of spacing `u` and `s + c` rounds to a grid point:
/// every addition moves `s` by the same amount, except that a tie (`c / u` a half-integer) is
/// broken by the parity of `s / u`. Two equal moves in a row mean the parity no longer changes
/// the move (it is an even number of `u` at a tie), so the same move repeats up to the binade's
/// end; the steps near the end are taken one by one.
fn add_repeatedly(mut s: f64, c: f64, mut n: u64) -> f64 {
    const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
    // The last move, and where it started.
    let (mut last, mut from) = (f64::NAN, s);
    while n > 0 {
        let next = s + c;
        n -= 1;
        if next == s {
            // `c` no longer moves `s`, nor will it at any later step (`s` only grows).
            return s;
        }
        let moved = next - s;
        let before = std::mem::replace(&mut from, s);
        s = next;
        // Both moves within one binade (so on one grid), and the move exact (Sterbenz).
        let one_binade = before.to_bits() & EXPONENT == s.to_bits() & EXPONENT;
        if moved == last && one_binade && c < s && s.is_normal() {
            // The binade [2^e, 2^(e+1)) of `s`, and as many equal moves as surely stay in it.
            let top = f64::from_bits((s.to_bits() & EXPONENT) + (1 << 52));
            let room = ((top - s) / moved) as u64;
            let jump = room.saturating_sub(2).min(n);
            s += jump as f64 * moved;
            n -= jump;
        }
        last = moved;
    }
    s
}

impl OptimizerConfig for ScheduleFreeAdamWConfig {
    const NAME: &'static str = "ScheduleFreeAdamW";
    const SHADER: &'static str = include_str!("../../shaders/schedule_free.wgsl");
    const MOMENTUM: Option<&'static str> = Some("betas[0]");
    type Scalars = ScheduleFreeAdamWScalars;
    const SLOTS: &'static [&'static str] = &["z", "exp_avg_sq"];

    /// torch.optim's rules for Adam's options (`lr`, `eps`, `weight_decay` >= 0, betas in
    /// [0, 1)), with `betas[0]` > 0 (eval mode divides by it), `r` in [0, 16] and
    /// `weight_lr_power` >= 0.
    fn validate(&self) -> Result<()> {
        check_adam_like(self.lr, self.eps, self.betas, self.weight_decay)?;
        check(
            "betas[0]",
            self.betas.0 as f64,
            self.betas.0 > 0.0,
            "must be in (0, 1)",
        )?;
        check(
            "r",
            self.r as f64,
            (0.0..=MAX_R).contains(&self.r),
            "must be in [0, 16] (the weight sum grows as t^(r + 1))",
        )?;
        check(
            "weight_lr_power",
            self.weight_lr_power as f64,
            self.weight_lr_power >= 0.0,
            "must be >= 0",
        )
    }

    fn ready(&self) -> Result<()> {
        if self.train_mode {
            Ok(())
        } else {
            Err(Error::InvalidOptions(
                "Schedule-Free AdamW is in eval mode: call train() before stepping".into(),
            ))
        }
    }

    fn uses_state(&self, _key: &str) -> bool {
        true
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        Vec::new()
    }

    fn maximize(&self) -> bool {
        false
    }

    fn scalars(&self, t: u64) -> ScheduleFreeAdamWScalars {
        let (beta1, beta2) = (widen(self.betas.0), widen(self.betas.1));
        let lr = self.scheduled_lr(t);
        let c = self.ckp1(t);
        ScheduleFreeAdamWScalars {
            ckp1: c as f32,
            adaptive_lr: (lr * (beta1 * (1.0 - c) - 1.0)) as f32,
            neg_lr: (-lr) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2: (1.0 - beta2.powf(t as f64)) as f32,
            eps: self.eps,
            weight_decay: self.weight_decay,
            first: (t == 1) as u32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "betas[0]" => num betas.0,
        "betas[1]" => num betas.1,
        "eps" => num eps,
        "weight_decay" => num weight_decay,
        "warmup_steps" => count warmup_steps,
        "r" => num r,
        "weight_lr_power" => num weight_lr_power,
        "train_mode" => flag train_mode,
    }
}

/// The mode switches of Schedule-Free AdamW.
impl FusedOptimizer<ScheduleFreeAdamWConfig> {
    /// Put the parameters on the training sequence `y` (from the average `x`:
    /// `p = lerp(p, z, 1 - beta1)`), for stepping. A no-op in train mode, and before the first
    /// step (`z` does not exist yet). Submits one pass; waits for the GPU only to learn the step
    /// count when steps may have been skipped.
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, Optimizer, Params, ScheduleFreeAdamW, ScheduleFreeAdamWConfig};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::new(&gpu, &[("w", &[1.0f32; 8][..])])?;
    /// let mut opt = ScheduleFreeAdamW::new(&params, ScheduleFreeAdamWConfig::default())?;
    /// params.write_grad("w", &[0.5; 8])?;
    /// opt.step(&mut params)?;
    /// opt.eval(&params)?; // the average, to evaluate or save
    /// let x = params.read("w")?;
    /// opt.train(&params)?; // back to the training sequence
    /// opt.step(&mut params)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn train(&mut self, params: &Params) -> Result<()> {
        self.switch_mode(params, true)
    }

    /// Put the parameters on the average `x` (from `y`: `p = lerp(p, z, 1 - 1 / beta1)`), to
    /// evaluate or save the model. A no-op in eval mode; see [`ScheduleFreeAdamW::train`].
    pub fn eval(&mut self, params: &Params) -> Result<()> {
        self.switch_mode(params, false)
    }

    /// Whether the parameters hold the training sequence (every group is in train mode).
    pub fn is_train_mode(&self) -> bool {
        (0..self.group_count()).all(|g| self.group_config(g).is_ok_and(|c| c.train_mode))
    }

    fn switch_mode(&mut self, params: &Params, train: bool) -> Result<()> {
        self.check_params(params)?;
        let groups: Vec<ScheduleFreeAdamWConfig> = (0..self.group_count())
            .map(|g| self.group_config(g).cloned())
            .collect::<Result<_>>()?;
        if groups.iter().all(|c| c.train_mode == train) {
            return Ok(());
        }
        if self.step_count() > 0 {
            let weight = |c: &ScheduleFreeAdamWConfig| {
                let beta1 = widen(c.betas.0);
                match (c.train_mode == train, train) {
                    (true, _) => 0.0,
                    (false, true) => (1.0 - beta1) as f32,
                    (false, false) => (1.0 - 1.0 / beta1) as f32,
                }
            };
            self.run_mode(1, |g| ScheduleFreeAdamWScalars {
                ckp1: weight(&groups[g]),
                first: 0,
                ..groups[g].scalars(1)
            })?;
        }
        for (g, mut c) in groups.into_iter().enumerate() {
            c.train_mode = train;
            self.set_group_config(g, c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{add_repeatedly, ScheduleFreeAdamWConfig};

    fn looped(mut s: f64, c: f64, n: u64) -> f64 {
        for _ in 0..n {
            s += c;
        }
        s
    }

    #[test]
    fn repeated_additions_round_as_a_loop_does() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut draw = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Ties included: powers of two and half-ulps of the start.
        let mut cases = vec![
            (0.0, 1e-6, 3_000_000),
            (1.0, 2f64.powi(-53), 10),
            (1.0, 2f64.powi(-52) * 1.5, 1000),
        ];
        cases.push((3.0, 2f64.powi(-51) * 0.5, 1000));
        cases.push((0.0, 0.25, 100_000));
        for _ in 0..200 {
            let c = (draw() % 1000 + 1) as f64 * 10f64.powi(-((draw() % 12) as i32));
            let s = (draw() % 100) as f64 * c;
            cases.push((s, c, draw() % 200_000));
        }
        for (s, c, n) in cases {
            assert_eq!(
                add_repeatedly(s, c, n).to_bits(),
                looped(s, c, n).to_bits(),
                "{s} + {n} x {c}"
            );
        }
    }

    /// The weight sum far from anything remembered is the one added up step by step.
    #[test]
    fn weight_sums_far_ahead_are_the_step_by_step_sums() {
        let cfg = ScheduleFreeAdamWConfig {
            lr: 3e-3,
            warmup_steps: 100,
            ..Default::default()
        };
        let t = 1_000_000;
        let looped = (1..=t).fold(0.0f64, |s, k| s + cfg.weight(k));
        assert_eq!(super::weight_sum(&cfg, t).to_bits(), looped.to_bits());
        let c = cfg.weight(t);
        assert_eq!(
            super::weight_sum(&cfg, t - 1).to_bits(),
            (1..t).fold(0.0f64, |s, k| s + cfg.weight(k)).to_bits()
        );
        assert!(cfg.ckp1(1 << 53) > 0.0 && cfg.ckp1(1 << 53) <= c / looped);
    }

    /// Where the weights change from step to step (`r > 0`, or inside the warmup), a sum far
    /// ahead is the step-by-step sum to within that sum's rounding, and the `c_t` it gives is
    /// the same f32; a step count near the cap is reached at once.
    #[test]
    fn weight_sums_of_changing_weights_far_ahead_match_the_loop() {
        let t = 3_000_000;
        for (r, warmup_steps, weight_lr_power) in [
            (0.5, 0, 2.0),
            (0.0, 2_500_000, 2.0),
            (0.75, 1_500_000, 1.0),
            (2.0, 0, 0.0),
            (0.5, 10, 2.0),
        ] {
            let cfg = ScheduleFreeAdamWConfig {
                lr: 2e-3,
                r,
                warmup_steps,
                weight_lr_power,
                ..Default::default()
            };
            let looped = (1..=t).fold(0.0f64, |s, k| s + cfg.weight(k));
            let sum = super::weight_sum(&cfg, t);
            let rel = (sum - looped).abs() / looped;
            assert!(
                rel < 1e-10,
                "r {r} warmup {warmup_steps}: {sum} vs {looped} ({rel:e})"
            );
            let c = (cfg.weight(t) / looped) as f32;
            let ours = cfg.ckp1(t) as f32;
            assert!(
                (ours - c).abs() <= f32::EPSILON * c,
                "r {r} warmup {warmup_steps}: c_t {ours} vs {c}"
            );
            // The steps right after it come from the sums kept, one addition each.
            assert_eq!(
                super::weight_sum(&cfg, t + 1).to_bits(),
                (sum + cfg.weight(t + 1)).to_bits()
            );
            let far = cfg.ckp1(1 << 53);
            assert!(far.is_finite() && far > 0.0, "r {r}: c_t at 2^53 is {far}");
        }
    }

    /// The closed-form power sums against direct sums, below, at and above the direct part.
    #[test]
    fn power_sums_match_direct_sums() {
        for q in [0.0, 0.5, 1.0, 2.0, 2.5, 7.0] {
            for (a, b) in [(1, 1), (1, 1023), (1, 5000), (1000, 70_000), (5000, 5001)] {
                let direct = (a..=b).fold(0.0f64, |s, k| s + (k as f64).powf(q));
                let closed = super::power_sum(q, a, b);
                let rel = (closed - direct).abs() / direct;
                assert!(
                    rel < 1e-12,
                    "q {q} [{a}, {b}]: {closed} vs {direct} ({rel:e})"
                );
            }
        }
    }
}
