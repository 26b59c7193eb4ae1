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
    /// Converting state or copying parameters reads them back first, in one wait per state (or
    /// for the parameters) and 64 MiB, however many tensors there are;
    /// [`FusedOptimizer::set_precision_async`] does not block.
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
        if !self.check_precision(precision)? {
            return Ok(());
        }
        let reads = self.precision_reads(precision);
        let kept = if reads != (false, false) {
            crate::gpu::block_on(
                "set_precision converting state or copying parameters",
                "set_precision_async",
                self.read_for_precision(reads),
            )?
        } else {
            Kept::default()
        };
        let gpu = self.gpu.clone();
        gpu.scoped(|| self.apply_precision(precision, kept))
    }

    /// Async form of [`FusedOptimizer::set_precision`], on every target: the state and the
    /// parameters it converts or copies are read back without blocking (in a browser, the
    /// blocking form is an [`Error::WouldBlock`] when it would read back).
    pub async fn set_precision_async(&mut self, precision: Precision) -> Result<()> {
        if !self.check_precision(precision)? {
            return Ok(());
        }
        let kept = self
            .read_for_precision(self.precision_reads(precision))
            .await?;
        let gpu = self.gpu.clone();
        gpu.scoped_async(|| self.apply_precision(precision, kept))
            .await
    }

    /// Whether `precision` changes anything, after checking that it can be used.
    fn check_precision(&self, precision: Precision) -> Result<bool> {
        if precision == self.precision {
            return Ok(false);
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
        let blockwise = self.blockwise_active().is_some();
        let with = match (precision.master_weights, blockwise) {
            (true, true) => " with master weights and 8-bit state",
            (true, false) => " with master weights",
            (false, true) => " with 8-bit state",
            (false, false) => "",
        };
        super::check_bindings::<C>(&self.gpu, with, precision.master_weights, blockwise)?;
        Ok(true)
    }

    /// What a change to `precision` reads back first: the state, to convert it after steps,
    /// and the 16-bit parameters, for a new master copy.
    fn precision_reads(&self, precision: Precision) -> (bool, bool) {
        (
            precision.state != self.precision.state && self.submitted > 0,
            precision.master_weights && !self.precision.master_weights,
        )
    }

    /// Read back what [`FusedOptimizer::precision_reads`] says.
    async fn read_for_precision(&self, (state, params): (bool, bool)) -> Result<Kept> {
        Ok(Kept {
            state: match state {
                true => Some(self.read_all_state_async().await?),
                false => None,
            },
            half_params: match params {
                true => Some(self.read_half_params_async().await?),
                false => None,
            },
        })
    }

    /// Switch to `precision`, writing back what was `kept`.
    fn apply_precision(&mut self, precision: Precision, kept: Kept) -> Result<()> {
        if precision.state != self.precision.state {
            self.precision.state = precision.state;
            self.fill_states()?;
            if let Some(values) = kept.state {
                for (k, per_tensor) in values.into_iter().enumerate() {
                    for (slot, v) in self.layout.slots.iter().zip(per_tensor) {
                        arena::write_slot(&self.gpu, &self.states[k].1, slot, precision.state, &v);
                    }
                }
            }
        }
        if let Some(values) = kept.half_params {
            self.master = self.new_master(values);
        } else if !precision.master_weights {
            self.master.clear();
        }
        self.precision = precision;
        self.bind();
        Ok(())
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
    /// yourself while master weights are on). Waits for the GPU once per 64 MiB of parameters
    /// ([`FusedOptimizer::sync_master_weights_async`] does not).
    pub fn sync_master_weights(&mut self, params: &Params) -> Result<()> {
        self.check_master_sync(params)?;
        let values = crate::gpu::block_on(
            "sync_master_weights",
            "sync_master_weights_async",
            self.read_half_params_async(),
        )?;
        let gpu = self.gpu.clone();
        gpu.scoped(|| self.apply_master(values))
    }

    /// Async form of [`FusedOptimizer::sync_master_weights`], on every target.
    pub async fn sync_master_weights_async(&mut self, params: &Params) -> Result<()> {
        self.check_master_sync(params)?;
        let values = self.read_half_params_async().await?;
        let gpu = self.gpu.clone();
        gpu.scoped_async(|| self.apply_master(values)).await
    }

    fn check_master_sync(&self, params: &Params) -> Result<()> {
        self.check_params(params)?;
        if !self.precision.master_weights {
            return Err(Error::InvalidOptions(
                "master weights are off (see set_precision)".into(),
            ));
        }
        Ok(())
    }

    fn apply_master(&mut self, half_params: Vec<Vec<f32>>) -> Result<()> {
        self.master = self.new_master(half_params);
        self.bind();
        Ok(())
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

    /// Every state tensor's values, per state in order, per tensor in layout order.
    pub(super) async fn read_all_state_async(&self) -> Result<Vec<Vec<Vec<f32>>>> {
        let mut out = Vec::with_capacity(self.states.len());
        for k in 0..self.states.len() {
            out.push(self.read_key_values(k).await?);
        }
        Ok(out)
    }

    /// The values of the 16-bit parameters, in layout order.
    async fn read_half_params_async(&self) -> Result<Vec<Vec<f32>>> {
        let slots: Vec<_> = self
            .layout
            .slots
            .iter()
            .filter(|s| s.dtype.is_half())
            .map(|s| (s, s.dtype))
            .collect();
        arena::read_slots_async(&self.gpu, &self.param_bufs, &slots).await
    }

    /// Master copies of the 16-bit parameters whose values are `half_params` (layout order):
    /// an f32 buffer per 16-bit chunk, a placeholder per f32 chunk.
    fn new_master(&self, half_params: Vec<Vec<f32>>) -> Vec<wgpu::Buffer> {
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
        let half = l.slots.iter().filter(|s| s.dtype.is_half());
        for (slot, v) in half.zip(half_params) {
            arena::write_slot(&self.gpu, &bufs, slot, DType::F32, &v);
        }
        bufs
    }
}

/// What a change of precision read back before it: the state (per state, per tensor) and the
/// 16-bit parameters.
#[derive(Default)]
struct Kept {
    state: Option<Vec<Vec<Vec<f32>>>>,
    half_params: Option<Vec<Vec<f32>>>,
}
