//! NAdam (`torch.optim.NAdam`): Adam with Nesterov momentum and a momentum schedule.

use super::{widen, FusedOptimizer, OptimizerConfig};
use crate::error::{check, Result};

/// NAdam, `torch.optim.NAdam` (with `decoupled_weight_decay: true`, torch's NAdamW).
pub type NAdam = FusedOptimizer<NAdamConfig>;

/// Options of [`NAdam`], with PyTorch's names and defaults.
///
/// # `mu_product`
/// torch keeps `mu_product`, the product of the momentum schedule
/// `mu_k = beta1 (1 - 0.5 * 0.96^(k * momentum_decay))` over the steps taken, as a float32
/// scalar tensor per parameter, multiplied in float32 each step (`mu_product *= mu`). It is the
/// same for every tensor and depends only on the step count, `betas[0]` and
/// `momentum_decay`, so here it is host state: [`NAdamConfig::mu_product`] recomputes it for
/// step `t` with the same float32 rounding, and the kernel reads only `exp_avg` and
/// `exp_avg_sq`. It is not a state buffer (not in [`crate::Optimizer::state_keys`] nor in a
/// checkpoint's tensors); a checkpoint restores it exactly from the saved step count and
/// hyperparameters, and `tools/torch_checkpoint.py` writes torch's 0-dim `mu_product` for
/// every parameter (asking torch for its value at the saved step) and, reading a torch
/// checkpoint, checks it against that value. One difference from torch follows: if `betas[0]` or `momentum_decay` are
/// changed during training, torch's product keeps the old factors and ours is recomputed with
/// the new ones. For that reason NAdam names no momentum for schedulers to cycle
/// ([`OptimizerConfig::MOMENTUM`] is `None`).
///
/// ```
/// use wgpu_optim::NAdamConfig;
/// let cfg = NAdamConfig::default();
/// assert_eq!((cfg.lr, cfg.momentum_decay), (2e-3, 4e-3));
/// assert_eq!(cfg.mu_product(0), 1.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct NAdamConfig {
    /// Learning rate (default 2e-3).
    pub lr: f32,
    /// Coefficients of the running averages of the gradient and its square (0.9, 0.999).
    pub betas: (f32, f32),
    /// Added to the denominator (1e-8).
    pub eps: f32,
    /// Weight decay (0).
    pub weight_decay: f32,
    /// Momentum decay of the schedule `mu_t` (4e-3).
    pub momentum_decay: f32,
    /// Decay the weights directly (`p *= 1 - lr * wd`, NAdamW) instead of adding `wd * p` to
    /// the gradient (false).
    pub decoupled_weight_decay: bool,
    /// Maximize the objective instead of minimizing (false).
    pub maximize: bool,
}

impl Default for NAdamConfig {
    fn default() -> Self {
        NAdamConfig {
            lr: 2e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            momentum_decay: 4e-3,
            decoupled_weight_decay: false,
            maximize: false,
        }
    }
}

crate::shader_struct! {
    /// What `shaders/nadam.wgsl` reads each step, per group (PyTorch's single-tensor NAdam).
    pub struct NAdamScalars {
        /// L2 decay added to the gradient (coupled decay).
        pub weight_decay: f32,
        /// `1 - lr * weight_decay` (decoupled decay).
        pub decay_factor: f32,
        /// `1 - beta1`, the weight of `exp_avg.lerp_(grad, 1 - beta1)`.
        pub lerp_w: f32,
        /// `beta2`.
        pub beta2: f32,
        /// `1 - beta2`.
        pub one_minus_beta2: f32,
        /// `1 - beta2^t`.
        pub bias_correction2: f32,
        /// `eps`.
        pub eps: f32,
        /// `-lr (1 - mu_t) / (1 - mu_product_t)`, the gradient's coefficient.
        pub grad_coef: f32,
        /// `-lr mu_{t+1} / (1 - mu_product_t mu_{t+1})`, the momentum's coefficient.
        pub exp_avg_coef: f32,
    }
}

impl NAdamConfig {
    /// The momentum schedule `mu_k = beta1 (1 - 0.5 * 0.96^(k * momentum_decay))`, in f64.
    pub fn mu(&self, k: u64) -> f64 {
        let beta1 = widen(self.betas.0);
        beta1 * (1.0 - 0.5 * 0.96f64.powf(k as f64 * widen(self.momentum_decay)))
    }

    /// torch's `mu_product` after `t` steps: `mu_1 ... mu_t`, multiplied in float32 as torch's
    /// float32 scalar tensor is (`mu_product *= mu`), 1 at `t = 0`.
    pub fn mu_product(&self, t: u64) -> f32 {
        // Steps come in order: continue from the last product computed on this thread for the
        // same schedule instead of starting again from 1.
        thread_local! {
            static LAST: std::cell::Cell<[(u32, u32, u64, f32); 4]> =
                const { std::cell::Cell::new([(0, 0, 0, 1.0); 4]) };
        }
        let key = (self.betas.0.to_bits(), self.momentum_decay.to_bits());
        LAST.with(|last| {
            let mut cache = last.get();
            let (mut k, mut prod) = cache
                .iter()
                .filter(|e| (e.0, e.1) == key && e.2 <= t)
                .map(|e| (e.2, e.3))
                .max_by_key(|e| e.0)
                .unwrap_or((0, 1.0));
            // mu_k grows with k towards beta1 < 1 and rounding is monotone, so once a product
            // no longer changes (0, or a subnormal that mu_k > 0.5 rounds back to itself) no
            // later factor changes it: the loop ends there, not after t steps.
            while k < t {
                let next = prod * self.mu(k + 1) as f32;
                if next == prod {
                    break;
                }
                (k, prod) = (k + 1, next);
            }
            let slot = (key.0 ^ key.1.rotate_left(7)) as usize % cache.len();
            cache[slot] = (key.0, key.1, t, prod);
            last.set(cache);
            prod
        })
    }
}

impl OptimizerConfig for NAdamConfig {
    const NAME: &'static str = "NAdam";
    const SHADER: &'static str = concat!(
        include_str!("../../shaders/adam_family.wgsl"),
        include_str!("../../shaders/nadam.wgsl")
    );
    type Scalars = NAdamScalars;
    const SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq"];

    fn validate(&self) -> Result<()> {
        super::check_adam_like(self.lr, self.eps, self.betas, self.weight_decay)?;
        check(
            "momentum_decay",
            self.momentum_decay as f64,
            self.momentum_decay >= 0.0,
            "must be >= 0",
        )
    }

    fn uses_state(&self, _key: &str) -> bool {
        true
    }

    fn constants(&self) -> Vec<(&'static str, u32)> {
        vec![("DECOUPLED", self.decoupled_weight_decay as u32)]
    }

    fn maximize(&self) -> bool {
        self.maximize
    }

    fn scalars(&self, t: u64) -> NAdamScalars {
        let (lr, wd) = (widen(self.lr), widen(self.weight_decay));
        let (beta1, beta2) = (widen(self.betas.0), widen(self.betas.1));
        let bias_correction2 = 1.0 - beta2.powf(t as f64);
        let (mu, mu_next) = (self.mu(t), self.mu(t + 1));
        // `_get_value(mu_product)`: the float32 product, read as a Python float.
        let mu_product = self.mu_product(t) as f64;
        let mu_product_next = mu_product * mu_next;
        NAdamScalars {
            weight_decay: wd as f32,
            decay_factor: (1.0 - lr * wd) as f32,
            lerp_w: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2: bias_correction2 as f32,
            eps: widen(self.eps) as f32,
            grad_coef: (-lr * (1.0 - mu) / (1.0 - mu_product)) as f32,
            exp_avg_coef: ((-lr * mu_next) / (1.0 - mu_product_next)) as f32,
        }
    }

    crate::hyperparameters! {
        "lr" => num lr,
        "betas[0]" => num betas.0,
        "betas[1]" => num betas.1,
        "eps" => num eps,
        "weight_decay" => num weight_decay,
        "momentum_decay" => num momentum_decay,
        "decoupled_weight_decay" => flag decoupled_weight_decay,
        "maximize" => flag maximize,
    }
}

#[cfg(test)]
mod tests {
    use super::NAdamConfig;

    /// The product from 1, multiplied in f32 step by step, as torch's float32 tensor.
    fn direct(cfg: &NAdamConfig, t: u64) -> f32 {
        (1..=t).fold(1.0f32, |p, k| p * cfg.mu(k) as f32)
    }

    #[test]
    fn mu_product_is_the_f32_product_in_any_order_of_requests() {
        let a = NAdamConfig::default();
        let b = NAdamConfig {
            betas: (0.5, 0.9),
            momentum_decay: 0.3,
            ..Default::default()
        };
        // Forward, backward, jumps and two schedules interleaved: every answer is the direct one.
        let ts: Vec<u64> = (0..40)
            .chain((0..40).rev())
            .chain([500, 3, 1200, 7])
            .collect();
        for &t in &ts {
            for cfg in [&a, &b] {
                assert_eq!(cfg.mu_product(t), direct(cfg, t), "t = {t}");
            }
        }
        assert_eq!(a.mu_product(0), 1.0);
        // beta1 0.9: the f32 product underflows to 0 and stays there.
        assert_eq!(a.mu_product(5000), 0.0);
    }

    /// With mu_k > 0.5 the f32 product sticks at a subnormal instead of reaching 0:
    /// the answer for any later step is that value, found without multiplying up to it.
    #[test]
    fn mu_product_that_stops_changing_is_found_without_a_loop_to_t() {
        let cfg = NAdamConfig {
            momentum_decay: 100.0,
            ..Default::default()
        };
        let stuck = direct(&cfg, 20_000);
        assert!(stuck > 0.0 && stuck < f32::MIN_POSITIVE, "{stuck:e}");
        assert_eq!(direct(&cfg, 20_001), stuck);
        // Multiplying up to 2^53 would not end in any test's time.
        assert_eq!(cfg.mu_product(1 << 53), stuck);
        assert_eq!(cfg.mu_product(1 << 40), stuck);
    }
}
