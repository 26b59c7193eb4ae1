//! The reference side of low-precision storage and 8-bit state: a step as the kernels store
//! its results ([`stored_step`]) and the blockwise requantization after it ([`requantize`]).

use super::*;

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
/// Errors: [`crate::Error::InvalidOptions`] when a state of `cfg` has no 8-bit form
/// ([`OptimizerConfig::quant_map`] is `None`, e.g. Adadelta), as
/// [`crate::FusedOptimizer::set_state_format`] refuses it; `state` is then left as it was.
///
/// ```
/// use ndarray::Array1;
/// use wgpu_optim::{reference, AdamConfig};
/// let cfg = AdamConfig::adamw();
/// let mut p = Array1::from_elem(300, 1.0f32);
/// let mut state = reference::State::new(&cfg, 300);
/// reference::adam(&cfg, &mut p, &Array1::from_elem(300, 0.5), &mut state);
/// let q = reference::requantize(&cfg, &mut state)?;
/// assert_eq!(q[0].0, "exp_avg");
/// assert_eq!(q[0].1.absmax, vec![0.05, 0.05]); // every element at the block's absmax
/// assert!(state.get("exp_avg").unwrap().iter().all(|&m| m == 0.05));
/// # Ok::<(), wgpu_optim::Error>(())
/// ```
pub fn requantize<C: OptimizerConfig>(
    cfg: &C,
    state: &mut State,
) -> crate::Result<Vec<(&'static str, crate::QuantizedState, Vec<f32>)>> {
    // Every state's map first, so that a refusal leaves all of them as they were.
    let maps = state
        .buffers
        .iter()
        .map(|(key, _)| {
            cfg.quant_map(key).map(|m| m.values()).ok_or_else(|| {
                crate::Error::InvalidOptions(format!(
                    "{} has no 8-bit form of its state `{key}`; 8-bit state is supported by \
                     Adam/AdamW, SGD, RMSprop, Adagrad and Lion",
                    C::NAME
                ))
            })
        })
        .collect::<crate::Result<Vec<_>>>()?;
    let mut out = Vec::new();
    for ((key, values), map) in state.buffers.iter_mut().zip(maps) {
        let before = values.to_vec();
        let (codes, absmax) = crate::blockwise::quantize(&map, &before);
        let q = crate::QuantizedState { codes, absmax, map };
        *values = Array1::from(q.values()?);
        out.push((*key, q, before));
    }
    Ok(out)
}
