//! Storage precision of the optimizer state: the state dtype, f32 master weights and the
//! stochastic-rounding stream ([`Precision`]).

use super::{FusedOptimizer, MASTER};
use crate::arena;
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::optim::OptimizerConfig;
use crate::params::Params;

impl<C: OptimizerConfig> FusedOptimizer<C> {
    /// Choose the optimizer state's dtype, master weights and rounding ([`Precision`]); the
    /// default is f32 state, no master weights, round to nearest even. Takes effect from the
    /// next step, for every dtype of the parameters (one kernel per dtype combination).
    ///
    /// - A change of state dtype after steps were taken converts the state (rounded to nearest
    ///   even into a 16-bit dtype); before the first step the state is simply rebuilt.
    /// - Turning master weights on copies the current parameters into the f32 master copy
    ///   (exact). From then on the master copy is what the optimizer updates: to change a 16-bit
    ///   parameter, write it with [`FusedOptimizer::set_state`]`("master", ..)` (or
    ///   [`FusedOptimizer::sync_master_weights`] after writing the parameter).
    ///
    /// Converting state or copying parameters waits for the GPU once.
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, DType, Gpu, Optimizer, Params, Precision};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::builder(&gpu).tensor("w", &[64, 32], DType::Bf16).build()?;
    /// let mut opt = Adam::new(&params, AdamConfig::adamw())?;
    /// opt.set_precision(Precision { state: DType::Bf16, master_weights: false, stochastic_rounding: true })?;
    /// opt.step(&mut params)?;
    /// assert_eq!(opt.state_memory_bytes(), 2 * 64 * 32 * 2);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == self.precision {
            return Ok(());
        }
        if precision.master_weights && !self.layout.chunk_dtypes.iter().any(|d| d.is_half()) {
            return Err(Error::InvalidOptions(
                "master weights need 16-bit (bf16 or f16) parameters; every parameter is f32"
                    .into(),
            ));
        }
        if self.blockwise.is_some() && precision.state != DType::F32 {
            return Err(Error::InvalidOptions(
                "8-bit state (StateFormat::Blockwise8) keeps f32 state for small tensors: the \
                 state dtype must stay f32"
                    .into(),
            ));
        }
        let limit = self.gpu.limits().max_storage_buffers_per_shader_stage as usize;
        let need = 5
            + C::SLOTS.len()
            + precision.master_weights as usize
            + self.blockwise.is_some() as usize;
        if need > limit {
            return Err(Error::DeviceLimit(format!(
                "{} with master weights needs {need} storage buffers per shader stage, the \
                 device allows {limit}",
                C::NAME
            )));
        }
        let gpu = self.gpu.clone();
        gpu.scoped(|| {
            let old = self.precision;
            if precision.state != old.state {
                let kept = if self.submitted > 0 {
                    Some(self.read_all_state()?)
                } else {
                    None
                };
                self.precision.state = precision.state;
                self.fill_states()?;
                if let Some(values) = kept {
                    for (k, per_tensor) in values.into_iter().enumerate() {
                        for (slot, v) in self.layout.slots.iter().zip(per_tensor) {
                            arena::write_slot(
                                &self.gpu,
                                &self.states[k].1,
                                slot,
                                precision.state,
                                &v,
                            );
                        }
                    }
                }
            }
            if precision.master_weights && !old.master_weights {
                self.master = self.new_master()?;
            } else if !precision.master_weights {
                self.master.clear();
            }
            self.precision = precision;
            self.bind();
            Ok(())
        })
    }

    /// The state dtype, master weights and rounding in use ([`FusedOptimizer::set_precision`]).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Seed the stochastic-rounding stream (0 by default). Each step's random bits come from a
    /// hash of (seed, step counter, element), so the same seed gives the same run.
    pub fn set_rounding_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// The stochastic-rounding seed ([`FusedOptimizer::set_rounding_seed`]).
    pub fn rounding_seed(&self) -> u64 {
        self.seed
    }

    /// The counter the next step's rounding noise is drawn with: steps submitted, skipped ones
    /// included (a checkpoint keeps it, so a resumed run draws the same noise).
    pub(crate) fn rounding_counter(&self) -> u64 {
        self.submitted.wrapping_add(self.rng_offset)
    }

    /// Continue the rounding stream at `counter` (after [`FusedOptimizer::set_step_count`]).
    pub(crate) fn set_rounding_counter(&mut self, counter: u64) {
        self.rng_offset = counter.wrapping_sub(self.submitted);
    }

    /// The per-chunk f32 master copies (empty without master weights).
    pub(crate) fn master_chunks(&self) -> &[wgpu::Buffer] {
        &self.master
    }

    /// Copy the current 16-bit parameters into the master copy (after you wrote parameters
    /// yourself while master weights are on). Waits for the GPU once.
    pub fn sync_master_weights(&mut self, params: &Params) -> Result<()> {
        self.check_params(params)?;
        if !self.precision.master_weights {
            return Err(Error::InvalidOptions(
                "master weights are off (see set_precision)".into(),
            ));
        }
        let gpu = self.gpu.clone();
        gpu.scoped(|| {
            let master = self.new_master()?;
            self.master = master;
            self.bind();
            Ok(())
        })
    }

    /// Bytes of GPU memory the optimizer's state takes (every state buffer, padding included,
    /// and the master copy; with 8-bit state, codes, absmax and the f32 state of small tensors,
    /// not the block tables; with a factored second moment, [`crate::Adafactor`], its f32
    /// `row_var` and `col_var` per matrix and `variance` per vector, not the row means and
    /// partial sums it recomputes each step).
    ///
    /// ```no_run
    /// use wgpu_optim::{Adam, AdamConfig, Gpu, Params, StateFormat};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 1 << 20)])?;
    /// let mut opt = Adam::new(&params, AdamConfig::adamw())?;
    /// assert_eq!(opt.state_memory_bytes(), 8 << 20);
    /// opt.set_state_format(StateFormat::blockwise8())?;
    /// assert_eq!(opt.state_memory_bytes(), 2 * ((1 << 20) + 4 * (1 << 12))); // 2.03 B/element
    ///
    /// // Adafactor on a 1024 x 1024 matrix: 1024 + 1024 f32 values, 0.008 B/element.
    /// use wgpu_optim::{Adafactor, AdafactorConfig, DType};
    /// let params = Params::builder(&gpu).tensor("w", &[1024, 1024], DType::F32).build()?;
    /// let opt = Adafactor::new(&params, AdafactorConfig::default())?;
    /// assert_eq!(opt.state_memory_bytes(), 4 * 2048);
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn state_memory_bytes(&self) -> u64 {
        let l = &self.layout;
        let per_state: u64 = (0..l.chunk_lens.len())
            .map(|c| match &self.blockwise {
                Some(q) => q.buffer_bytes(c),
                None => l.chunk_bytes(c, self.precision.state),
            })
            .sum();
        let master: u64 = self
            .master
            .iter()
            .zip(&l.chunk_dtypes)
            .filter(|(_, d)| d.is_half())
            .map(|(b, _)| b.size())
            .sum();
        per_state * self.states.len() as u64 + master + self.factored_bytes()
    }

    /// Every state tensor's values, per state in order, per tensor in layout order (waits).
    pub(super) fn read_all_state(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        (0..self.states.len())
            .map(|k| {
                (0..self.layout.slots.len())
                    .map(|t| {
                        crate::gpu::block_on(
                            "converting the state after steps (set_precision, set_state_format)",
                            "the conversion before the first step",
                            self.read_state_values(k, t),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    /// Master copies of the current 16-bit parameters: an f32 buffer per 16-bit chunk, a
    /// placeholder per f32 chunk (waits for the parameters).
    fn new_master(&self) -> Result<Vec<wgpu::Buffer>> {
        let l = &self.layout;
        let bufs: Vec<wgpu::Buffer> = (0..l.chunk_lens.len())
            .map(|c| {
                if l.chunk_dtypes[c].is_half() {
                    arena::arena_buffer(&self.gpu, MASTER, l.chunk_bytes(c, DType::F32))
                } else {
                    self.dummy.clone()
                }
            })
            .collect();
        for slot in l.slots.iter().filter(|s| s.dtype.is_half()) {
            let v = arena::read_slot(&self.gpu, &self.param_bufs, slot, slot.dtype)?;
            arena::write_slot(&self.gpu, &bufs, slot, DType::F32, &v);
        }
        Ok(bufs)
    }
}
