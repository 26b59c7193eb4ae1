//! The schedulers driven by user functions: LambdaLR (closed form) and MultiplicativeLR
//! (recursive form).

use super::rules::Scheduler;
use super::rules::{Attach, Core, Options, Rule, Vals};
use super::PerGroup;
use crate::error::Result;
use std::sync::Arc;

/// A function of the epoch giving an lr factor (PyTorch's `lr_lambda`), for [`LambdaLR`] and
/// [`MultiplicativeLR`]. Cheap to clone (an `Arc`); two `LrLambda`s are equal when they are
/// clones of the same function (pointer equality), which keeps [`super::Schedule`]'s `PartialEq`
/// meaningful without comparing code.
///
/// The scheduler calls it with its `last_epoch` (0 at construction), as PyTorch does.
///
/// ```
/// use wgpu_optim::LrLambda;
/// let decay = LrLambda::new(|epoch| 0.95f64.powf(epoch as f64));
/// assert_eq!(decay.call(0), 1.0);
/// assert_eq!(decay.clone(), decay); // a clone is the same function
/// assert_ne!(decay, LrLambda::new(|epoch| 0.95f64.powf(epoch as f64)));
/// ```
#[derive(Clone)]
pub struct LrLambda(Arc<dyn Fn(u64) -> f64 + Send + Sync>);

impl LrLambda {
    /// Wrap a closure.
    ///
    /// ```
    /// let half_every_10 = wgpu_optim::LrLambda::new(|epoch| 0.5f64.powf((epoch / 10) as f64));
    /// assert_eq!(half_every_10.call(25), 0.25);
    /// ```
    pub fn new(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        LrLambda(Arc::new(f))
    }

    /// The factor at `epoch`.
    ///
    /// ```
    /// let f = wgpu_optim::LrLambda::new(|epoch| 1.0 / (1.0 + epoch as f64));
    /// assert_eq!(f.call(3), 0.25);
    /// ```
    pub fn call(&self, epoch: u64) -> f64 {
        (self.0)(epoch)
    }
}

impl std::fmt::Debug for LrLambda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LrLambda({:p})", Arc::as_ptr(&self.0).cast::<()>())
    }
}

impl PartialEq for LrLambda {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<F: Fn(u64) -> f64 + Send + Sync + 'static> From<F> for LrLambda {
    fn from(f: F) -> Self {
        LrLambda::new(f)
    }
}

/// One [`LrLambda`] for every driven parameter group, or one each (PyTorch's `lr_lambda`
/// accepts a function or a list): [`PerGroup`] of functions.
///
/// ```
/// use wgpu_optim::{LrLambda, LrLambdas};
/// let all: LrLambdas = LrLambda::new(|_| 0.9).into();
/// let each: LrLambdas = vec![LrLambda::new(|_| 0.9), LrLambda::new(|_| 0.99)].into();
/// assert!(matches!(all, LrLambdas::All(_)));
/// assert!(matches!(each, LrLambdas::Each(ref v) if v.len() == 2));
/// ```
pub type LrLambdas = PerGroup<LrLambda>;

/// Sets each group's lr to its initial lr times `lr_lambda(epoch)` (PyTorch's `LambdaLR`).
/// This is how Hugging Face's `get_linear_schedule_with_warmup` and friends are written.
///
/// ```
/// use wgpu_optim::{LambdaLR, Schedule};
/// // Linear warm-up over 100 steps, then linear decay to 0 at step 1000 (Hugging Face's
/// // get_linear_schedule_with_warmup); build a `Scheduler` with it as with any schedule.
/// let (warmup, total) = (100u64, 1000u64);
/// let sched = LambdaLR::new(move |step| {
///     if step < warmup {
///         step as f64 / warmup.max(1) as f64
///     } else {
///         (total.saturating_sub(step) as f64 / (total - warmup).max(1) as f64).max(0.0)
///     }
/// });
/// assert_eq!(sched.lr_lambda_for(0).map(|f| f.call(50)), Some(0.5));
/// Schedule::from(sched).validate(2)?; // any number of groups: one function for all
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LambdaLR {
    /// The factor function: one for every group, or one per driven group.
    pub lr_lambda: LrLambdas,
}

impl LambdaLR {
    /// One function for every group.
    ///
    /// ```
    /// let s = wgpu_optim::LambdaLR::new(|epoch| 0.95f64.powf(epoch as f64));
    /// assert_eq!(s.lr_lambda_for(1).unwrap().call(0), 1.0);
    /// ```
    pub fn new(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        LambdaLR {
            lr_lambda: PerGroup::All(LrLambda::new(f)),
        }
    }

    /// One function per driven group, in group order.
    ///
    /// ```
    /// use wgpu_optim::{LambdaLR, LrLambda};
    /// let s = LambdaLR::per_group(vec![
    ///     LrLambda::new(|epoch| (epoch / 30) as f64),
    ///     LrLambda::new(|epoch| 0.95f64.powf(epoch as f64)),
    /// ]);
    /// assert_eq!(s.lr_lambda_for(0).unwrap().call(60), 2.0);
    /// ```
    pub fn per_group(lambdas: Vec<LrLambda>) -> Self {
        LambdaLR {
            lr_lambda: PerGroup::Each(lambdas),
        }
    }

    /// The function driving group number `i` of the driven groups (`None` past the end of a
    /// per-group list).
    ///
    /// ```
    /// let s = wgpu_optim::LambdaLR::new(|_| 0.5);
    /// assert_eq!(s.lr_lambda_for(7).unwrap().call(1), 0.5);
    /// ```
    pub fn lr_lambda_for(&self, i: usize) -> Option<&LrLambda> {
        self.lr_lambda.get(i)
    }
}

/// Multiplies each group's current lr by `lr_lambda(epoch)` every epoch (PyTorch's
/// `MultiplicativeLR`); construction leaves the lr as it is.
///
/// ```
/// use wgpu_optim::{MultiplicativeLR, Schedule};
/// // lr *= 0.95 every epoch (what ExponentialLR(0.95) does), written as PyTorch's example.
/// let s = MultiplicativeLR::new(|_epoch| 0.95);
/// Schedule::from(s).validate(1)?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MultiplicativeLR {
    /// The factor function: one for every group, or one per driven group.
    pub lr_lambda: LrLambdas,
}

impl MultiplicativeLR {
    /// One function for every group.
    ///
    /// ```
    /// let s = wgpu_optim::MultiplicativeLR::new(|epoch| if epoch % 10 == 0 { 0.5 } else { 1.0 });
    /// assert!(matches!(s.lr_lambda, wgpu_optim::LrLambdas::All(_)));
    /// ```
    pub fn new(f: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        MultiplicativeLR {
            lr_lambda: PerGroup::All(LrLambda::new(f)),
        }
    }

    /// One function per driven group, in group order.
    ///
    /// ```
    /// use wgpu_optim::{LrLambda, MultiplicativeLR};
    /// let s = MultiplicativeLR::per_group(vec![LrLambda::new(|_| 0.9), LrLambda::new(|_| 1.0)]);
    /// assert!(matches!(s.lr_lambda, wgpu_optim::LrLambdas::Each(ref v) if v.len() == 2));
    /// ```
    pub fn per_group(lambdas: Vec<LrLambda>) -> Self {
        MultiplicativeLR {
            lr_lambda: PerGroup::Each(lambdas),
        }
    }
}

/// The [`Options`] of LambdaLR and MultiplicativeLR: one function per group, handed to `rule`.
macro_rules! lambda_options {
    ($t:ty, $name:literal, $rule:ident) => {
        impl Options for $t {
            fn name(&self) -> &'static str {
                $name
            }

            fn validate(&self, groups: usize) -> Result<()> {
                self.lr_lambda.resolve("lr_lambda", groups).map(|_| ())
            }

            fn build(&self, at: &mut Attach<'_>) -> Result<Scheduler> {
                let fs = self.lr_lambda.resolve("lr_lambda", at.groups.len())?;
                at.standard($name, $rule(fs))
            }
        }
    };
}

lambda_options!(LambdaLR, "LambdaLR", Lambda);
lambda_options!(MultiplicativeLR, "MultiplicativeLR", Multiplicative);

/// The epoch as the functions' argument (0 for the -1 of a scheduler not started yet).
fn epoch(core: &Core) -> u64 {
    u64::try_from(core.last_epoch).unwrap_or(0)
}

/// A built LambdaLR: one function per driven group.
#[derive(Clone, Debug)]
struct Lambda(Vec<LrLambda>);

impl Rule for Lambda {
    fn get_lr(&self, core: &Core, _vals: &mut Vals, _initial: bool) -> Result<Vec<f64>> {
        let e = epoch(core);
        Ok(core
            .base_lrs
            .iter()
            .zip(&self.0)
            .map(|(b, f)| b * f.call(e))
            .collect())
    }
}

/// A built MultiplicativeLR: one function per driven group.
#[derive(Clone, Debug)]
struct Multiplicative(Vec<LrLambda>);

impl Rule for Multiplicative {
    fn get_lr(&self, core: &Core, vals: &mut Vals, initial: bool) -> Result<Vec<f64>> {
        if initial {
            return Ok(vals.lr.clone());
        }
        let e = epoch(core);
        Ok(vals
            .lr
            .iter()
            .zip(&self.0)
            .map(|(lr, f)| lr * f.call(e))
            .collect())
    }
}
