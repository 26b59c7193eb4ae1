//! Recording one step into a command encoder and submitting it.

use super::{FusedOptimizer, OptimizerConfig};
use crate::dtype;
use crate::error::Result;
use crate::kernel;
use crate::optim::window;
use crate::params::Params;
use crate::shader::StepRng;

/// Recording and submitting one step (inside [`Gpu::scoped`]).
impl<C: OptimizerConfig> FusedOptimizer<C> {
    pub(super) fn record_step(&mut self) -> Result<()> {
        let gpu = self.gpu.clone();
        let mut enc = gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(C::NAME),
            });
        let recorded = self.record_step_into(&mut enc)?;
        gpu.queue().submit([enc.finish()]);
        recorded.submitted();
        Ok(())
    }

    /// Check `params` and record one step into `enc`, for a caller that records its own copies
    /// before and after it and submits them together (one submit per step). Call
    /// [`RecordedStep::submitted`] right after submitting `enc`; the step counts from here on.
    #[cfg(feature = "burn")]
    pub(crate) fn record_checked_step(
        &mut self,
        params: &Params,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<RecordedStep> {
        self.check_step(params)?;
        self.record_step_into(enc)
    }

    /// What a step checks before any GPU work: every group's hyperparameters, and `params`.
    pub(super) fn check_step(&self, params: &Params) -> Result<()> {
        for c in &self.groups {
            c.validate()?;
            c.ready()?;
        }
        self.check_params(params)
    }

    pub(super) fn record_step_into(
        &mut self,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<RecordedStep> {
        let active = self.norm_active();
        let groups = &self.groups;
        self.scalars
            .write(self.submitted, &self.l1, |g, t| groups[g].scalars(t))?;
        if self.precision.stochastic_rounding {
            let rng = StepRng {
                key: dtype::step_key(self.seed, self.rounding_counter()),
                ..StepRng::default()
            };
            self.gpu
                .queue()
                .write_buffer(&self.rng, 0, bytemuck::bytes_of(&rng));
        }
        let gpu = self.gpu.clone();
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(C::NAME),
                timestamp_writes: None,
            });
            if let (true, Some(plan)) = (active, &self.norm) {
                plan.record(&mut pass, &gpu);
            }
            self.scalars.record_select(&mut pass);
            if let Some(f) = &self.factored {
                f.record(&mut pass, &gpu, &self.pipelines_factored, &self.chunks);
            }
            if let Some(ts) = &self.tensor_sums {
                kernel::record(&mut pass, &gpu, &self.pipelines_sums, &self.chunks);
                ts.record(&mut pass, &gpu);
            }
            kernel::record(&mut pass, &gpu, &self.pipelines, &self.chunks);
        }
        let readback = self.scalars.queue_readback(enc, &self.ctrl);
        self.submitted += 1;
        self.norm_ran = active;
        Ok(RecordedStep {
            readback,
            at: self.submitted,
        })
    }
}

/// A step recorded into a command encoder, not yet submitted.
#[must_use = "call `submitted` once the step's commands are submitted"]
pub(crate) struct RecordedStep {
    readback: Option<window::Readback>,
    at: u64,
}

impl RecordedStep {
    /// The step's commands are submitted: start reading back what the host waits for.
    pub(crate) fn submitted(self) {
        if let Some(r) = self.readback {
            r.start(self.at);
        }
    }
}
