//! The optimizer's 8-bit blockwise state ([`StateFormat::Blockwise8`]): switching to and from
//! it (converting the state after steps), the code maps, the quantized state of one tensor for
//! checkpoints, and reading or writing any state by key in the current format. The block table
//! itself is `blockwise.rs`.

use super::blockwise::{Blockwise, BlockwiseView};
use super::FusedOptimizer;
use crate::arena::Slot;
use crate::blockwise::{self, QuantizedState, StateFormat};
use crate::error::{Error, Result};
use crate::optim::OptimizerConfig;

/// 8-bit blockwise state ([`StateFormat`]).
impl<C: OptimizerConfig> FusedOptimizer<C> {
    /// Store the optimizer state as bitsandbytes' 8-bit blockwise state
    /// ([`StateFormat::Blockwise8`]): one u8 code per element in blocks of 256 with an f32
    /// absmax per block, about 2 bytes per element for Adam instead of 8, and fewer bytes moved
    /// per step. Tensors with fewer than `min_size` elements keep f32 state. The step itself
    /// is unchanged: the same f32 update (every option, param groups, clipping, skipping, the
    /// grad scaler), run on the dequantized block, which is then requantized in the same
    /// kernel. Supported by Adam/AdamW, SGD, RMSprop, Adagrad and Lion (the other optimizers
    /// give [`Error::InvalidOptions`]), with f32 state dtype ([`crate::Precision::state`]) and
    /// any parameter dtype.
    ///
    /// Called before the first step, the state is built fresh; called later, the current
    /// state is converted (quantized, or dequantized back with [`StateFormat::Dense`]) on the
    /// host: it is read back in one wait per state and 64 MiB, however many tensors there are
    /// ([`FusedOptimizer::set_state_format_async`] does not block, and is the form to use in a
    /// browser).
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params, StateFormat};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::zeros(&gpu, &[("fc1.weight", 1 << 16), ("fc1.bias", 256)])?;
    /// let mut opt = Adam::new(&params, AdamConfig::adamw())?;
    /// opt.set_state_format(StateFormat::Blockwise8 { min_size: 4096 })?;
    /// opt.step(&mut params)?;
    /// let m: Vec<f32> = opt.state("exp_avg", "fc1.weight")?; // dequantized values
    /// assert_eq!(m.len(), 1 << 16);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn set_state_format(&mut self, format: StateFormat) -> Result<()> {
        if format == self.state_format() {
            return Ok(());
        }
        let planned = self.planned(format)?;
        let kept = if self.submitted > 0 {
            Some(crate::gpu::block_on(
                "set_state_format after steps",
                "set_state_format_async",
                self.read_all_state_async(),
            )?)
        } else {
            None
        };
        let gpu = self.gpu.clone();
        gpu.scoped(|| self.apply_state_format(planned, kept))
    }

    /// Async form of [`FusedOptimizer::set_state_format`], on every target: after steps, the
    /// current state is read back without blocking (in a browser, the blocking form is an
    /// [`Error::WouldBlock`] then).
    ///
    /// ```no_run
    /// # async fn f(opt: &mut wgpu_optim::Adam) -> wgpu_optim::Result<()> {
    /// opt.set_state_format_async(wgpu_optim::StateFormat::blockwise8()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_state_format_async(&mut self, format: StateFormat) -> Result<()> {
        if format == self.state_format() {
            return Ok(());
        }
        let planned = self.planned(format)?;
        let kept = if self.submitted > 0 {
            Some(self.read_all_state_async().await?)
        } else {
            None
        };
        let gpu = self.gpu.clone();
        gpu.scoped_async(|| self.apply_state_format(planned, kept))
            .await
    }

    /// The blocks `format` lays the state out in (`None` for dense state), planned on the
    /// host and checked against the device's limits.
    fn planned(&self, format: StateFormat) -> Result<Option<Blockwise>> {
        let StateFormat::Blockwise8 { min_size } = format else {
            return Ok(None);
        };
        let maps = self.check_blockwise(min_size)?;
        let q = Blockwise::plan(&self.layout, min_size, maps);
        let limit = self.gpu.max_binding_bytes();
        for c in 0..self.layout.chunk_lens.len() {
            let bytes = q.buffer_bytes(c).max(q.table_bytes(c));
            if bytes > limit {
                return Err(Error::DeviceLimit(format!(
                    "8-bit state with min_size {min_size} needs {bytes} bytes in one binding                      for chunk {c} (each tensor below min_size keeps f32 state in whole blocks                      of 256), the device binds at most {limit}; use a larger min_size or                      smaller chunks (Params::with_max_chunk_bytes)"
                )));
            }
        }
        Ok(Some(q))
    }

    /// Lay out the state in `format` and write back the values `kept` (per state, per
    /// tensor) from before the change.
    fn apply_state_format(
        &mut self,
        planned: Option<Blockwise>,
        kept: Option<Vec<Vec<Vec<f32>>>>,
    ) -> Result<()> {
        self.blockwise = planned.map(|mut q| {
            q.upload_tables(&self.gpu);
            q
        });
        self.fill_states()?;
        if let Some(values) = kept {
            for (k, per_tensor) in values.into_iter().enumerate() {
                for (t, v) in per_tensor.into_iter().enumerate() {
                    self.write_state_values(k, t, &v);
                }
            }
        }
        self.bind();
        Ok(())
    }

    /// The maps of every slot, after checking that this optimizer and precision can keep
    /// 8-bit state with `min_size`.
    fn check_blockwise(&self, min_size: usize) -> Result<Vec<[f32; 256]>> {
        if min_size == 0 {
            return Err(Error::InvalidOptions(
                "min_size must be at least 1 (bitsandbytes' default is 4096)".into(),
            ));
        }
        if self.precision.state != crate::DType::F32 {
            return Err(Error::InvalidOptions(format!(
                "8-bit state replaces the state dtype: set Precision::state back to f32 (it is \
                 {:?})",
                self.precision.state
            )));
        }
        let first = &self.groups[0];
        let mut maps = Vec::with_capacity(C::SLOTS.len());
        for slot in C::SLOTS {
            match first.quant_map(slot) {
                Some(m) => maps.push(m.values()),
                None if !first.uses_state(slot) => maps.push([0.0; 256]),
                None => {
                    return Err(Error::InvalidOptions(format!(
                        "{} has no 8-bit form of its state `{slot}`; 8-bit state is supported \
                         by Adam/AdamW, SGD, RMSprop, Adagrad and Lion",
                        C::NAME
                    )))
                }
            }
        }
        if C::TENSOR_SUMS > 0 || C::SLOTS.len() > 4 {
            return Err(Error::InvalidOptions(format!(
                "{} has no 8-bit state",
                C::NAME
            )));
        }
        let master = self.precision.master_weights;
        super::check_bindings::<C>(&self.gpu, " with 8-bit state", master, true)?;
        Ok(maps)
    }

    /// The state format in use ([`FusedOptimizer::set_state_format`]).
    pub fn state_format(&self) -> StateFormat {
        match &self.blockwise {
            Some(q) => StateFormat::Blockwise8 {
                min_size: q.min_size,
            },
            None => StateFormat::Dense,
        }
    }

    /// The 8-bit state of one tensor as stored: codes (one per element), absmax (one per block
    /// of 256) and the map. `None` when the tensor keeps f32 state (dense format, or fewer
    /// elements than `min_size`).
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params, StateFormat};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::zeros(&gpu, &[("w", 5000)])?;
    /// let mut opt = Adam::new(&params, AdamConfig::adamw())?;
    /// opt.set_state_format(StateFormat::blockwise8())?;
    /// opt.step(&mut params)?;
    /// let q = opt.quantized_state("exp_avg_sq", "w")?.expect("8-bit");
    /// assert_eq!((q.codes.len(), q.absmax.len()), (5000, 20));
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn quantized_state(&self, key: &str, tensor: &str) -> Result<Option<QuantizedState>> {
        crate::gpu::block_on(
            "FusedOptimizer::quantized_state",
            "FusedOptimizer::quantized_state_async",
            self.quantized_state_async(key, tensor),
        )
    }

    /// Async form of [`FusedOptimizer::quantized_state`], on every target (in a browser, the
    /// only form).
    pub async fn quantized_state_async(
        &self,
        key: &str,
        tensor: &str,
    ) -> Result<Option<QuantizedState>> {
        let (k, t) = self.state_index(key, tensor)?;
        match &self.blockwise {
            Some(q) if q.quantized(t) => Ok(q
                .read(&self.gpu, t, &self.states[k].1, self.slot_of(k))
                .await?
                .1),
            _ => Ok(None),
        }
    }

    /// Overwrite one tensor's 8-bit state with codes, absmax and map as stored (e.g. from a
    /// checkpoint or bitsandbytes). The map must be the one this state uses
    /// ([`crate::OptimizerConfig::quant_map`]); lengths must fit the tensor. Checked before any
    /// GPU work.
    pub fn set_quantized_state(
        &mut self,
        key: &str,
        tensor: &str,
        state: &QuantizedState,
    ) -> Result<()> {
        let (k, t) = self.state_index(key, tensor)?;
        let q = match &self.blockwise {
            Some(q) if q.quantized(t) => q,
            _ => {
                return Err(Error::InvalidOptions(format!(
                    "state `{key}` of `{tensor}` is not 8-bit (see set_state_format and min_size)"
                )))
            }
        };
        let len = self.layout.slots[t].len;
        let blocks = blockwise::blocks(len);
        if state.codes.len() != len || state.absmax.len() != blocks {
            return Err(Error::LengthMismatch {
                name: format!("{tensor} ({key}: codes, absmax)"),
                expected: len + blocks,
                got: state.codes.len() + state.absmax.len(),
            });
        }
        let mine = &q.maps[self.slot_of(k)];
        if state
            .map
            .iter()
            .map(|v| v.to_bits())
            .ne(mine.iter().map(|v| v.to_bits()))
        {
            return Err(Error::InvalidOptions(format!(
                "the map given for state `{key}` of `{tensor}` is not the one this optimizer \
                 uses for it"
            )));
        }
        if let Some(i) = state
            .absmax
            .iter()
            .position(|a| !(a.is_finite() && *a >= 0.0))
        {
            return Err(Error::InvalidOptions(format!(
                "absmax {i} of state `{key}` of `{tensor}` is {} (must be finite and >= 0)",
                state.absmax[i]
            )));
        }
        let gpu = self.gpu.clone();
        gpu.scoped(|| {
            q.write_quantized(&gpu, t, &self.states[k].1, state);
            Ok(())
        })
    }

    /// Quantize state `key` with another of bitsandbytes' maps than the optimizer's default
    /// ([`OptimizerConfig::quant_map`]), under [`StateFormat::Blockwise8`]. bitsandbytes' own
    /// 1-state optimizers (RMSprop8bit, Adagrad8bit) quantize their non-negative state with the
    /// signed map, which has half the codes for it; the default here is the unsigned map, and
    /// `set_quant_map("square_avg", QuantMap::Signed)` reproduces bitsandbytes exactly. The
    /// current state is requantized with the new map (after steps it is read back first, in one
    /// wait per 64 MiB; [`FusedOptimizer::set_quant_map_async`] does not block).
    ///
    /// ```no_run
    /// use wgpu_optim::{Gpu, Params, QuantMap, RmsProp, RmsPropConfig, StateFormat};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 1 << 14)])?;
    /// let mut opt = RmsProp::new(&params, RmsPropConfig::default())?;
    /// opt.set_state_format(StateFormat::blockwise8())?;
    /// opt.set_quant_map("square_avg", QuantMap::Signed)?; // as bitsandbytes' RMSprop8bit
    /// assert_eq!(opt.quant_map("square_avg")?, Some(QuantMap::Signed));
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn set_quant_map(&mut self, key: &str, map: crate::QuantMap) -> Result<()> {
        let k = self.check_quant_map(key)?;
        let kept = if self.submitted > 0 {
            Some(crate::gpu::block_on(
                "set_quant_map after steps",
                "set_quant_map_async",
                self.read_key_values(k),
            )?)
        } else {
            None
        };
        let gpu = self.gpu.clone();
        gpu.scoped(|| self.apply_quant_map(k, map, kept))
    }

    /// Async form of [`FusedOptimizer::set_quant_map`], on every target: after steps, the
    /// current state is read back without blocking (in a browser, the blocking form is an
    /// [`Error::WouldBlock`] then).
    pub async fn set_quant_map_async(&mut self, key: &str, map: crate::QuantMap) -> Result<()> {
        let k = self.check_quant_map(key)?;
        let kept = if self.submitted > 0 {
            Some(self.read_key_values(k).await?)
        } else {
            None
        };
        let gpu = self.gpu.clone();
        gpu.scoped_async(|| self.apply_quant_map(k, map, kept))
            .await
    }

    /// The index of state `key`, which must be kept in 8 bits.
    fn check_quant_map(&self, key: &str) -> Result<usize> {
        let k = self.key_index(key)?;
        if self.blockwise.is_none() {
            return Err(Error::InvalidOptions(
                "quantization maps apply to 8-bit state: set_state_format(StateFormat::Blockwise8 \
                 { .. }) first"
                    .into(),
            ));
        }
        Ok(k)
    }

    /// Upload `map` for state `k` and requantize the values `kept` (per tensor) with it.
    fn apply_quant_map(
        &mut self,
        k: usize,
        map: crate::QuantMap,
        kept: Option<Vec<Vec<f32>>>,
    ) -> Result<()> {
        let slot = self.slot_of(k);
        let gpu = self.gpu.clone();
        let q = self.blockwise.as_mut().expect("checked");
        q.maps[slot] = map.values();
        q.upload_tables(&gpu);
        if let Some(values) = kept {
            for (t, v) in values.iter().enumerate() {
                self.write_state_values(k, t, v);
            }
        }
        self.bind();
        Ok(())
    }

    /// The map state `key` is quantized with (`None` with dense state).
    pub fn quant_map(&self, key: &str) -> Result<Option<crate::QuantMap>> {
        let k = self.key_index(key)?;
        let Some(q) = &self.blockwise else {
            return Ok(None);
        };
        let m = &q.maps[self.slot_of(k)];
        Ok([crate::QuantMap::Signed, crate::QuantMap::Unsigned]
            .into_iter()
            .find(|c| c.values() == *m))
    }

    /// Where state `key` of tensor `t` (layout order) lies, under 8-bit state.
    pub(crate) fn blockwise_view(&self, key: &str, t: usize) -> Result<Option<BlockwiseView<'_>>> {
        let k = self.key_index(key)?;
        let bufs = &self.states[k].1;
        Ok(self
            .blockwise
            .as_ref()
            .map(|q| q.view(t, bufs, self.slot_of(k))))
    }

    /// Index in `states` of `key` and in the layout of `tensor`.
    pub(super) fn state_index(&self, key: &str, tensor: &str) -> Result<(usize, usize)> {
        let k = self.key_index(key)?;
        let t = *self
            .layout
            .index
            .get(tensor)
            .ok_or_else(|| Error::UnknownTensor(tensor.to_string()))?;
        Ok((k, t))
    }

    /// Index in `states` of `key` ([`Error::UnknownState`] if the optimizer keeps no such
    /// state).
    fn key_index(&self, key: &str) -> Result<usize> {
        self.state_buffers(key)?;
        Ok(self
            .states
            .iter()
            .position(|(s, _)| *s == key)
            .expect("checked"))
    }

    /// The `SLOTS` index of `states[k]`.
    pub(super) fn slot_of(&self, k: usize) -> usize {
        let key = self.states[k].0;
        C::SLOTS.iter().position(|s| *s == key).expect("a slot")
    }

    /// Write state `states[k]` of tensor `t` from f32 values in the current format.
    pub(super) fn write_state_values(&self, k: usize, t: usize, v: &[f32]) {
        let bufs = &self.states[k].1;
        match &self.blockwise {
            Some(q) => q.write_values(&self.gpu, t, bufs, self.slot_of(k), v),
            None => crate::arena::write_slot(
                &self.gpu,
                bufs,
                &self.layout.slots[t],
                self.precision.state,
                v,
            ),
        }
    }

    /// State `states[k]` of every tensor as f32 values in the current format, in layout
    /// order, in as few read-backs as the bytes allow.
    pub(super) async fn read_key_values(&self, k: usize) -> Result<Vec<Vec<f32>>> {
        let bufs = &self.states[k].1;
        match &self.blockwise {
            Some(q) => q.read_all(&self.gpu, bufs, self.slot_of(k)).await,
            None => {
                let dtype = self.precision.state;
                let slots: Vec<_> = self.layout.slots.iter().map(|s| (s, dtype)).collect();
                crate::arena::read_slots_async(&self.gpu, bufs, &slots).await
            }
        }
    }

    /// State `key` of every tensor as f32 values, in layout order, in one wait per 64 MiB
    /// (blocks). A factored second moment's key reads in one wait, and is empty for the
    /// tensors that do not keep it (a vector's `row_var`).
    #[cfg(feature = "burn")]
    pub(crate) fn state_of_all(&self, key: &str) -> Result<Vec<Vec<f32>>> {
        if let Some(all) = self.factored_of_all(key)? {
            return Ok(all);
        }
        let k = self.key_index(key)?;
        crate::gpu::block_on(
            "reading every tensor's state",
            "its async form",
            self.read_key_values(k),
        )
    }

    /// Read state `states[k]` of tensor `t` as f32 values in the current format.
    pub(super) async fn read_state_values(&self, k: usize, t: usize) -> Result<Vec<f32>> {
        let bufs = &self.states[k].1;
        let slot: &Slot = &self.layout.slots[t];
        match &self.blockwise {
            Some(q) => Ok(q.read(&self.gpu, t, bufs, self.slot_of(k)).await?.0),
            None => {
                crate::arena::read_slot_async(&self.gpu, bufs, slot, self.precision.state).await
            }
        }
    }
}
