//! Parameter groups: which tensors get which hyperparameters.

use crate::arena::Layout;
use crate::error::{Error, Result};
use std::fmt;
use std::sync::Arc;

type Predicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Clone)]
enum Select {
    Names(Vec<String>),
    Matching(Predicate),
    Rest,
}

/// A set of tensors that share hyperparameters, as in PyTorch's `param_groups`.
///
/// Groups are resolved in order. A tensor claimed by two groups, a name that is not in the
/// parameter set, or (when no [`ParamGroup::rest`] group is given) a tensor in no group is an
/// [`Error::InvalidGroups`]/[`Error::UnknownTensor`]. All groups must agree on the boolean
/// options (amsgrad, nesterov, centered, maximize, ...): those select the compiled kernel, while
/// every number (lr, weight decay, betas, momentum, eps, ...) is per group.
///
/// ```no_run
/// use wgpu_optim::{Adam, AdamConfig, Gpu, FusedOptimizer, ParamGroup, Params};
/// let gpu = Gpu::new()?;
/// let params = Params::zeros(&gpu, &[("fc.weight", 64), ("fc.bias", 8), ("norm.weight", 8)])?;
/// let decay = AdamConfig { weight_decay: 0.1, ..AdamConfig::adamw() };
/// let no_decay = AdamConfig { weight_decay: 0.0, ..decay.clone() };
/// let opt: Adam = FusedOptimizer::with_groups(&params, vec![
///     ParamGroup::matching(|n| n.ends_with(".bias") || n.contains("norm"), no_decay),
///     ParamGroup::rest(decay),
/// ])?;
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
#[derive(Clone)]
pub struct ParamGroup<C> {
    /// The group's hyperparameters.
    pub config: C,
    select: Select,
}

impl<C: fmt::Debug> fmt::Debug for ParamGroup<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let select = match &self.select {
            Select::Names(n) => format!("{n:?}"),
            Select::Matching(_) => "<predicate>".into(),
            Select::Rest => "<rest>".into(),
        };
        f.debug_struct("ParamGroup")
            .field("tensors", &select)
            .field("config", &self.config)
            .finish()
    }
}

impl<C> ParamGroup<C> {
    /// The named tensors.
    pub fn new<S: Into<String>>(tensors: impl IntoIterator<Item = S>, config: C) -> Self {
        ParamGroup {
            config,
            select: Select::Names(tensors.into_iter().map(Into::into).collect()),
        }
    }

    /// Every tensor whose name satisfies `predicate`.
    pub fn matching(predicate: impl Fn(&str) -> bool + Send + Sync + 'static, config: C) -> Self {
        ParamGroup {
            config,
            select: Select::Matching(Arc::new(predicate)),
        }
    }

    /// Every tensor no other group claims (at most one such group).
    pub fn rest(config: C) -> Self {
        ParamGroup {
            config,
            select: Select::Rest,
        }
    }
}

/// The group index of every tensor of `layout`, in layout order.
pub(crate) fn resolve<C>(layout: &Layout, groups: &[ParamGroup<C>]) -> Result<Vec<u32>> {
    if groups.is_empty() {
        return Err(Error::InvalidGroups("no groups given".into()));
    }
    if groups
        .iter()
        .filter(|g| matches!(g.select, Select::Rest))
        .count()
        > 1
    {
        return Err(Error::InvalidGroups("more than one `rest` group".into()));
    }
    let mut owner: Vec<Option<u32>> = vec![None; layout.slots.len()];
    let mut claim = |t: usize, g: usize| -> Result<()> {
        match owner[t] {
            Some(prev) => Err(Error::InvalidGroups(format!(
                "tensor `{}` is in group {prev} and group {g}",
                layout.slots[t].name
            ))),
            None => {
                owner[t] = Some(g as u32);
                Ok(())
            }
        }
    };
    for (g, group) in groups.iter().enumerate() {
        match &group.select {
            Select::Names(names) => {
                for n in names {
                    let t = *layout
                        .index
                        .get(n)
                        .ok_or_else(|| Error::UnknownTensor(n.clone()))?;
                    claim(t, g)?;
                }
            }
            Select::Matching(p) => {
                for (t, slot) in layout.slots.iter().enumerate() {
                    if p(&slot.name) {
                        claim(t, g)?;
                    }
                }
            }
            Select::Rest => {}
        }
    }
    if let Some(rest) = groups.iter().position(|g| matches!(g.select, Select::Rest)) {
        for o in owner.iter_mut().filter(|o| o.is_none()) {
            *o = Some(rest as u32);
        }
    }
    owner
        .iter()
        .enumerate()
        .map(|(t, o)| {
            o.ok_or_else(|| {
                Error::InvalidGroups(format!("tensor `{}` is in no group", layout.slots[t].name))
            })
        })
        .collect()
}

/// Per chunk, the group of each 64-element granule (the unit of tensor alignment).
pub(crate) fn granule_table(layout: &Layout, owner: &[u32]) -> Vec<Vec<u32>> {
    let mut tables: Vec<Vec<u32>> = layout
        .chunk_lens
        .iter()
        .map(|&n| vec![0; n.div_ceil(64)])
        .collect();
    for (t, slot) in layout.slots.iter().enumerate() {
        for p in &slot.pieces {
            let (a, b) = (p.offset / 64, (p.offset + p.len).div_ceil(64));
            tables[p.chunk][a..b].fill(owner[t]);
        }
    }
    tables
}
