//! The step scalars an update kernel reads, and how they stay right when the GPU skips steps.
//!
//! Skipped steps (a non-finite gradient with skipping, clipping or a loss scaler) do not advance
//! torch's step count, and only the GPU knows how many there were: the host learns it through
//! small non-blocking read-backs of `ctrl` that complete a step or two later. Until then it
//! writes one candidate set of scalars for every skip count the GPU may be at, into a ring of
//! [`WINDOW`] slots indexed by the skip count, and a tiny pass (`shaders/select.wgsl`) copies
//! the right one into the buffer the update kernel reads at a fixed index.

use crate::arena;
use crate::error::Result;
use crate::gpu::{Gpu, PipelineKey};
use crate::kernel;
use crate::shader::{self, Ctrl, ShaderStruct, OPTIMIZER_SCALAR_BYTES, SCALAR_SLOT_BYTES};
use std::sync::{Arc, Mutex};

/// Slots in the ring of candidate scalars: the host may run this many steps ahead of what it
/// knows of the GPU's skip count. Only beyond that does a step wait for the oldest read-back.
pub(crate) const WINDOW: u32 = 64;

/// The buffers of a step's scalars, the ring of candidates and the skip-count read-backs.
pub(crate) struct ScalarWindow {
    gpu: Gpu,
    groups: usize,
    /// This step's scalars, one 64-byte slot per group: what the update kernel reads.
    live: wgpu::Buffer,
    /// `WINDOW` slots of `groups` scalar slots, filled once steps can be skipped.
    candidates: wgpu::Buffer,
    select: SelectPass,
    scratch: Vec<u8>,
    windowed: bool,
    tracker: Mutex<SkipTracker>,
}

impl ScalarWindow {
    pub fn new(gpu: &Gpu, groups: usize, ctrl: &wgpu::Buffer) -> ScalarWindow {
        let live_bytes = (groups * SCALAR_SLOT_BYTES) as u64;
        let live = arena::storage(gpu, "wgpu-optim scalars", live_bytes);
        let candidates =
            arena::storage(gpu, "wgpu-optim scalar window", WINDOW as u64 * live_bytes);
        let select = SelectPass::new(gpu, &candidates, ctrl, &live);
        ScalarWindow {
            gpu: gpu.clone(),
            groups,
            live,
            candidates,
            select,
            scratch: vec![0; live_bytes as usize],
            windowed: false,
            tracker: Mutex::new(SkipTracker::default()),
        }
    }

    /// The buffer the update kernel reads (binding 0).
    pub fn live(&self) -> &wgpu::Buffer {
        &self.live
    }

    /// From now on steps can be skipped: `submitted` steps are known to have skipped none.
    pub fn enable(&mut self, submitted: u64) {
        if !self.windowed {
            self.windowed = true;
            let mut t = self.tracker();
            t.known = 0;
            t.known_at = submitted;
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, SkipTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write the scalars of the step after `submitted` submitted steps: `scalars(group, t)` for
    /// the 1-based applied step `t`, once per skip count the GPU may be at. Does not wait on the
    /// GPU unless it is [`WINDOW`] steps behind what the host has heard back.
    /// `l1` is each group's L1 coefficient, the slot's last word.
    pub fn write<S: ShaderStruct>(
        &mut self,
        submitted: u64,
        l1: &[f32],
        scalars: impl Fn(usize, u64) -> S,
    ) -> Result<()> {
        let g = self.groups;
        let n = submitted;
        let fill = |scratch: &mut [u8], t: u64| {
            for (k, l1) in l1.iter().enumerate().take(g) {
                let at = k * SCALAR_SLOT_BYTES;
                let s = scalars(k, t);
                let bytes = bytemuck::bytes_of(&s);
                scratch[at..at + bytes.len()].copy_from_slice(bytes);
                scratch[at + OPTIMIZER_SCALAR_BYTES..at + SCALAR_SLOT_BYTES]
                    .copy_from_slice(&l1.to_le_bytes());
            }
        };
        if !self.windowed {
            fill(&mut self.scratch, n + 1);
            self.gpu.queue().write_buffer(&self.live, 0, &self.scratch);
            return Ok(());
        }
        let (known, unknown) = {
            let mut t = self.tracker();
            t.harvest(&self.gpu);
            if n - t.known_at >= WINDOW as u64 {
                // The GPU is a whole window behind: wait for the oldest read-back in flight.
                t.wait_oldest(&self.gpu);
            }
            (t.known, n - t.known_at)
        };
        // Candidate skip counts known..=known + unknown: with s skipped, this is step n + 1 - s.
        let slot_bytes = g * SCALAR_SLOT_BYTES;
        for s in known..=known + unknown.min(WINDOW as u64 - 1) {
            let t = (n + 1).saturating_sub(s);
            self.scratch.fill(0);
            if t >= 1 {
                fill(&mut self.scratch, t);
            }
            let slot = (s % WINDOW as u64) as usize;
            self.gpu.queue().write_buffer(
                &self.candidates,
                (slot * slot_bytes) as u64,
                &self.scratch,
            );
        }
        Ok(())
    }

    /// Record the select pass (only when windowed).
    pub fn record_select(&self, pass: &mut wgpu::ComputePass<'_>) {
        if self.windowed {
            self.select.record(pass, &self.gpu);
        }
    }

    /// Copy `ctrl` into a free read-back slot at the end of this step's commands (none when
    /// not windowed or all slots are busy). Call [`Readback::start`] after the submit.
    pub fn queue_readback(
        &self,
        enc: &mut wgpu::CommandEncoder,
        ctrl: &wgpu::Buffer,
    ) -> Option<Readback> {
        if !self.windowed {
            return None;
        }
        let mut t = self.tracker();
        let i = t.free_slot(&self.gpu)?;
        let size = std::mem::size_of::<Ctrl>() as u64;
        enc.copy_buffer_to_buffer(ctrl, 0, &t.slots[i].buf, 0, size);
        *t.slots[i].state.lock().unwrap_or_else(|e| e.into_inner()) = SlotState::Pending;
        Some(Readback {
            buf: t.slots[i].buf.clone(),
            state: t.slots[i].state.clone(),
        })
    }

    /// Steps skipped on the GPU after `submitted` submitted steps. Waits for a read-back when
    /// the host does not know yet.
    pub fn skipped(&self, submitted: u64, read_ctrl: impl FnOnce() -> Result<Ctrl>) -> u64 {
        if !self.windowed {
            return 0;
        }
        let mut t = self.tracker();
        t.harvest(&self.gpu);
        if t.known_at < submitted {
            if let Ok(c) = read_ctrl() {
                t.known = c.skipped as u64;
                t.known_at = submitted;
            }
        }
        t.known
    }

    /// [`ScalarWindow::skipped`] with an async read-back of `ctrl`.
    pub async fn skipped_async(
        &self,
        submitted: u64,
        read_ctrl: impl std::future::Future<Output = Result<Ctrl>>,
    ) -> u64 {
        if !self.windowed {
            return 0;
        }
        {
            let mut t = self.tracker();
            t.harvest(&self.gpu);
            if t.known_at >= submitted {
                return t.known;
            }
        }
        let read = read_ctrl.await;
        let mut t = self.tracker();
        if let Ok(c) = read {
            if t.known_at < submitted {
                t.known = c.skipped as u64;
                t.known_at = submitted;
            }
        }
        t.known
    }

    /// The step count was set to `steps` (and the GPU's skip count to 0): read-backs in flight
    /// belong to the old count and are dropped.
    pub fn reset(&mut self, steps: u64) {
        let mut t = self.tracker();
        t.discard(&self.gpu);
        t.known = 0;
        t.known_at = steps;
    }
}

/// One read-back of `ctrl` recorded into a step's commands.
pub(crate) struct Readback {
    buf: wgpu::Buffer,
    state: Arc<Mutex<SlotState>>,
}

impl Readback {
    /// Map the read-back after the submit of step number `at` (1-based count of submits).
    pub fn start(self, at: u64) {
        let state = self.state;
        self.buf.map_async(wgpu::MapMode::Read, .., move |r| {
            *state.lock().unwrap_or_else(|e| e.into_inner()) = if r.is_ok() {
                SlotState::Ready(at)
            } else {
                SlotState::Free
            };
        });
    }
}

/// The select shader with the `Ctrl` it shares with the host.
pub(crate) fn select_source() -> String {
    shader::with_structs(&[Ctrl::wgsl()], include_str!("../../shaders/select.wgsl"))
}

/// The pass that copies this step's scalars out of the window (`shaders/select.wgsl`).
struct SelectPass {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    workgroups: u32,
}

impl SelectPass {
    fn new(gpu: &Gpu, window: &wgpu::Buffer, ctrl: &wgpu::Buffer, live: &wgpu::Buffer) -> Self {
        let (bgl, layout) = kernel::layout(
            gpu,
            &[
                Some(kernel::Bind::Read),
                Some(kernel::Bind::Read),
                Some(kernel::Bind::ReadWrite),
            ],
        );
        let pipeline = gpu.pipeline(
            PipelineKey {
                shader: "select",
                entry: "main",
                variant: 0,
                constants: vec![("WINDOW", WINDOW)],
            },
            select_source,
            &layout,
            false,
        );
        let bind_group = kernel::bind(
            gpu,
            &bgl,
            &[
                (0, window.as_entire_buffer_binding()),
                (1, ctrl.as_entire_buffer_binding()),
                (2, live.as_entire_buffer_binding()),
            ],
        );
        let vec4s = live.size() / 16;
        SelectPass {
            pipeline,
            bind_group,
            workgroups: vec4s.div_ceil(kernel::WORKGROUP as u64) as u32,
        }
    }

    fn record(&self, pass: &mut wgpu::ComputePass<'_>, gpu: &Gpu) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        kernel::dispatch(pass, gpu, self.workgroups);
    }
}

/// What the host knows of the GPU's count of skipped steps, learned through small
/// non-blocking read-backs of `ctrl` that complete a step or two later.
#[derive(Default)]
struct SkipTracker {
    known: u64,
    known_at: u64,
    slots: Vec<ReadSlot>,
}

struct ReadSlot {
    buf: wgpu::Buffer,
    state: Arc<Mutex<SlotState>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Pending,
    Ready(u64),
}

/// Read-backs in flight at once.
const READ_SLOTS: usize = 3;

impl SkipTracker {
    fn state(slot: &ReadSlot) -> SlotState {
        *slot.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Collect finished read-backs without waiting.
    fn harvest(&mut self, gpu: &Gpu) {
        let _ = gpu.device().poll(wgpu::PollType::Poll);
        for slot in &self.slots {
            let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            if let SlotState::Ready(at) = *st {
                if let Ok(view) = slot.buf.get_mapped_range(..) {
                    let ctrl: Ctrl =
                        bytemuck::pod_read_unaligned(&view[..std::mem::size_of::<Ctrl>()]);
                    drop(view);
                    if at > self.known_at {
                        self.known = ctrl.skipped as u64;
                        self.known_at = at;
                    }
                }
                slot.buf.unmap();
                *st = SlotState::Free;
            }
        }
    }

    /// Wait until a read-back in flight lands, then collect it.
    fn wait_oldest(&mut self, gpu: &Gpu) {
        if self
            .slots
            .iter()
            .any(|s| Self::state(s) == SlotState::Pending)
        {
            let _ = gpu.wait();
        }
        self.harvest(gpu);
    }

    /// Wait for the read-backs in flight and drop them unread.
    fn discard(&mut self, gpu: &Gpu) {
        if self.slots.iter().any(|s| Self::state(s) != SlotState::Free) {
            let _ = gpu.wait();
        }
        for slot in &self.slots {
            let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            if let SlotState::Ready(_) = *st {
                slot.buf.unmap();
                *st = SlotState::Free;
            }
        }
    }

    /// A free read-back slot (at most [`READ_SLOTS`] in flight; made on first use).
    fn free_slot(&mut self, gpu: &Gpu) -> Option<usize> {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| Self::state(s) == SlotState::Free)
        {
            return Some(i);
        }
        if self.slots.len() < READ_SLOTS {
            self.slots.push(ReadSlot {
                buf: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim skip count read-back"),
                    size: std::mem::size_of::<Ctrl>() as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                state: Arc::new(Mutex::new(SlotState::Free)),
            });
            return Some(self.slots.len() - 1);
        }
        None
    }
}
