//! CPU reference implementations, on ndarray: one plain function per optimizer, line by line
//! the algorithm of PyTorch's single-tensor path (`foreach=False`) and of our shaders, in f32
//! with the per-step scalars computed in f64.
//!
//! The tests compare every GPU kernel against these; they are public so you can check your own
//! runs.
//!
//! ```
//! use ndarray::array;
//! use wgpu_optim::{reference, AdamConfig};
//! let cfg = AdamConfig::default();
//! let mut p = array![1.0f32, -2.0];
//! let mut state = reference::State::new(&cfg, p.len());
//! reference::adam(&cfg, &mut p, &array![0.5, 0.5], &mut state);
//! assert!((p[0] - (1.0 - 1e-3)).abs() < 1e-6); // first Adam step moves by ~lr
//! ```

use crate::dtype::{self, DType};
use crate::optim::LionConfig;
use crate::optim::{widen, AdagradConfig, AdamConfig, OptimizerConfig, RmsPropConfig, SgdConfig};
use crate::optim::{AdafactorConfig, LambConfig};
use crate::optim::{AdamaxConfig, NAdamConfig, RAdamConfig, ScheduleFreeAdamWConfig};
use ndarray::Array1;

/// One step of a reference optimizer on one tensor: `(config, param, grad, state)`, the shape
/// of [`adam`], [`sgd`], [`rmsprop`], [`adagrad`] and of a reference you write for your own
/// [`OptimizerConfig`].
pub type Step<C> = fn(&C, &mut Array1<f32>, &Array1<f32>, &mut State);

/// Optimizer state of one tensor: the step count and PyTorch's named buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Steps taken.
    pub step: u64,
    buffers: Vec<(&'static str, Array1<f32>)>,
    /// During a [`stored_step`] on 16-bit state: its dtype, rounding, key and positions.
    stored: Option<(DType, bool, u32, Vec<u32>)>,
    /// The tensor's shape and the lengths of its pieces ([`State::with_layout`]).
    layout: Option<(Vec<usize>, Vec<usize>)>,
}

impl State {
    /// Fresh state for a tensor of `len` elements, initialised as PyTorch does.
    pub fn new<C: OptimizerConfig>(config: &C, len: usize) -> State {
        let buffers = C::SLOTS
            .iter()
            .filter(|k| config.uses_state(k))
            .map(|&k| (k, Array1::from_elem(len, config.state_init(k))))
            .collect();
        State {
            step: 0,
            buffers,
            stored: None,
            layout: None,
        }
    }

    /// The tensor's shape and how it lies in the arena (the lengths of its
    /// [`crate::Params::pieces`], in order), for a reference whose result depends on them:
    /// [`adafactor`] factors over the last two dimensions and adds up a row or column piece by
    /// piece, as the GPU does. Without it a tensor is a vector in one piece.
    ///
    /// ```
    /// use wgpu_optim::{reference, AdafactorConfig};
    /// let cfg = AdafactorConfig::default();
    /// let state = reference::State::new(&cfg, 6).with_layout(&[2, 3], &[6]);
    /// assert_eq!(state.shape(), Some(&[2usize, 3][..]));
    /// ```
    pub fn with_layout(mut self, shape: &[usize], piece_lens: &[usize]) -> State {
        self.layout = Some((shape.to_vec(), piece_lens.to_vec()));
        self
    }

    /// The shape given by [`State::with_layout`].
    pub fn shape(&self) -> Option<&[usize]> {
        self.layout.as_ref().map(|(s, _)| s.as_slice())
    }

    /// Round `values` (state slot `slot` of [`OptimizerConfig::SLOTS`]) as the kernel stores
    /// them, for a reference whose step reads its state back after storing it (LAMB): a no-op
    /// but inside a [`stored_step`] on 16-bit state.
    pub fn round_as_stored(&self, slot: usize, values: &mut [f32]) {
        if let Some((dtype, stochastic, key, positions)) = &self.stored {
            narrow(
                values,
                *dtype,
                *stochastic,
                *key,
                1 + slot as u32,
                positions,
            );
        }
    }

    /// A state buffer by PyTorch's key, if this configuration keeps it.
    pub fn get(&self, key: &str) -> Option<&Array1<f32>> {
        self.buffers.iter().find(|(k, _)| *k == key).map(|(_, b)| b)
    }

    /// Mutable access to a state buffer.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Array1<f32>> {
        self.buffers
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, b)| b)
    }

    /// The keys kept.
    pub fn keys(&self) -> Vec<&'static str> {
        self.buffers.iter().map(|(k, _)| *k).collect()
    }

    /// State `key`, zeros of `len` the first time (a state whose size is not the tensor's).
    fn take_or_zeros(&mut self, key: &'static str, len: usize) -> Array1<f32> {
        if self.get_mut(key).is_none() {
            self.buffers.push((key, Array1::zeros(len)));
        }
        self.take(key)
    }

    fn take(&mut self, key: &str) -> Array1<f32> {
        self.get_mut(key).map(std::mem::take).unwrap_or_default()
    }

    fn put(&mut self, key: &str, value: Array1<f32>) {
        if let Some(b) = self.get_mut(key) {
            *b = value;
        }
    }
}

thread_local! {
    static FUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

#[doc(hidden)]
/// Choose, for the calling thread, whether the reference fuses multiply-adds (the default, as
/// ATen's CPU and CUDA kernels do) or rounds the product first, as a GPU driver that splits
/// WGSL's `fma` does (see [`crate::Gpu::fused_multiply_add`]). With the device's choice the
/// reference reproduces its results bit for bit on lavapipe.
pub fn set_fused_multiply_add(fused: bool) {
    FUSED.with(|f| f.set(fused));
}

/// `x * y + z`, fused or not (see [`set_fused_multiply_add`]): WGSL's `fma` as the device
/// rounds it. With [`add_scaled`], [`addcmul`] and [`lerp`] (the same helpers as
/// `shaders/common.wgsl`'s) a reference for your own optimizer rounds as its shader does.
pub fn fma(x: f32, y: f32, z: f32) -> f32 {
    if FUSED.with(|f| f.get()) {
        x.mul_add(y, z)
    } else {
        x * y + z
    }
}

// ATen fuses multiply-adds: these three helpers are the exact forms of `add(alpha=)`,
// `addcmul` and `lerp`; `addcdiv` is `a + (s * b) / c`, unfused.

/// `a.add(b, alpha=s)`: `fma(b, s, a)`, as `add_scaled` in `shaders/common.wgsl`.
pub fn add_scaled(a: f32, b: f32, s: f32) -> f32 {
    fma(b, s, a)
}

/// `a.addcmul(b, c, value=s)`: `fma(s * b, c, a)`, as `addcmul` in `shaders/common.wgsl`.
pub fn addcmul(a: f32, b: f32, c: f32, s: f32) -> f32 {
    fma(s * b, c, a)
}

/// `torch.lerp(start, end, w)` for a scalar weight, as `lerp4` in `shaders/common.wgsl`.
pub fn lerp(start: f32, end: f32, w: f32) -> f32 {
    if w.abs() < 0.5 {
        fma(w, end - start, start)
    } else {
        fma(w - 1.0, end - start, end)
    }
}

/// How one tensor and its optimizer state are stored, for [`stored_step`]: the reference side of
/// [`crate::Precision`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// The parameter's (and gradient's) dtype.
    pub param: DType,
    /// The optimizer state's dtype.
    pub state: DType,
    /// Whether a 16-bit parameter has an f32 master copy.
    pub master: bool,
    /// Whether bf16 stores round stochastically.
    pub stochastic: bool,
}

/// `values` as they come back from a store into `dtype`: to nearest even, or (bf16 with
/// `stochastic`) with the kernel's random bits of `stream` under `key`, element `j` being
/// element `positions[j]` of its chunk.
pub fn narrow(
    values: &mut [f32],
    dtype: DType,
    stochastic: bool,
    key: u32,
    stream: u32,
    positions: &[u32],
) {
    match dtype {
        DType::F32 => {}
        DType::Bf16 if stochastic => {
            for (v, &e) in values.iter_mut().zip(positions) {
                let r = dtype::noise(key, stream, e);
                *v = dtype::bf16_to_f32(dtype::f32_to_bf16_stochastic(*v, r));
            }
        }
        _ => values.iter_mut().for_each(|v| *v = dtype.round(*v)),
    }
}

/// One step of `step` on a tensor stored as `stored`, as the kernels run it: the f32 update of
/// the widened values (the master copy's, when there is one), then every state buffer and the
/// parameter narrowed into their dtypes (stream 0 for the parameter, 1 + k for state slot k of
/// [`OptimizerConfig::SLOTS`]). `key` is the step's rounding key
/// ([`crate::dtype::step_key`] of the seed and the step counter) and `positions` each
/// element's index inside its chunk ([`crate::Params::pieces`]). `param`, `grad` and `state`
/// hold the stored values, widened.
#[allow(clippy::too_many_arguments)]
pub fn stored_step<C: OptimizerConfig>(
    step: Step<C>,
    cfg: &C,
    stored: Stored,
    key: u32,
    positions: &[u32],
    param: &mut Array1<f32>,
    master: Option<&mut Array1<f32>>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    let mut p = match &master {
        Some(m) => (*m).clone(),
        None => param.clone(),
    };
    if stored.state.is_half() {
        state.stored = Some((stored.state, stored.stochastic, key, positions.to_vec()));
    }
    step(cfg, &mut p, grad, state);
    state.stored = None;
    for (k, slot) in C::SLOTS.iter().enumerate() {
        if let Some(b) = state.get_mut(slot) {
            let b = b.as_slice_mut().expect("contiguous");
            narrow(
                b,
                stored.state,
                stored.stochastic,
                key,
                1 + k as u32,
                positions,
            );
        }
    }
    if let Some(m) = master {
        m.assign(&p);
    }
    narrow(
        p.as_slice_mut().expect("contiguous"),
        stored.param,
        stored.stochastic,
        key,
        0,
        positions,
    );
    *param = p;
}

/// The 8-bit step's second half, as the kernel does it under
/// [`crate::StateFormat::Blockwise8`]: after the f32 update of a tensor with 8-bit state (run
/// on the dequantized state), each state is quantized blockwise with its map
/// ([`OptimizerConfig::quant_map`], [`crate::blockwise::quantize`]) and replaced by the values
/// its codes stand for. Returns, per state, the codes and the f32 values they were made from.
///
/// ```
/// use ndarray::Array1;
/// use wgpu_optim::{reference, AdamConfig};
/// let cfg = AdamConfig::adamw();
/// let mut p = Array1::from_elem(300, 1.0f32);
/// let mut state = reference::State::new(&cfg, 300);
/// reference::adam(&cfg, &mut p, &Array1::from_elem(300, 0.5), &mut state);
/// let q = reference::requantize(&cfg, &mut state);
/// assert_eq!(q[0].0, "exp_avg");
/// assert_eq!(q[0].1.absmax, vec![0.05, 0.05]); // every element at the block's absmax
/// assert!(state.get("exp_avg").unwrap().iter().all(|&m| m == 0.05));
/// ```
pub fn requantize<C: OptimizerConfig>(
    cfg: &C,
    state: &mut State,
) -> Vec<(&'static str, crate::QuantizedState, Vec<f32>)> {
    let mut out = Vec::new();
    for (key, values) in &mut state.buffers {
        let map = cfg
            .quant_map(key)
            .unwrap_or_else(|| panic!("state `{key}` has no 8-bit form"))
            .values();
        let before = values.to_vec();
        let (codes, absmax) = crate::blockwise::quantize(&map, &before);
        let q = crate::QuantizedState { codes, absmax, map };
        *values = Array1::from(q.values());
        out.push((*key, q, before));
    }
    out
}

/// `grad.add(param, alpha=weight_decay)` when weight_decay != 0.
fn l2(g: f32, p: f32, wd: f32) -> f32 {
    if wd != 0.0 {
        add_scaled(g, p, wd)
    } else {
        g
    }
}

fn maybe_neg(g: f32, maximize: bool) -> f32 {
    if maximize {
        -g
    } else {
        g
    }
}

/// One step of `torch.optim.SGD` on one tensor: `buf.mul_(momentum).add_(grad, alpha=1 -
/// dampening)`, `grad.add(buf, alpha=momentum)` and `param.add_(grad, alpha=-lr)` are ATen's
/// fused `add(alpha=)`, as in `shaders/sgd.wgsl`.
pub fn sgd(cfg: &SgdConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let first = state.step == 1;
    let neg_lr = (-widen(cfg.lr)) as f32;
    let one_minus_dampening = (1.0 - widen(cfg.dampening)) as f32;
    let mut buf = state.take("momentum_buffer");
    for i in 0..param.len() {
        let p = param[i];
        let mut g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        if cfg.momentum != 0.0 {
            buf[i] = if first {
                g
            } else {
                add_scaled(buf[i] * cfg.momentum, g, one_minus_dampening)
            };
            g = if cfg.nesterov {
                add_scaled(g, buf[i], cfg.momentum)
            } else {
                buf[i]
            };
        }
        param[i] = add_scaled(p, g, neg_lr);
    }
    state.put("momentum_buffer", buf);
}

/// How the Adam family decays weights: decoupled (`p *= factor`, `factor = 1 - lr * wd`) or
/// L2 on the gradient.
#[derive(Clone, Copy)]
struct AdamDecay {
    decoupled: bool,
    factor: f32,
    weight_decay: f32,
}

/// The first half of Adam, NAdam and RAdam on one element (`shaders/adam_family.wgsl`): weight
/// decay, then `exp_avg.lerp_(g, 1 - beta1)` and `exp_avg_sq.mul_(beta2).addcmul_(g, g,
/// 1 - beta2)`. Returns the decayed param and the gradient the moments saw.
fn adam_moments(
    p: f32,
    g: f32,
    decay: AdamDecay,
    (m, one_minus_beta1): (&mut f32, f32),
    (v, beta2, one_minus_beta2): (&mut f32, f32, f32),
) -> (f32, f32) {
    let (mut p, mut g) = (p, g);
    if decay.decoupled {
        p *= decay.factor;
    } else {
        g = l2(g, p, decay.weight_decay);
    }
    *m = lerp(*m, g, one_minus_beta1);
    *v = addcmul(*v * beta2, g, g, one_minus_beta2);
    (p, g)
}

/// One step of `torch.optim.Adam` (AdamW when `decoupled_weight_decay`) on one tensor.
pub fn adam(cfg: &AdamConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let step = state.step as f64;
    let (lr, wd) = (widen(cfg.lr), widen(cfg.weight_decay));
    let (beta1, beta2) = (widen(cfg.betas.0), widen(cfg.betas.1));
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    let neg_step_size = (-(lr / bias_correction1)) as f32;
    let bias_correction2_sqrt = bias_correction2.powf(0.5) as f32;
    let (decay, one_minus_beta1, one_minus_beta2) = (
        (1.0 - lr * wd) as f32,
        (1.0 - beta1) as f32,
        (1.0 - beta2) as f32,
    );
    let (beta2, eps) = (beta2 as f32, cfg.eps);
    let mut exp_avg = state.take("exp_avg");
    let mut exp_avg_sq = state.take("exp_avg_sq");
    let mut max_exp_avg_sq = state.take("max_exp_avg_sq");
    for i in 0..param.len() {
        let decay = AdamDecay {
            decoupled: cfg.decoupled_weight_decay,
            factor: decay,
            weight_decay: cfg.weight_decay,
        };
        let (p, _) = adam_moments(
            param[i],
            maybe_neg(grad[i], cfg.maximize),
            decay,
            (&mut exp_avg[i], one_minus_beta1),
            (&mut exp_avg_sq[i], beta2, one_minus_beta2),
        );
        let denom = if cfg.amsgrad {
            max_exp_avg_sq[i] = max_exp_avg_sq[i].max(exp_avg_sq[i]);
            max_exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps
        } else {
            exp_avg_sq[i].sqrt() / bias_correction2_sqrt + eps
        };
        param[i] = p + (neg_step_size * exp_avg[i]) / denom;
    }
    state.put("exp_avg", exp_avg);
    state.put("exp_avg_sq", exp_avg_sq);
    state.put("max_exp_avg_sq", max_exp_avg_sq);
}

/// One step of `torch.optim.RMSprop` on one tensor.
pub fn rmsprop(
    cfg: &RmsPropConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let neg_lr = (-widen(cfg.lr)) as f32;
    let one_minus_alpha = (1.0 - widen(cfg.alpha)) as f32;
    let mut square_avg = state.take("square_avg");
    let mut grad_avg = state.take("grad_avg");
    let mut buf = state.take("momentum_buffer");
    for i in 0..param.len() {
        let p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        square_avg[i] = addcmul(square_avg[i] * cfg.alpha, g, g, one_minus_alpha);
        let avg = if cfg.centered {
            grad_avg[i] = lerp(grad_avg[i], g, one_minus_alpha);
            addcmul(square_avg[i], grad_avg[i], grad_avg[i], -1.0).sqrt() + cfg.eps
        } else {
            square_avg[i].sqrt() + cfg.eps
        };
        if cfg.momentum > 0.0 {
            buf[i] = buf[i] * cfg.momentum + (1.0 * g) / avg;
            param[i] = add_scaled(p, buf[i], neg_lr);
        } else {
            param[i] = p + (neg_lr * g) / avg;
        }
    }
    state.put("square_avg", square_avg);
    state.put("grad_avg", grad_avg);
    state.put("momentum_buffer", buf);
}

/// One step of `torch.optim.Adagrad` on one tensor.
pub fn adagrad(
    cfg: &AdagradConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let step = state.step as f64;
    let clr = widen(cfg.lr) / (1.0 + (step - 1.0) * widen(cfg.lr_decay));
    let neg_clr = (-clr) as f32;
    let mut sum = state.take("sum");
    for i in 0..param.len() {
        let p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        sum[i] = addcmul(sum[i], g, g, 1.0);
        let std = sum[i].sqrt() + cfg.eps;
        param[i] = p + (neg_clr * g) / std;
    }
    state.put("sum", sum);
}

/// `torch.sign` (and WGSL's `sign`): -1, 0 or 1, 0 for both zeros (`f32::signum` gives 1 for
/// +0); NaN stays NaN.
pub fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x * 0.0
    }
}

/// One step of Lion on one tensor, as lion-pytorch's `update_fn` (and `shaders/lion.wgsl`):
/// `p.mul_(1 - lr * wd)`, `update = exp_avg * beta1` then `.add(grad, alpha=1 - beta1).sign_()`,
/// `p.add_(update, alpha=-lr)`, `exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)`.
pub fn lion(cfg: &LionConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let (lr, wd) = (widen(cfg.lr), widen(cfg.weight_decay));
    let (b1, b2) = (cfg.betas.0, cfg.betas.1);
    let decay = (1.0 - lr * wd) as f32;
    let one_minus_b1 = (1.0 - widen(b1)) as f32;
    let one_minus_b2 = (1.0 - widen(b2)) as f32;
    let neg_lr = (-lr) as f32;
    let mut exp_avg = state.take("exp_avg");
    for i in 0..param.len() {
        let g = maybe_neg(grad[i], cfg.maximize);
        let m = exp_avg[i];
        let update = sign(add_scaled(m * b1, g, one_minus_b1));
        param[i] = add_scaled(param[i] * decay, update, neg_lr);
        exp_avg[i] = add_scaled(m * b2, g, one_minus_b2);
    }
    state.put("exp_avg", exp_avg);
}

/// One step of `torch.optim.Adadelta` on one tensor.
pub fn adadelta(
    cfg: &crate::optim::AdadeltaConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let neg_lr = (-widen(cfg.lr)) as f32;
    let one_minus_rho = (1.0 - widen(cfg.rho)) as f32;
    let (rho, eps) = (cfg.rho, cfg.eps);
    let mut square_avg = state.take("square_avg");
    let mut acc_delta = state.take("acc_delta");
    for i in 0..param.len() {
        let p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        square_avg[i] = addcmul(square_avg[i] * rho, g, g, one_minus_rho);
        let std = (square_avg[i] + eps).sqrt();
        let delta = ((acc_delta[i] + eps).sqrt() / std) * g;
        acc_delta[i] = addcmul(acc_delta[i] * rho, delta, delta, one_minus_rho);
        param[i] = add_scaled(p, delta, neg_lr);
    }
    state.put("square_avg", square_avg);
    state.put("acc_delta", acc_delta);
}

/// One step of `torch.optim.Rprop` on one tensor (`step_size` starts at `lr`, see
/// [`State::new`]).
pub fn rprop(
    cfg: &crate::optim::RpropConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let (etaminus, etaplus) = cfg.etas;
    let (step_size_min, step_size_max) = cfg.step_sizes;
    let mut prev = state.take("prev");
    let mut step_size = state.take("step_size");
    for i in 0..param.len() {
        let mut g = maybe_neg(grad[i], cfg.maximize);
        let sign = g * prev[i];
        let factor = if sign > 0.0 {
            etaplus
        } else if sign < 0.0 {
            etaminus
        } else {
            1.0
        };
        step_size[i] = (step_size[i] * factor)
            .max(step_size_min)
            .min(step_size_max);
        if sign < 0.0 {
            g = 0.0;
        }
        let dir = if g > 0.0 {
            1.0
        } else if g < 0.0 {
            -1.0
        } else {
            0.0
        };
        param[i] = addcmul(param[i], dir, step_size[i], -1.0);
        prev[i] = g;
    }
    state.put("prev", prev);
    state.put("step_size", step_size);
}

/// One step of `torch.optim.ASGD` on one tensor. torch's per-tensor `eta` and `mu` are what
/// [`crate::AsgdConfig::eta`] and [`crate::AsgdConfig::mu`] give for the steps taken before.
pub fn asgd(
    cfg: &crate::optim::AsgdConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    let (eta, mu) = (cfg.eta(state.step), cfg.mu(state.step));
    state.step += 1;
    let decay = (1.0 - widen(cfg.lambd) * eta as f64) as f32;
    let neg_eta = (-(eta as f64)) as f32;
    let mut ax = state.take("ax");
    for i in 0..param.len() {
        let mut p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        p *= decay;
        p = add_scaled(p, g, neg_eta);
        param[i] = p;
        ax[i] = if mu != 1.0 {
            ax[i] + (p - ax[i]) * mu
        } else {
            p
        };
    }
    state.put("ax", ax);
}

/// One step of `torch.optim.Adamax` on one tensor.
pub fn adamax(cfg: &AdamaxConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let step = state.step as f64;
    let (lr, beta1) = (widen(cfg.lr), widen(cfg.betas.0));
    let bias_correction = 1.0 - beta1.powf(step);
    let clr = lr / bias_correction;
    let neg_clr = (-clr) as f32;
    let one_minus_beta1 = (1.0 - beta1) as f32;
    let mut exp_avg = state.take("exp_avg");
    let mut exp_inf = state.take("exp_inf");
    for i in 0..param.len() {
        let p = param[i];
        let g = l2(maybe_neg(grad[i], cfg.maximize), p, cfg.weight_decay);
        exp_avg[i] = lerp(exp_avg[i], g, one_minus_beta1);
        // torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        exp_inf[i] = (exp_inf[i] * cfg.betas.1).max(g.abs() + cfg.eps);
        // param.addcdiv_(exp_avg, exp_inf, value=-clr)
        param[i] = p + (neg_clr * exp_avg[i]) / exp_inf[i];
    }
    state.put("exp_avg", exp_avg);
    state.put("exp_inf", exp_inf);
}

/// One step of `torch.optim.RAdam` on one tensor.
pub fn radam(cfg: &RAdamConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let step = state.step as f64;
    let (lr, wd) = (widen(cfg.lr), widen(cfg.weight_decay));
    let (beta1, beta2) = (widen(cfg.betas.0), widen(cfg.betas.1));
    let decay = (1.0 - lr * wd) as f32;
    let bias_correction1 = 1.0 - beta1.powf(step);
    let bias_correction2 = 1.0 - beta2.powf(step);
    // rho_inf, rho_t and the rectification term, in f64 on the host.
    let rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    let rho_t = rho_inf - 2.0 * step * beta2.powf(step) / bias_correction2;
    let rect = ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        .powf(0.5) as f32;
    let (one_minus_beta1, one_minus_beta2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
    let (bc1, bc2_sqrt) = (bias_correction1 as f32, bias_correction2.powf(0.5) as f32);
    let mut exp_avg = state.take("exp_avg");
    let mut exp_avg_sq = state.take("exp_avg_sq");
    for i in 0..param.len() {
        let decay = AdamDecay {
            decoupled: cfg.decoupled_weight_decay,
            factor: decay,
            weight_decay: cfg.weight_decay,
        };
        let (p, _) = adam_moments(
            param[i],
            maybe_neg(grad[i], cfg.maximize),
            decay,
            (&mut exp_avg[i], one_minus_beta1),
            (&mut exp_avg_sq[i], cfg.betas.1, one_minus_beta2),
        );
        let bias_corrected_exp_avg = exp_avg[i] / bc1;
        param[i] = if rho_t > 5.0 {
            // (bias_correction2 ** 0.5) / exp_avg_sq_sqrt: `Tensor.__rtruediv__`, a reciprocal
            // times the scalar.
            let adaptive_lr = (1.0 / (exp_avg_sq[i].sqrt() + cfg.eps)) * bc2_sqrt;
            p - bias_corrected_exp_avg * cfg.lr * adaptive_lr * rect
        } else {
            p - bias_corrected_exp_avg * cfg.lr
        };
    }
    state.put("exp_avg", exp_avg);
    state.put("exp_avg_sq", exp_avg_sq);
}

/// One step of `torch.optim.NAdam` on one tensor (`mu_product` as torch's float32 scalar:
/// [`NAdamConfig::mu_product`]).
pub fn nadam(cfg: &NAdamConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let step = state.step as f64;
    let (lr, wd) = (widen(cfg.lr), widen(cfg.weight_decay));
    let (beta1, beta2, md) = (
        widen(cfg.betas.0),
        widen(cfg.betas.1),
        widen(cfg.momentum_decay),
    );
    let decay = (1.0 - lr * wd) as f32;
    let bias_correction2 = (1.0 - beta2.powf(step)) as f32;
    let mu = beta1 * (1.0 - 0.5 * 0.96f64.powf(step * md));
    let mu_next = beta1 * (1.0 - 0.5 * 0.96f64.powf((step + 1.0) * md));
    // mu_product *= mu, in float32, from 1 over every step so far.
    let mut mu_product = 1.0f32;
    for k in 1..=state.step {
        mu_product *= (beta1 * (1.0 - 0.5 * 0.96f64.powf(k as f64 * md))) as f32;
    }
    let mu_product = mu_product as f64;
    let mu_product_next = mu_product * mu_next;
    let grad_coef = (-lr * (1.0 - mu) / (1.0 - mu_product)) as f32;
    let exp_avg_coef = ((-lr * mu_next) / (1.0 - mu_product_next)) as f32;
    let (one_minus_beta1, one_minus_beta2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
    let mut exp_avg = state.take("exp_avg");
    let mut exp_avg_sq = state.take("exp_avg_sq");
    for i in 0..param.len() {
        let decay = AdamDecay {
            decoupled: cfg.decoupled_weight_decay,
            factor: decay,
            weight_decay: cfg.weight_decay,
        };
        let (mut p, g) = adam_moments(
            param[i],
            maybe_neg(grad[i], cfg.maximize),
            decay,
            (&mut exp_avg[i], one_minus_beta1),
            (&mut exp_avg_sq[i], cfg.betas.1, one_minus_beta2),
        );
        let denom = (exp_avg_sq[i] / bias_correction2).sqrt() + cfg.eps;
        p += (grad_coef * g) / denom;
        param[i] = p + (exp_avg_coef * exp_avg[i]) / denom;
    }
    state.put("exp_avg", exp_avg);
    state.put("exp_avg_sq", exp_avg_sq);
}

/// Total norm of all gradients (each multiplied by `inv_scale` first, as `GradScaler.unscale_`
/// does), accumulated in f64: `norm_type` 2, 1 or inf. `None` when a gradient is inf or NaN.
pub fn grad_norm(grads: &[&Array1<f32>], norm: crate::NormType, inv_scale: f32) -> Option<f64> {
    let mut acc = 0.0f64;
    for g in grads {
        for &x in g.iter() {
            let x = x * inv_scale;
            if !x.is_finite() {
                return None;
            }
            let x = x as f64;
            match norm {
                crate::NormType::L2 => acc += x * x,
                crate::NormType::L1 => acc += x.abs(),
                crate::NormType::Inf => acc = acc.max(x.abs()),
            }
        }
    }
    Some(if norm == crate::NormType::L2 {
        acc.sqrt()
    } else {
        acc
    })
}

/// The sum of `values` (one tensor's) in the order the GPU adds them up
/// ([`crate::OptimizerConfig::TENSOR_SUMS`]): each group of four lanes `((a + b) + c) + d`
/// (lanes past the end as 0), each granule of 64 elements its 16 groups in order, then thread
/// `j` of 256 the granules `j, j + 256, ...` in order, then a tree over the threads (stride
/// 128, 64, ..., 1).
///
/// ```
/// let v: Vec<f32> = (0..1000).map(|i| i as f32).collect();
/// assert_eq!(wgpu_optim::reference::tensor_sum(&v), 499500.0);
/// ```
pub fn tensor_sum(values: &[f32]) -> f32 {
    let n = values.len();
    let lane = |e: usize| if e < n { values[e] } else { 0.0 };
    let granules: Vec<f32> = (0..n.div_ceil(64))
        .map(|g| {
            let mut acc = 0.0f32;
            for t in 0..16 {
                let e = g * 64 + t * 4;
                acc += ((lane(e) + lane(e + 1)) + lane(e + 2)) + lane(e + 3);
            }
            acc
        })
        .collect();
    let mut parts = [0.0f32; 256];
    for (j, part) in parts.iter_mut().enumerate() {
        *part = granules
            .iter()
            .skip(j)
            .step_by(256)
            .fold(0.0, |a, &g| a + g);
    }
    let mut stride = 128;
    while stride > 0 {
        for l in 0..stride {
            parts[l] += parts[l + stride];
        }
        stride /= 2;
    }
    parts[0]
}

/// One step of LAMB on one tensor, as `optax.lamb` (and `shaders/lamb.wgsl`): the moments,
/// `u = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p`, the trust
/// ratio `sqrt(sum p^2) / sqrt(sum u^2)` over the tensor (1 where either sum is 0, each sum
/// as [`tensor_sum`] adds it up), then `p = p - lr * (ratio * u)`.
pub fn lamb(cfg: &LambConfig, param: &mut Array1<f32>, grad: &Array1<f32>, state: &mut State) {
    state.step += 1;
    let s = cfg.scalars(state.step);
    let mut m = state.take("exp_avg");
    let mut v = state.take("exp_avg_sq");
    let n = param.len();
    for i in 0..n {
        let g = grad[i];
        m[i] = add_scaled(m[i] * s.beta1, g, s.one_minus_beta1);
        v[i] = addcmul(v[i] * s.beta2, g, g, s.one_minus_beta2);
    }
    // The direction is computed from the moments as stored (both passes read them back).
    state.round_as_stored(0, m.as_slice_mut().expect("contiguous"));
    state.round_as_stored(1, v.as_slice_mut().expect("contiguous"));
    let mut u = vec![0.0f32; n];
    for i in 0..n {
        let (m_hat, v_hat) = (m[i] / s.bias_correction1, v[i] / s.bias_correction2);
        u[i] = add_scaled(m_hat / (v_hat.sqrt() + s.eps), param[i], s.weight_decay);
    }
    let pp = tensor_sum(&param.iter().map(|p| p * p).collect::<Vec<f32>>());
    let uu = tensor_sum(&u.iter().map(|u| u * u).collect::<Vec<f32>>());
    let ratio = if pp > 0.0 && uu > 0.0 {
        pp.sqrt() / uu.sqrt()
    } else {
        1.0
    };
    for i in 0..n {
        param[i] = add_scaled(param[i], u[i] * ratio, s.neg_lr);
    }
    state.put("exp_avg", m);
    state.put("exp_avg_sq", v);
}

/// One step of Adafactor on one tensor, as `torch.optim.Adafactor`'s single-tensor path and
/// `shaders/adafactor.wgsl` (see [`AdafactorConfig`] for the algorithm). The tensor's shape
/// and pieces come from [`State::with_layout`] (a vector in one piece without it). The sums
/// are added up in the GPU's order: a row's or a column's `g * g` by `fma` in index order
/// within each task (at most 256 elements, in one piece), then the tasks' sums in order; the
/// row mean over the rows in order;
/// the norms of `p` and `u` by [`tensor_sum`].
pub fn adafactor(
    cfg: &AdafactorConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let s = cfg.scalars(state.step);
    let n = param.len();
    let (shape, pieces) = state.layout.clone().unwrap_or_else(|| (vec![n], vec![n]));
    // Each piece as a tensor-local range.
    let mut ranges = Vec::with_capacity(pieces.len());
    let mut at = 0;
    for len in pieces {
        ranges.push(at..at + len);
        at += len;
    }
    let grad: Array1<f32> = grad.mapv(|g| maybe_neg(g, cfg.maximize));
    // A task of main_partials: at most FACTORED_TASK_LEN elements, all in one piece.
    let sq_sum = |elems: &mut dyn Iterator<Item = usize>| -> f32 {
        let mut total = 0.0f32;
        let mut part = None;
        let (mut piece, mut len) = (usize::MAX, 0);
        for j in elems {
            let k = ranges
                .iter()
                .position(|r| r.contains(&j))
                .expect("in a piece");
            if k != piece || len == crate::optim::FACTORED_TASK_LEN {
                total += part.take().unwrap_or(0.0);
                (piece, len) = (k, 0);
                part = Some(0.0f32);
            }
            len += 1;
            part = part.map(|acc| fma(grad[j], grad[j], acc));
        }
        total + part.unwrap_or(0.0)
    };
    let pp = tensor_sum(&param.iter().map(|p| p * p).collect::<Vec<f32>>());
    let mut v = vec![0.0f32; n];
    if shape.len() >= 2 {
        let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let batch = n / (rows * cols);
        let mut row_var = state.take_or_zeros("row_var", batch * rows);
        let mut col_var = state.take_or_zeros("col_var", batch * cols);
        let mean = |sum: f32, over: usize| sum / over as f32;
        for o in 0..batch * rows {
            let sum = sq_sum(&mut (o * cols..(o + 1) * cols));
            row_var[o] = lerp(row_var[o], mean(sum, cols), s.beta2_weight);
        }
        for o in 0..batch * cols {
            let j0 = (o / cols) * rows * cols + o % cols;
            let sum = sq_sum(&mut (0..rows).map(|r| j0 + r * cols));
            col_var[o] = lerp(col_var[o], mean(sum, rows), s.beta2_weight);
        }
        let row_mean: Vec<f32> = (0..batch)
            .map(|b| {
                let sum = row_var
                    .iter()
                    .skip(b * rows)
                    .take(rows)
                    .fold(0.0f32, |a, &x| a + x);
                (sum / rows as f32).max(s.eps1)
            })
            .collect();
        for (j, v) in v.iter_mut().enumerate() {
            let b = j / (rows * cols);
            *v = (row_var[j / cols] * col_var[b * cols + j % cols]) / row_mean[b];
        }
        state.put("row_var", row_var);
        state.put("col_var", col_var);
    } else {
        let mut variance = state.take_or_zeros("variance", n);
        for j in 0..n {
            variance[j] = lerp(variance[j], grad[j] * grad[j], s.beta2_weight);
            v[j] = variance[j];
        }
        state.put("variance", variance);
    }
    let u: Vec<f32> = (0..n)
        .map(|j| (1.0 / v[j].max(s.eps1_sq).sqrt()) * grad[j])
        .collect();
    let uu = tensor_sum(&u.iter().map(|u| u * u).collect::<Vec<f32>>());
    let sqrt_numel = (n as f64).sqrt() as f32;
    let alpha = s.eps2.max(pp.sqrt() / sqrt_numel) * s.rho;
    let denom = 1.0f32.max(uu.sqrt() / (sqrt_numel * s.d));
    for j in 0..n {
        param[j] = add_scaled(param[j] * s.decay, u[j], -(alpha / denom));
    }
}

/// One step of Schedule-Free AdamW on one tensor, as `schedulefree.AdamWScheduleFree.step`
/// (and `shaders/schedule_free.wgsl`): with `c` = [`ScheduleFreeAdamWConfig::ckp1`] and `lr_t`
/// = [`ScheduleFreeAdamWConfig::scheduled_lr`] of this step,
///
/// ```text
/// z = param                                   (first step)
/// v = beta2 * v + (1 - beta2) * g * g
/// u = g / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * y
/// y = lerp(y, z, c) + lr_t * (beta1 * (1 - c) - 1) * u
/// z = z - lr_t * u
/// ```
pub fn schedule_free_adamw(
    cfg: &ScheduleFreeAdamWConfig,
    param: &mut Array1<f32>,
    grad: &Array1<f32>,
    state: &mut State,
) {
    state.step += 1;
    let s = cfg.scalars(state.step);
    let mut z = state.take("z");
    let mut v = state.take("exp_avg_sq");
    if s.first != 0 {
        z.assign(param);
    }
    for i in 0..param.len() {
        let g = grad[i];
        v[i] = addcmul(v[i] * s.beta2, g, g, s.one_minus_beta2);
        let mut u = g / ((v[i] / s.bias_correction2).sqrt() + s.eps);
        if s.weight_decay != 0.0 {
            u = add_scaled(u, param[i], s.weight_decay);
        }
        param[i] = add_scaled(lerp(param[i], z[i], s.ckp1), u, s.adaptive_lr);
        z[i] = add_scaled(z[i], u, s.neg_lr);
    }
    state.put("z", z);
    state.put("exp_avg_sq", v);
}

/// Schedule-Free's switch between its sequences on one tensor: `param = lerp(param, z, w)`
/// (`w` = `1 - beta1` for `train()`, `1 - 1 / beta1` for `eval()`, rounded to f32).
pub fn schedule_free_switch(param: &mut Array1<f32>, z: &Array1<f32>, w: f32) {
    param.zip_mut_with(z, |p, &z| *p = lerp(*p, z, w));
}

/// The gradient with L1 regularisation, as the kernels form it
/// ([`crate::FusedOptimizer::set_l1`]): `grad + l1 * sign(param)` after `maximize`'s negation.
/// The reference steps negate the gradient themselves when `maximize` is on, so this returns
/// what they must be given: `grad - l1 * sign(param)` then (its negation is `-grad + l1 *
/// sign(param)`, exactly, as the kernel computes it). `param` is the value the sign is taken of
/// (the f32 master copy where there is one); `sign(0)` is 0.
///
/// ```
/// use ndarray::array;
/// let g = wgpu_optim::reference::l1_grad(&array![2.0, -1.0, 0.0], &array![0.5, 0.5, 0.5], 0.25, false);
/// assert_eq!(g, array![0.75, 0.25, 0.5]);
/// ```
pub fn l1_grad(param: &Array1<f32>, grad: &Array1<f32>, l1: f32, maximize: bool) -> Array1<f32> {
    let s = if maximize { -l1 } else { l1 };
    ndarray::Zip::from(grad).and(param).map_collect(|&g, &p| {
        let sign = if p > 0.0 {
            1.0
        } else if p < 0.0 {
            -1.0
        } else {
            0.0
        };
        g + s * sign
    })
}

/// `clip_grad_norm_`'s multiplier in f32: `min(1, max_norm / (total_norm + 1e-6))`.
pub fn clip_coef(total_norm: f32, max_norm: f32) -> f32 {
    (max_norm / (total_norm + 1e-6)).min(1.0)
}

/// `torch.amp.GradScaler`'s scale and growth tracker, updated as `_amp_update_scale_` does.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalerState {
    /// Current scale.
    pub scale: f32,
    /// Clean steps since the last change.
    pub growth_tracker: u32,
}

impl ScalerState {
    /// The starting state of a scaler with `config`.
    pub fn new(config: &crate::ScalerConfig) -> Self {
        ScalerState {
            scale: config.init_scale,
            growth_tracker: 0,
        }
    }

    /// One `scaler.update()` after a step that did (or did not) find an inf/NaN gradient.
    pub fn update(&mut self, found_inf: bool, config: &crate::ScalerConfig) {
        if found_inf {
            self.scale *= config.backoff_factor;
            self.growth_tracker = 0;
        } else if self.growth_tracker + 1 == config.growth_interval {
            let grown = self.scale * config.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
        }
    }
}
