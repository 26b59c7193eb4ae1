//! Burn's optimizer record format (burnpack) for the optimizers Burn has too: write our state
//! as the record Burn's `ModuleOptimizer::load` reads, and take over the state Burn's
//! `ModuleOptimizer::save` wrote.

use super::bridge::collect;
use super::{module_device, BurnOptimizer};
use crate::dtype::DType as StateDType;
use crate::error::{Error, Result};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::StateFormat;
use crate::{AdafactorConfig, AdagradConfig, AdamConfig, LambConfig, LionConfig};
use crate::{RmsPropConfig, SgdConfig};
use ::burn::module::Module;
use std::collections::HashMap;
use std::path::Path;

/// An optimizer whose state a Burn optimizer record holds: how Burn's optimizer of the same
/// algorithm names each state tensor under a parameter's id, and the step count it keeps.
/// [`BurnOptimizer::save_burn_record`] and [`BurnOptimizer::load_burn_record`] work for these.
///
/// | ours | Burn's | state tensors (our key) | Burn's step count |
/// |---|---|---|---|
/// | [`AdamConfig`] | `AdamConfig`, `AdamWConfig` | `momentum.moment_1` (`exp_avg`), `momentum.moment_2` (`exp_avg_sq`), `momentum.max_moment_2` (`max_exp_avg_sq`, with `amsgrad`) | `momentum.time` |
/// | [`SgdConfig`] | `SgdConfig` | `momentum.velocity` (`momentum_buffer`, with a momentum) | none |
/// | [`RmsPropConfig`] | `RmsPropConfig` | `square_avg.square_avg` (`square_avg`), `centered.grad_avg` (`grad_avg`, centered), `momentum.buf` (`momentum_buffer`, with a momentum); `centered.avg` is derived | none |
/// | [`AdagradConfig`] | `AdaGradConfig` | `lr_decay.sum` (`sum`) | `lr_decay.time` |
/// | [`LionConfig`] | `LionConfig` | `momentum` (`exp_avg`) | none |
/// | [`LambConfig`] | `LambConfig` | `moment_1` (`exp_avg`), `moment_2` (`exp_avg_sq`) | `time` |
/// | [`AdafactorConfig`] | `AdafactorConfig` | rank >= 2: `second_moment` (`row_var`, `[..., rows, 1]`), `column_second_moment` (`col_var`, `[..., 1, cols]`); a vector: `second_moment` (`variance`) | `time` |
///
/// The two sides' tensors mean the same: torch's state, which Burn's optimizers keep as well
/// (Burn's AdaGrad has no `initial_accumulator_value`; its `sum` holds ours with it; Burn's
/// Adafactor averages `g^2 + epsilon_1`, 1e-30 by default, where torch averages `g^2`).
///
/// ```
/// use wgpu_optim::burn::BurnRecord;
/// use wgpu_optim::SgdConfig;
/// assert_eq!(SgdConfig::BURN_STATE, [("momentum.velocity", "momentum_buffer")]);
/// assert_eq!(SgdConfig::BURN_TIME, None);
/// ```
pub trait BurnRecord: OptimizerConfig {
    /// Burn's name of each state tensor under the parameter's id (`momentum.moment_1`), with
    /// this crate's state key for it (`exp_avg`). Only those the configuration keeps
    /// ([`OptimizerConfig::uses_state`]) are written and read.
    const BURN_STATE: &'static [(&'static str, &'static str)];
    /// Burn's per-parameter step count (`momentum.time`), where its optimizer keeps one.
    const BURN_TIME: Option<&'static str>;

    /// The state tensors of a parameter of `shape` in Burn's record: Burn's name, our key and
    /// the tensor's shape. By default those of [`BurnRecord::BURN_STATE`] the configuration
    /// keeps, each in the parameter's shape.
    ///
    /// ```
    /// use wgpu_optim::burn::BurnRecord;
    /// use wgpu_optim::AdafactorConfig;
    /// let cfg = AdafactorConfig::default();
    /// assert_eq!(
    ///     cfg.burn_state(&[3, 4]),
    ///     [("second_moment", "row_var", vec![3, 1]), ("column_second_moment", "col_var", vec![1, 4])]
    /// );
    /// assert_eq!(cfg.burn_state(&[4]), [("second_moment", "variance", vec![4])]);
    /// ```
    fn burn_state(&self, shape: &[usize]) -> Vec<(&'static str, &'static str, Vec<usize>)> {
        Self::BURN_STATE
            .iter()
            .filter(|(_, key)| self.uses_state(key))
            .map(|&(leaf, key)| (leaf, key, shape.to_vec()))
            .collect()
    }

    /// Tensors Burn's record holds that Burn derives from the state each step: written from
    /// `state` (the tensors of [`BurnRecord::BURN_STATE`] the configuration keeps, by our
    /// key), never read. None by default.
    fn burn_derived(
        &self,
        state: &HashMap<&'static str, Vec<f32>>,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let _ = state;
        Vec::new()
    }
}

impl BurnRecord for AdamConfig {
    const BURN_STATE: &'static [(&'static str, &'static str)] = &[
        ("momentum.moment_1", "exp_avg"),
        ("momentum.moment_2", "exp_avg_sq"),
        ("momentum.max_moment_2", "max_exp_avg_sq"),
    ];
    const BURN_TIME: Option<&'static str> = Some("momentum.time");
}

impl BurnRecord for SgdConfig {
    const BURN_STATE: &'static [(&'static str, &'static str)] =
        &[("momentum.velocity", "momentum_buffer")];
    const BURN_TIME: Option<&'static str> = None;
}

impl BurnRecord for RmsPropConfig {
    const BURN_STATE: &'static [(&'static str, &'static str)] = &[
        ("square_avg.square_avg", "square_avg"),
        ("centered.grad_avg", "grad_avg"),
        ("momentum.buf", "momentum_buffer"),
    ];
    const BURN_TIME: Option<&'static str> = None;

    /// `centered.avg`: `square_avg - grad_avg^2` when centered, else `square_avg` (what
    /// Burn's step computes from the two before it divides by `sqrt(avg) + eps`).
    fn burn_derived(
        &self,
        state: &HashMap<&'static str, Vec<f32>>,
    ) -> Vec<(&'static str, Vec<f32>)> {
        let square_avg = &state["square_avg"];
        let avg = match state.get("grad_avg") {
            Some(grad_avg) => square_avg
                .iter()
                .zip(grad_avg)
                .map(|(s, g)| s - g * g)
                .collect(),
            None => square_avg.clone(),
        };
        vec![("centered.avg", avg)]
    }
}

impl BurnRecord for AdagradConfig {
    const BURN_STATE: &'static [(&'static str, &'static str)] = &[("lr_decay.sum", "sum")];
    const BURN_TIME: Option<&'static str> = Some("lr_decay.time");
}

impl BurnRecord for LionConfig {
    const BURN_STATE: &'static [(&'static str, &'static str)] = &[("momentum", "exp_avg")];
    const BURN_TIME: Option<&'static str> = None;
}

impl BurnRecord for LambConfig {
    const BURN_STATE: &'static [(&'static str, &'static str)] =
        &[("moment_1", "exp_avg"), ("moment_2", "exp_avg_sq")];
    const BURN_TIME: Option<&'static str> = Some("time");
}

impl BurnRecord for AdafactorConfig {
    const BURN_STATE: &'static [(&'static str, &'static str)] = &[
        ("second_moment", "row_var"),
        ("column_second_moment", "col_var"),
        ("second_moment", "variance"),
    ];
    const BURN_TIME: Option<&'static str> = Some("time");

    /// A tensor of rank >= 2 keeps `row_var` and `col_var`, any other `variance` (torch's
    /// shapes, which are Burn's).
    fn burn_state(&self, shape: &[usize]) -> Vec<(&'static str, &'static str, Vec<usize>)> {
        Self::BURN_STATE
            .iter()
            .filter_map(|&(leaf, key)| {
                crate::optim::factored_state_shape(key, shape).map(|s| (leaf, key, s))
            })
            .collect()
    }
}

/// The state tensors of a parameter of `shape` that any of `configs` keeps, each once.
fn leaves<'a, C: BurnRecord + 'a>(
    configs: impl IntoIterator<Item = &'a C>,
    shape: &[usize],
) -> Vec<(&'static str, &'static str, Vec<usize>)> {
    let mut out: Vec<(&'static str, &'static str, Vec<usize>)> = Vec::new();
    for cfg in configs {
        for leaf in cfg.burn_state(shape) {
            if !out.iter().any(|(_, key, _)| *key == leaf.1) {
                out.push(leaf);
            }
        }
    }
    // In `BURN_STATE`'s order, whichever configuration named a tensor first.
    out.sort_by_key(|(_, key, _)| C::BURN_STATE.iter().position(|(_, k)| k == key));
    out
}

impl<C: BurnRecord> BurnOptimizer<C> {
    /// Write the optimizer state as a Burn optimizer record: the burnpack file Burn's own
    /// `ModuleOptimizer::load` reads, so a run started here can go on with Burn's optimizer of
    /// the same algorithm ([`BurnRecord`] lists them; AdamW for an [`AdamConfig`] with
    /// `decoupled_weight_decay`). Burn adds the `.bpk` extension to `path` when it has none,
    /// as its own `save` does.
    ///
    /// Each parameter's state is named as Burn names it (for Adam `{param id}.momentum.moment_1`,
    /// `.moment_2`, `.max_moment_2` with `amsgrad`, and the step count `.momentum.time`), with
    /// its rank and module path. Burn keeps a step count per parameter where this optimizer
    /// keeps one for all: every parameter gets the shared count. Burn rounds its updates a
    /// little differently (Adam's bias corrections in f32, for one), so from the same state
    /// the two runs drift apart by a few ULP per step.
    ///
    /// Errors: before the first step (nothing is laid out); with more than one parameter group
    /// (Burn's record has one set of hyperparameters, from the Burn optimizer that loads it);
    /// with 8-bit or bf16 state (Burn's is f32).
    ///
    /// ```no_run
    /// # use burn::nn::{Linear, LinearConfig};
    /// # use burn::optim::AdamWConfig;
    /// use wgpu_optim::burn::BurnOptimizer;
    /// use wgpu_optim::AdamConfig;
    /// # let optim = BurnOptimizer::new(AdamConfig::adamw());
    /// // ... steps ...
    /// optim.save_burn_record("optim")?; // writes optim.bpk
    /// let burn_optim = AdamWConfig::new().init().load("optim.bpk").expect("Burn reads it");
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn save_burn_record(&self, path: impl AsRef<Path>) -> Result<()> {
        use burn_pack::{Bytes, Scalar, Shape, Tensor as PackTensor, Writer};
        let a = self.arena.as_ref().ok_or_else(|| {
            Error::Empty("nothing to save before the first step lays out the state".into())
        })?;
        if self.groups.len() > 1 {
            return Err(Error::InvalidOptions(
                "a Burn optimizer record has one set of hyperparameters; this optimizer has \
                 several parameter groups"
                    .into(),
            ));
        }
        let format = a.opt.state_format();
        if format != StateFormat::Dense || a.opt.precision().state != StateDType::F32 {
            return Err(Error::InvalidOptions(format!(
                "a Burn optimizer record holds f32 state; this optimizer keeps {format:?} state \
                 in {:?}",
                a.opt.precision().state
            )));
        }
        let config = a.opt.config();
        let per_slot: Vec<_> = a
            .slots
            .iter()
            .map(|(_, _, shape)| config.burn_state(shape))
            .collect();
        let steps = a.opt.step_count();
        // Each state of every tensor in one read-back, in the layout's order.
        let index = &a.opt.layout().index;
        let mut all = HashMap::new();
        for &(_, key, _) in per_slot.iter().flatten() {
            if !all.contains_key(key) {
                all.insert(key, a.opt.state_of_all(key)?);
            }
        }
        let mut tensors = Vec::new();
        let mut scalars = Vec::new();
        let mut paths = Vec::new();
        for (slot, ((id, path, shape), leaves)) in a.slots.iter().zip(per_slot).enumerate() {
            let prefix = id.val().to_string();
            let name = &a.names[slot];
            let mut state = HashMap::new();
            let mut named = Vec::new();
            let t = index[name.as_str()];
            for (leaf, key, leaf_shape) in leaves {
                let values = std::mem::take(&mut all.get_mut(key).expect("read")[t]);
                named.push((leaf, leaf_shape, values.clone()));
                state.insert(key, values);
            }
            let derived = config.burn_derived(&state).into_iter();
            named.extend(derived.map(|(leaf, values)| (leaf, shape.clone(), values)));
            for (leaf, leaf_shape, values) in named {
                tensors.push(PackTensor::new(
                    format!("{prefix}.{leaf}"),
                    burn_pack::DType::F32,
                    Shape::from(leaf_shape),
                    Some(id.val()),
                    Bytes::from_elems(values),
                ));
            }
            if let Some(time) = C::BURN_TIME {
                scalars.push((format!("{prefix}.{time}"), Scalar::from(steps as usize)));
            }
            scalars.push((format!("{prefix}.__rank"), Scalar::from(shape.len())));
            paths.push((prefix, path.clone()));
        }
        let mut writer = Writer::new(tensors);
        for (k, v) in &scalars {
            writer = writer.with_scalar(k, *v);
        }
        for (k, v) in &paths {
            writer = writer.with_metadata(k, v);
        }
        let path = path.as_ref();
        writer.write_to_file(path).map_err(|e| Error::Io {
            op: "write",
            path: path.display().to_string(),
            kind: std::io::ErrorKind::Other,
            message: e.to_string(),
        })
    }

    /// Take over the state of Burn's optimizer of the same algorithm ([`BurnRecord`]) from its
    /// record (the burnpack file Burn's `ModuleOptimizer::save` writes, or
    /// [`BurnOptimizer::save_burn_record`]): lay out the state for `module`'s float
    /// parameters, fill it with each parameter's state tensors (for Adam
    /// `{param id}.momentum.moment_1`, `.moment_2`, and `.max_moment_2` with `amsgrad`) and
    /// set the step count, so a run started with Burn's optimizer goes on here. The
    /// hyperparameters are this optimizer's own (Burn's record has none). The `.bpk`
    /// extension is added to `path` when it has none and no such file exists, as Burn does.
    ///
    /// Burn's SGD, RMSprop and Lion keep no step count and none of ours reads it (SGD only
    /// tells its first step, which creates the momentum buffer): from their records the count
    /// is 1, since the state exists, or 0 for a configuration that keeps no state.
    ///
    /// Everything is checked before anything changes; on `Err` the optimizer is as it was:
    /// a file that is not a burnpack record, a parameter of `module` with no state in it or
    /// with state of another shape or element type, step counts that differ between
    /// parameters (this optimizer keeps one for all; Burn keeps one per parameter, which
    /// differ when a parameter missed gradients), or a record without a tensor the
    /// configuration keeps (`max_moment_2` for an `amsgrad` Adam, say).
    ///
    /// ```no_run
    /// # use burn::nn::{Linear, LinearConfig};
    /// use wgpu_optim::burn::{init, BurnOptimizer};
    /// use wgpu_optim::AdamConfig;
    /// let (device, _) = init(Default::default())?;
    /// let model: Linear = LinearConfig::new(4, 2).init(&device.autodiff());
    /// // Burn's AdamW saved its state with `optim.save("optim")` (optim.bpk).
    /// let mut optim = BurnOptimizer::new(AdamConfig::adamw());
    /// optim.load_burn_record("optim.bpk", &model)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn load_burn_record<M: Module>(
        &mut self,
        path: impl AsRef<Path>,
        module: &M,
    ) -> Result<()> {
        let path = path.as_ref();
        let bad = |why: String| Error::BurnRecord(format!("{}: {why}", path.display()));
        let reader = burn_pack::Reader::from_file(path).map_err(|e| bad(e.to_string()))?;
        let scalars = reader.scalars().clone();
        let mut tensors = HashMap::new();
        for t in reader.into_tensors().map_err(|e| bad(e.to_string()))? {
            let (name, dtype, shape, _, bytes) = t.into_parts().map_err(|e| bad(e.to_string()))?;
            tensors.insert(name, (dtype, shape.to_vec(), bytes));
        }
        let found = collect(module, None, None)?;
        // Every value checked and decoded before any GPU work.
        let mut values = Vec::with_capacity(found.len());
        let mut steps: Option<(u64, String)> = None;
        for f in &found {
            let prefix = f.id.val().to_string();
            if let Some(time) = C::BURN_TIME {
                let time_key = format!("{prefix}.{time}");
                let time = scalars
                    .get(&time_key)
                    .and_then(|s| u64::try_from(*s).ok())
                    .ok_or_else(|| bad(format!("no step count for `{}` ({time_key})", f.path)))?;
                match &steps {
                    Some((t, other)) if *t != time => {
                        return Err(bad(format!(
                            "`{}` has taken {time} steps and `{other}` {t}; this optimizer keeps \
                             one step count for all parameters",
                            f.path
                        )))
                    }
                    Some(_) => {}
                    None => steps = Some((time, f.path.clone())),
                }
            }
            let leaves = leaves(self.groups.iter().map(|g| &g.config), &f.shape);
            let mut per_key = Vec::with_capacity(leaves.len());
            for (leaf, key, want) in leaves {
                let name = format!("{prefix}.{leaf}");
                let (dtype, shape, bytes) = tensors
                    .get(&name)
                    .ok_or_else(|| bad(format!("no `{leaf}` for `{}` ({name})", f.path)))?;
                if *dtype != burn_pack::DType::F32 {
                    return Err(bad(format!("`{name}` is {dtype:?}, not f32")));
                }
                if *shape != want {
                    return Err(bad(format!(
                        "`{name}` has shape {shape:?}, not {want:?} (the parameter `{}` is {:?})",
                        f.path, f.shape
                    )));
                }
                let data: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                per_key.push((key, data));
            }
            values.push(per_key);
        }
        let steps = match (C::BURN_TIME, steps) {
            (Some(_), steps) => steps.map_or(0, |s| s.0),
            (None, _) => u64::from(values.iter().any(|per_key| !per_key.is_empty())),
        };
        if steps > crate::optim::MAX_STEP_COUNT {
            return Err(bad(format!(
                "a step count of {steps} is more than 2^53, the most an optimizer counts"
            )));
        }

        let (dev, gpu) = module_device(module, &found)?;
        let mut arena = self.new_arena(&found, dev, gpu)?;
        for (name, per_key) in arena.names.iter().zip(&values) {
            for (key, data) in per_key {
                arena.opt.set_state(key, name, data)?;
            }
        }
        arena.opt.set_step_count(steps)?;
        self.arena = Some(arena);
        Ok(())
    }
}
