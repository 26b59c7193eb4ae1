//! The optimizer engine shared by every algorithm, and the object-safe [`Optimizer`] trait.
//!
//! Each algorithm (`adam.rs`, `sgd.rs`, ...) only says what is its own: its config with
//! PyTorch's names and defaults, validation, state names, per-step scalars and its shader.
//! Everything else (state buffers in the arena layout, bind groups built once, one dispatch per
//! chunk, one submit per step) lives here, in [`FusedOptimizer`].

mod adadelta;
mod adafactor;
mod adagrad;
mod adam;
mod adamax;
mod asgd;
mod lamb;
mod lion;
mod nadam;
mod radam;
mod rmsprop;
mod rprop;
mod schedule_free;
mod sgd;

pub use adadelta::{Adadelta, AdadeltaConfig, AdadeltaScalars};
pub use adafactor::{Adafactor, AdafactorConfig, AdafactorScalars};
pub use adagrad::{Adagrad, AdagradConfig, AdagradScalars};
pub use adam::{Adam, AdamConfig, AdamScalars};
pub use adamax::{Adamax, AdamaxConfig, AdamaxScalars};
pub use asgd::{Asgd, AsgdConfig, AsgdScalars};
pub use lamb::{Lamb, LambConfig, LambScalars};
pub use lion::{Lion, LionConfig, LionScalars};
pub use nadam::{NAdam, NAdamConfig, NAdamScalars};
pub use radam::{RAdam, RAdamConfig, RAdamScalars};
pub use rmsprop::{RmsProp, RmsPropConfig, RmsPropScalars};
pub use rprop::{Rprop, RpropConfig, RpropScalars};
pub use schedule_free::{ScheduleFreeAdamW, ScheduleFreeAdamWConfig, ScheduleFreeAdamWScalars};
pub use sgd::{Sgd, SgdConfig, SgdScalars};

mod engine;
#[cfg(feature = "burn")]
pub(crate) use engine::RecordedStep;
pub(crate) use engine::{factored_state_shape, StateHome, FACTORED_KEYS, FACTORED_TASK_LEN};
mod groups;
mod persist;
mod window;

#[cfg(test)]
pub(crate) use window::select_source;

pub use groups::ParamGroup;

use crate::error::Result;
use crate::norm::NormType;
use crate::params::Params;
use crate::scaler::GradScaler;
use crate::shader::ShaderStruct;

/// A read-back in flight ([`Optimizer::state_async`], [`Optimizer::last_grad_norm_async`], ...):
/// boxed so that [`Optimizer`] stays object safe. It has no `Send` bound, so that it is the same
/// type in a browser (where wgpu's futures are not `Send`): await it on the thread that made it.
pub type ReadFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + 'a>>;

/// What every optimizer can do; object safe, so `Box<dyn Optimizer>` works (and checkpoints:
/// [`crate::checkpoint::save`] takes `&dyn Optimizer`). Implemented by [`FusedOptimizer`] for every
/// [`OptimizerConfig`]; its supertrait is private to the crate (sealed).
pub trait Optimizer: persist::Persist {
    /// The algorithm's name, e.g. `"Adam"`.
    fn name(&self) -> &'static str;
    /// Record and submit one fused update of every tensor. Does not wait for the GPU (unless
    /// the GPU is 64 steps behind the host with skipping on; see [`Optimizer::set_skip_nonfinite`]).
    ///
    /// In a browser that wait cannot happen: with skipping possible, yield to the page's event
    /// loop (await anything) at least every 64 steps, so that the skip-count read-backs land;
    /// otherwise a run of more than 63 consecutive skipped steps may be missed.
    ///
    /// Validates the configuration and that `params` is the set this optimizer was built for
    /// before any GPU work; an `Err` changes nothing. Gradients are not cleared, as in torch:
    /// see [`Params::zero_grad`].
    fn step(&mut self, params: &mut Params) -> Result<()>;
    /// Current learning rate.
    fn lr(&self) -> f32;
    /// Set the learning rate of every group from the next step on. A negative or non-finite
    /// `lr` is an [`crate::Error::InvalidHyperparameter`] and keeps the old one.
    fn set_lr(&mut self, lr: f32) -> Result<()>;
    /// Number of steps taken. With skipping possible (clipping, skip_nonfinite, a loss scaler)
    /// only the GPU knows how many steps it skipped, and this may wait for a small read-back;
    /// in a browser it never waits and counts the skips the GPU has reported so far (the count
    /// is exact once the page has yielded to its event loop: see
    /// [`Optimizer::step_count_async`]).
    fn step_count(&self) -> u64;
    /// Async form of [`Optimizer::step_count`], on every target: always the exact count.
    fn step_count_async(&self) -> ReadFuture<'_, u64>;
    /// The state keys this configuration keeps (PyTorch's names, e.g. `exp_avg`).
    fn state_keys(&self) -> Vec<&'static str>;
    /// The state keys `tensor` keeps: [`Optimizer::state_keys`], except under a factored
    /// second moment ([`crate::Adafactor`]: `row_var` and `col_var` for a tensor of rank >= 2,
    /// `variance` for others). An [`crate::Error::UnknownTensor`] for a name not in the set.
    ///
    /// ```
    /// use wgpu_optim::{Adafactor, AdafactorConfig, DType, Gpu, Optimizer, Params};
    /// let gpu = Gpu::new()?;
    /// let params = Params::builder(&gpu)
    ///     .tensor("fc.weight", &[4, 3], DType::F32)
    ///     .tensor("fc.bias", &[4], DType::F32)
    ///     .build()?;
    /// let opt = Adafactor::new(&params, AdafactorConfig::default())?;
    /// assert_eq!(opt.state_keys_of("fc.weight")?, ["row_var", "col_var"]);
    /// assert_eq!(opt.state_keys_of("fc.bias")?, ["variance"]);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    fn state_keys_of(&self, tensor: &str) -> Result<Vec<&'static str>>;
    /// Read one state tensor back (PyTorch's key, tensor name). Blocks
    /// ([`Optimizer::state_async`] without the wait; in a browser, where nothing may block,
    /// this is a [`crate::Error::WouldBlock`]).
    fn state(&self, key: &str, tensor: &str) -> Result<Vec<f32>>;
    /// Async form of [`Optimizer::state`], on every target.
    ///
    /// ```no_run
    /// # async fn f(opt: &dyn wgpu_optim::Optimizer) -> wgpu_optim::Result<()> {
    /// let m = opt.state_async("exp_avg", "w").await?;
    /// # Ok(()) }
    /// ```
    fn state_async<'a>(&'a self, key: &'a str, tensor: &'a str) -> ReadFuture<'a, Vec<f32>>;

    /// Number of parameter groups (1 unless built with [`FusedOptimizer::with_groups`]).
    fn group_count(&self) -> usize;
    /// Learning rate of one group.
    fn group_lr(&self, group: usize) -> Result<f32>;
    /// Set the learning rate of one group (validated here).
    fn set_group_lr(&mut self, group: usize, lr: f32) -> Result<()>;
    /// The group's momentum-like coefficient, for schedulers that cycle it: SGD's and RMSprop's
    /// `momentum`, Adam's `betas[0]`; `None` for Adagrad.
    fn group_momentum(&self, group: usize) -> Result<Option<f32>>;
    /// Set the group's momentum-like coefficient (validated here).
    fn set_group_momentum(&mut self, group: usize, momentum: f32) -> Result<()>;

    /// Clip gradients by their global norm before every update (`None`: off). The norm is
    /// computed on the GPU in one extra read of the gradients and never read back.
    ///
    /// Clipping implies skipping: a step whose gradients hold an inf or NaN (so the norm is
    /// inf or NaN and there is no finite coefficient) is skipped on the GPU, leaving params,
    /// state and the step count untouched, as with [`Optimizer::set_skip_nonfinite`].
    /// [`Optimizer::last_step_skipped`] tells.
    fn set_max_grad_norm(&mut self, max_norm: Option<f32>) -> Result<()>;
    /// Norm used for clipping and [`Optimizer::last_grad_norm`]: [`NormType::L2`] (default),
    /// [`NormType::L1`] or [`NormType::Inf`] (`NormType::from_p` takes PyTorch's float).
    fn set_grad_norm_type(&mut self, norm_type: NormType) -> Result<()>;
    /// Total gradient norm of the last step (after unscaling). A sync point: one small read-back
    /// ([`Optimizer::last_grad_norm_async`] without the wait).
    fn last_grad_norm(&self) -> Result<f32>;
    /// Async form of [`Optimizer::last_grad_norm`], on every target.
    fn last_grad_norm_async(&self) -> ReadFuture<'_, f32>;
    /// Make a step with any inf/NaN gradient a no-op on the GPU (params, state and step count
    /// untouched).
    fn set_skip_nonfinite(&mut self, skip: bool) -> Result<()>;
    /// Whether the last step was skipped for a non-finite gradient. A sync point
    /// ([`Optimizer::last_step_skipped_async`] without the wait).
    fn last_step_skipped(&self) -> Result<bool>;
    /// Async form of [`Optimizer::last_step_skipped`], on every target.
    fn last_step_skipped_async(&self) -> ReadFuture<'_, bool>;
    /// Attach a loss scaler (`None` detaches it): gradients are unscaled as they are read,
    /// overflowing steps are skipped and the scale is updated on the GPU.
    fn set_grad_scaler(&mut self, scaler: Option<&GradScaler>) -> Result<()>;
}

/// The per-algorithm part of an optimizer, implemented by every built-in config
/// ([`AdamConfig`], [`SgdConfig`], [`RmsPropConfig`], [`AdagradConfig`], [`LionConfig`], ...)
/// and by yours; [`FusedOptimizer`] does the rest.
///
/// # Adding an optimizer
/// This trait is the extension interface: implement it for your own config type (in your own
/// crate) and [`FusedOptimizer<YourConfig>`](FusedOptimizer) is a full [`Optimizer`], with nothing else to
/// change. You provide:
/// - [`Self::SHADER`], WGSL defining `fn update(i: u32, s: Scalars)`: the update of elements
///   `4i .. 4i+3`. The engine puts in front of it the generated `Scalars` struct, the
///   accessors `load_param(i)` / `store_param(i, v)`, `load_grad(i)` and `load_<slot>(i)` /
///   `store_<slot>(i, v)` per entry of [`Self::SLOTS`] (all `vec4<f32>`, whatever the storage
///   dtype: see [`crate::Precision`]), and the shared helpers of `shaders/common.wgsl`:
///   `prep_grad` (loss-scale unscaling, the clip coefficient and `maximize`; call it on every
///   gradient you read), `add_scaled`, `addcmul`, `lerp4`, `l2_decay`. Bounds and skipped
///   steps are handled before `update` is called. Boolean options are `override` constants
///   named by [`Self::constants`].
/// - [`Self::Scalars`], a [`shader_struct!`](crate::shader_struct) of the per-step numbers
///   (computed on the host by [`Self::scalars`]; at most 60 bytes: the slot's last word is the engine's).
/// - PyTorch-style names for every option ([`Self::hyperparameters`],
///   [`Self::set_hyperparameter`]): checkpoints store and restore them, so
///   [`crate::checkpoint`] saves and resumes your optimizer too.
///
/// Clipping ([`Optimizer::set_max_grad_norm`]), non-finite skipping, loss scaling, parameter
/// groups ([`FusedOptimizer::with_groups`]), state read-back and checkpoints then work as for the
/// built-in optimizers; with the `bench` feature, `bench::Workload::new(config)` benchmarks it
/// (label and bytes per element from [`Self::NAME`], [`Self::constants`], [`Self::SLOTS`] and
/// [`Self::uses_state`]). For a CPU reference that rounds as the shader does, use
/// [`crate::reference::add_scaled`] and its siblings (`tests/custom_optimizer.rs` has a
/// complete sign-SGD with momentum, its reference and its tests).
///
/// ```
/// use wgpu_optim::shader::ShaderStruct;
/// use wgpu_optim::{Error, OptimizerConfig, Result};
///
/// wgpu_optim::shader_struct! {
///     /// Scalars of one sign-SGD step.
///     pub struct SignSgdScalars {
///         /// -lr
///         pub neg_lr: f32,
///     }
/// }
///
/// /// Sign-SGD: `p -= lr * sign(g)`.
/// #[derive(Clone, Debug)]
/// struct SignSgd {
///     lr: f32,
/// }
///
/// impl OptimizerConfig for SignSgd {
///     const NAME: &'static str = "SignSGD";
///     const SHADER: &'static str = "
///         fn update(i: u32, s: Scalars) {
///             param[i] = add_scaled(param[i], sign(prep_grad(grad[i])), s.neg_lr);
///         }";
///     const SLOTS: &'static [&'static str] = &[];
///     type Scalars = SignSgdScalars;
///     fn validate(&self) -> Result<()> {
///         if self.lr >= 0.0 && self.lr.is_finite() {
///             Ok(())
///         } else {
///             Err(Error::InvalidHyperparameter { name: "lr", value: self.lr as f64, rule: "must be >= 0" })
///         }
///     }
///     fn uses_state(&self, _key: &str) -> bool { false }
///     fn constants(&self) -> Vec<(&'static str, u32)> { Vec::new() }
///     fn maximize(&self) -> bool { false }
///     fn scalars(&self, _t: u64) -> SignSgdScalars { SignSgdScalars { neg_lr: -self.lr } }
///     // hyperparameters() and set_hyperparameter() by PyTorch name; lr() and set_lr() follow.
///     wgpu_optim::hyperparameters! {
///         "lr" => num lr,
///     }
/// }
///
/// assert!(SignSgdScalars::wgsl().contains("neg_lr: f32"));
/// // With a device: `let opt = wgpu_optim::FusedOptimizer::new(&params, SignSgd { lr: 1e-3 })?;`
/// ```
pub trait OptimizerConfig: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The algorithm's name.
    const NAME: &'static str;
    /// The optimizer's own WGSL: its `override` constants and
    /// `fn update(i: u32, s: Scalars)`, the update of elements `4i .. 4i+3` of the param, grad
    /// and state buffers, read and written with the generated `load_<name>(i)` and
    /// `store_<name>(i, v)` (`param`, `grad`, and each [`Self::SLOTS`] entry), which convert
    /// from and to the storage dtype (with f32 storage the buffers are also plain
    /// `array<vec4<f32>>` under those names). The engine puts
    /// the shared prologue in front (`shaders/common.wgsl`: bindings, entry point, gradient
    /// preparation `prep_grad` and ATen's fused helpers) and the generated declaration of
    /// [`Self::Scalars`].
    const SHADER: &'static str;
    /// Every state buffer the shader uses, in binding order (PyTorch's names; valid WGSL
    /// identifiers).
    const SLOTS: &'static [&'static str];
    /// The per-step scalars the kernel reads (at most 60 bytes), defined with
    /// [`shader_struct!`](crate::shader_struct): the shader sees the same struct as `Scalars`.
    type Scalars: ShaderStruct;
    /// Check every option against PyTorch's rules.
    fn validate(&self) -> Result<()>;
    /// Whether this configuration uses state `key` (one of [`Self::SLOTS`]).
    fn uses_state(&self, key: &str) -> bool;
    /// Sums over each tensor (at most 4) that the update needs between two passes, as LAMB's
    /// trust ratio needs the norms of the parameter and of the update (0, the default: one
    /// pass). With `k` > 0 the step runs the kernel twice, in the same submit: first with the
    /// `override MODE: u32` at 0, where `update` updates the state and calls
    /// `accumulate(j, v)` for each sum `j < k` (the lanes of `v` inside the tensor, added up);
    /// then the engine adds them up per tensor in a fixed order (deterministic, no atomics);
    /// then with `MODE` 2, where `update` reads them with `tensor_sum(i, j)` and writes the
    /// parameter. See `src/optim/engine/tensor_sums.rs` and [`crate::reference::tensor_sum`].
    const TENSOR_SUMS: u32 = 0;
    /// A second moment factored over the last two dimensions of every tensor of rank >= 2
    /// (Adafactor): per matrix a row and a column mean of `g * g`, per vector a value per
    /// element, kept by the engine under the keys `row_var`, `col_var` and `variance` (f32,
    /// not in [`Self::SLOTS`]) and updated on the GPU before the first pass (false, the
    /// default). Needs [`Self::TENSOR_SUMS`] >= 2. The shader reads them through the tables of
    /// `src/optim/engine/factored.rs` (see `shaders/adafactor.wgsl`).
    const FACTORED: bool = false;
    /// Whether a step may be taken now (checked before every step, after
    /// [`Self::validate`]); `Ok` unless an optimizer has modes, as Schedule-Free's eval mode.
    fn ready(&self) -> Result<()> {
        Ok(())
    }
    /// Initial value of state `key` (PyTorch initialises all but Adagrad's `sum` to zero).
    fn state_init(&self, _key: &str) -> f32 {
        0.0
    }
    /// The bitsandbytes map state `key` is quantized with under 8-bit state
    /// ([`crate::StateFormat::Blockwise8`]): [`crate::QuantMap::Signed`] for states of either
    /// sign, [`crate::QuantMap::Unsigned`] for non-negative ones. `None` (the default): the
    /// state has no 8-bit form, and `set_state_format` refuses it. The update is unchanged; the
    /// kernel dequantizes before `update` and requantizes after it.
    fn quant_map(&self, _key: &str) -> Option<crate::QuantMap> {
        None
    }
    /// Boolean specialisation constants (`override`s) of the shader, as 0/1.
    fn constants(&self) -> Vec<(&'static str, u32)>;
    /// Whether gradients are negated (`maximize`).
    fn maximize(&self) -> bool;
    /// The scalars for step `t` (1-based, the step about to be taken), computed in f64 as
    /// PyTorch's single-tensor path does and rounded to f32 once.
    fn scalars(&self, t: u64) -> Self::Scalars;
    /// The name, in [`OptimizerConfig::hyperparameters`], of the momentum-like coefficient
    /// that schedulers may cycle (SGD/RMSprop `momentum`, Adam `betas[0]`); `None` if there is
    /// none.
    const MOMENTUM: Option<&'static str> = None;
    /// One option by its PyTorch name, as [`OptimizerConfig::hyperparameters`] gives it.
    fn hyperparameter(&self, name: &str) -> Option<f64> {
        self.hyperparameters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
    /// The learning rate (the `lr` option).
    fn lr(&self) -> f32 {
        self.hyperparameter("lr").map_or(f32::NAN, |v| v as f32)
    }
    /// Set the learning rate (not range-checked here; see [`OptimizerConfig::validate`]).
    fn set_lr(&mut self, lr: f32) {
        let _ = self.set_hyperparameter("lr", lr as f64);
    }
    /// The momentum-like coefficient ([`OptimizerConfig::MOMENTUM`]), if any.
    fn momentum(&self) -> Option<f32> {
        Self::MOMENTUM
            .and_then(|name| self.hyperparameter(name))
            .map(|v| v as f32)
    }
    /// Set the momentum-like coefficient (ignored where there is none).
    fn set_momentum(&mut self, momentum: f32) {
        if let Some(name) = Self::MOMENTUM {
            let _ = self.set_hyperparameter(name, momentum as f64);
        }
    }
    /// Every option by PyTorch's name (Adam's `betas` tuple as `betas[0]` and `betas[1]`):
    /// numbers as the f64 a Python user would have written (see [`widen`]; `0.9f32` is `0.9`),
    /// booleans as 0 or 1. Checkpoints store these for every group. Write it and
    /// [`OptimizerConfig::set_hyperparameter`] as one table with
    /// [`hyperparameters!`](crate::hyperparameters).
    ///
    /// ```
    /// use wgpu_optim::{OptimizerConfig, SgdConfig};
    /// let hp = SgdConfig { lr: 0.1, nesterov: true, momentum: 0.9, ..Default::default() }
    ///     .hyperparameters();
    /// assert!(hp.contains(&("lr", 0.1)) && hp.contains(&("nesterov", 1.0)));
    /// ```
    fn hyperparameters(&self) -> Vec<(&'static str, f64)>;
    /// Set one option by its name in [`OptimizerConfig::hyperparameters`]: numbers are rounded
    /// to f32, booleans must be exactly 0 or 1 ([`crate::Error::InvalidHyperparameter`]), an
    /// unknown name is an [`crate::Error::UnknownHyperparameter`]. The value is not range-checked
    /// here: call [`OptimizerConfig::validate`] after the last one.
    ///
    /// ```
    /// use wgpu_optim::{AdamConfig, OptimizerConfig};
    /// let mut cfg = AdamConfig::default();
    /// cfg.set_hyperparameter("betas[1]", 0.98)?;
    /// cfg.set_hyperparameter("amsgrad", 1.0)?;
    /// assert_eq!((cfg.betas.1, cfg.amsgrad), (0.98, true));
    /// assert!(cfg.set_hyperparameter("momentum", 0.9).is_err());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    fn set_hyperparameter(&mut self, name: &str, value: f64) -> Result<()>;
}

/// One table of an optimizer's options by PyTorch name, from which both
/// [`OptimizerConfig::hyperparameters`] and [`OptimizerConfig::set_hyperparameter`] are
/// generated (use it inside `impl OptimizerConfig for ...`). Each row is `"name" => kind
/// field`, the field maybe a path such as `betas.0`, of one of these kinds:
/// - `num`: an f32, [`hyper`]-widened;
/// - `num_or(default)`: an `Option<f32>`, read as `default` where it is `None`, set to `Some`;
/// - `flag`: a bool, 0 or 1;
/// - `count`: a u64, a whole number from 0 to 2^53.
///
/// The [`OptimizerConfig`] example uses it in full.
///
/// ```text
/// wgpu_optim::hyperparameters! {
///     "lr" => num lr,
///     "betas[0]" => num betas.0,
///     "eps[0]" => num_or(f32::EPSILON) eps.0,
///     "amsgrad" => flag amsgrad,
///     "warmup_steps" => count warmup_steps,
/// }
/// ```
#[macro_export]
macro_rules! hyperparameters {
    ($($name:literal => $kind:ident $(($($arg:tt)*))? $first:ident $(. $rest:tt)*),* $(,)?) => {
        fn hyperparameters(&self) -> ::std::vec::Vec<(&'static str, f64)> {
            ::std::vec![$((
                $name,
                $crate::hyperparameters!(@get $kind [$($($arg)*)?] self.$first $(. $rest)*)
            )),*]
        }
        fn set_hyperparameter(&mut self, name: &str, value: f64) -> $crate::Result<()> {
            match name {
                $($name => $crate::hyperparameters!(
                    @set $kind [$($($arg)*)?] $name, value, self.$first $(. $rest)*
                ),)*
                _ => {
                    return ::std::result::Result::Err($crate::optim::unknown_hyperparameter(
                        <Self as $crate::OptimizerConfig>::NAME,
                        name,
                    ))
                }
            }
            ::std::result::Result::Ok(())
        }
    };
    (@get num [] $($e:tt)+) => { $crate::optim::hyper($($e)+) };
    (@get num_or [$d:expr] $($e:tt)+) => { $crate::optim::hyper(($($e)+).unwrap_or($d)) };
    (@get flag [] $($e:tt)+) => { ($($e)+) as u8 as f64 };
    (@get count [] $($e:tt)+) => { ($($e)+) as f64 };
    (@set num [] $name:literal, $v:ident, $($place:tt)+) => { $($place)+ = $v as f32 };
    (@set num_or [$d:expr] $name:literal, $v:ident, $($place:tt)+) => {
        $($place)+ = ::std::option::Option::Some($v as f32)
    };
    (@set flag [] $name:literal, $v:ident, $($place:tt)+) => {
        $($place)+ = $crate::optim::flag($name, $v)?
    };
    (@set count [] $name:literal, $v:ident, $($place:tt)+) => {
        $($place)+ = $crate::optim::count($name, $v)?
    };
}

/// A hyperparameter for [`OptimizerConfig::hyperparameters`]: [`widen`]ed, unless that would
/// not round back to the same f32 (then the f32's exact value), so a save/load round trip is
/// exact.
pub fn hyper(x: f32) -> f64 {
    let w = widen(x);
    if w as f32 == x || x.is_nan() {
        w
    } else {
        x as f64
    }
}

/// PyTorch's checks shared by Adam, Adamax, NAdam and RAdam: `lr`, `eps` and `weight_decay`
/// >= 0, both betas in [0, 1) (all finite).
pub(crate) fn check_adam_like(
    lr: f32,
    eps: f32,
    betas: (f32, f32),
    weight_decay: f32,
) -> Result<()> {
    use crate::error::check;
    let (b1, b2) = (betas.0 as f64, betas.1 as f64);
    check("lr", lr as f64, lr >= 0.0, "must be >= 0")?;
    check("eps", eps as f64, eps >= 0.0, "must be >= 0")?;
    check(
        "betas[0]",
        b1,
        (0.0..1.0).contains(&b1),
        "must be in [0, 1)",
    )?;
    check(
        "betas[1]",
        b2,
        (0.0..1.0).contains(&b2),
        "must be in [0, 1)",
    )?;
    check(
        "weight_decay",
        weight_decay as f64,
        weight_decay >= 0.0,
        "must be >= 0",
    )
}

/// A boolean hyperparameter from 0 or 1 (used by [`hyperparameters!`](crate::hyperparameters)).
#[doc(hidden)]
pub fn flag(name: &'static str, value: f64) -> Result<bool> {
    if value == 0.0 || value == 1.0 {
        Ok(value == 1.0)
    } else {
        Err(crate::Error::InvalidHyperparameter {
            name,
            value,
            rule: "a boolean option must be 0 or 1",
        })
    }
}

/// A whole-number hyperparameter from a value in 0 ..= 2^53 (used by
/// [`hyperparameters!`](crate::hyperparameters)).
#[doc(hidden)]
pub fn count(name: &'static str, value: f64) -> Result<u64> {
    if value >= 0.0 && value.fract() == 0.0 && value <= 2f64.powi(53) {
        Ok(value as u64)
    } else {
        Err(crate::Error::InvalidHyperparameter {
            name,
            value,
            rule: "must be a whole number from 0 to 2^53",
        })
    }
}

/// The most steps an optimizer counts: 2^53, the largest count an f64 (and so a Python int
/// turned float, as torch's schedulers and bias corrections use it) holds exactly. Step counts
/// set by hand, from a checkpoint or from a Burn record are checked against it.
pub const MAX_STEP_COUNT: u64 = 1 << 53;

/// `steps` when it is at most [`MAX_STEP_COUNT`].
pub(crate) fn check_step_count(steps: u64) -> Result<u64> {
    if steps <= MAX_STEP_COUNT {
        Ok(steps)
    } else {
        Err(crate::Error::InvalidOptions(format!(
            "a step count of {steps} is more than 2^53, the most an optimizer counts"
        )))
    }
}

/// The error for a hyperparameter name an optimizer does not have.
#[doc(hidden)]
pub fn unknown_hyperparameter(optimizer: &'static str, name: &str) -> crate::Error {
    crate::Error::UnknownHyperparameter {
        name: name.to_string(),
        optimizer,
    }
}

/// A hyperparameter given as f32, widened to the f64 a Python user would have written
/// (0.9f32 becomes 0.9, not 0.8999999761581421): the shortest decimal that round-trips.
pub fn widen(x: f32) -> f64 {
    if !x.is_finite() {
        return x as f64;
    }
    // Every step widens each hyperparameter again (for up to 8 candidate step counts once
    // steps can be skipped), and formatting + parsing is the costly part of the host's own
    // work in `step()`: remember the last few, per thread.
    thread_local! {
        static RECENT: std::cell::Cell<[(u32, f64); 16]> =
            const { std::cell::Cell::new([(u32::MAX, 0.0); 16]) };
    }
    let bits = x.to_bits();
    let slot = (bits ^ (bits >> 7) ^ (bits >> 17)) as usize % 16;
    RECENT.with(|recent| {
        let mut cache = recent.get();
        if cache[slot].0 == bits {
            return cache[slot].1;
        }
        let wide = x.to_string().parse().unwrap_or(x as f64);
        cache[slot] = (bits, wide);
        recent.set(cache);
        wide
    })
}

pub use engine::{FusedOptimizer, MASTER};

#[cfg(test)]
mod tests {
    use super::widen;

    #[test]
    fn widen_is_the_shortest_decimal_and_cached_values_agree() {
        assert_eq!(widen(0.9), 0.9);
        assert_eq!(widen(1e-3), 1e-3);
        assert_eq!(widen(0.999), 0.999);
        assert_eq!(widen(f32::INFINITY), f64::INFINITY);
        assert!(widen(f32::NAN).is_nan());
        // Many values through the 16-entry cache, twice, in different orders: every answer is
        // the uncached one.
        let xs: Vec<f32> = (0..200).map(|i| 1e-4 * (i as f32 + 0.37)).collect();
        let want: Vec<f64> = xs.iter().map(|x| x.to_string().parse().unwrap()).collect();
        for _ in 0..2 {
            for (x, w) in xs.iter().zip(&want) {
                assert_eq!(widen(*x), *w);
            }
            for (x, w) in xs.iter().zip(&want).rev() {
                assert_eq!(widen(*x), *w);
            }
        }
    }
}
