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

mod norm;
mod others;
mod stored;
mod torch;

pub use norm::{clip_coef, grad_norm, l1_grad, tensor_sum, ScalerState};
pub use others::{lamb, lion, schedule_free_adamw, schedule_free_switch, sign};
pub use stored::{narrow, requantize, stored_step, Stored};
pub use torch::{
    adadelta, adafactor, adagrad, adam, adamax, asgd, nadam, radam, rmsprop, rprop, sgd,
};

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
