//! Timing one submission: timestamp queries where the device has them, else wall time.

use super::*;
use std::time::Instant;

/// How a [`GpuTimer`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// Timestamps written on command encoders around the timed submission
    /// (`TIMESTAMP_QUERY_INSIDE_ENCODERS`).
    EncoderTimestamps,
    /// Timestamps of an empty compute pass before and one after the timed submission
    /// (`TIMESTAMP_QUERY` only).
    PassTimestamps,
    /// Host wall time from the submission to the end of a blocking `device.poll`, with the
    /// queue drained first (no timestamp queries on this device).
    WallClock,
}

impl TimerMode {
    /// Whether the times are GPU timestamps (not host wall time).
    pub fn is_gpu(self) -> bool {
        self != TimerMode::WallClock
    }
}

/// Queries per query set (two per timed submission).
const QUERIES: u32 = 512;

/// Times one queue submission at a time on the GPU: a timestamp is written in a submission of
/// its own before and after the timed work, so the time covers exactly what the work's
/// submission does (on Vulkan a timestamp is taken once all earlier commands are done).
///
/// The queue is drained before each timed submission, so every run starts on an idle device.
pub struct GpuTimer {
    gpu: Gpu,
    mode: TimerMode,
    queries: Option<Queries>,
}

struct Queries {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    period_ns: f64,
}

impl std::fmt::Debug for GpuTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTimer")
            .field("mode", &self.mode)
            .finish()
    }
}

impl GpuTimer {
    /// The best mode the device allows: encoder timestamps, else pass timestamps, else wall
    /// time.
    pub fn new(gpu: &Gpu) -> Self {
        let f = gpu.device().features();
        let mode = if f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS) {
            TimerMode::EncoderTimestamps
        } else if f.contains(wgpu::Features::TIMESTAMP_QUERY) {
            TimerMode::PassTimestamps
        } else {
            TimerMode::WallClock
        };
        Self::build(gpu, mode)
    }

    /// A timer in a given mode (to compare modes); an error when the device lacks the feature.
    pub fn with_mode(gpu: &Gpu, mode: TimerMode) -> Result<Self> {
        let f = gpu.device().features();
        let ok = match mode {
            TimerMode::EncoderTimestamps => {
                f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
            }
            TimerMode::PassTimestamps => f.contains(wgpu::Features::TIMESTAMP_QUERY),
            TimerMode::WallClock => true,
        };
        if !ok {
            return Err(Error::DeviceLimit(format!(
                "{mode:?} needs timestamp query features this device lacks"
            )));
        }
        Ok(Self::build(gpu, mode))
    }

    fn build(gpu: &Gpu, mode: TimerMode) -> Self {
        let queries = mode.is_gpu().then(|| {
            let bytes = QUERIES as u64 * 8;
            Queries {
                set: gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("wgpu-optim bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES,
                }),
                resolve: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim bench timestamps"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                readback: gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-optim bench timestamps read-back"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                period_ns: gpu.queue().get_timestamp_period() as f64,
            }
        });
        GpuTimer {
            gpu: gpu.clone(),
            mode,
            queries,
        }
    }

    /// How this timer measures.
    pub fn mode(&self) -> TimerMode {
        self.mode
    }

    /// Run `work` `runs` times (each call must make exactly the submission to time, e.g. one
    /// `step()`), and return the time of each run.
    pub fn time<F: FnMut() -> Result<()>>(
        &mut self,
        runs: usize,
        mut work: F,
    ) -> Result<Vec<Duration>> {
        let mut times = self.time_interleaved(runs, &mut [&mut work])?;
        Ok(times.pop().unwrap_or_default())
    }

    /// Like [`GpuTimer::time`] for several pieces of work, run in turn (`a b c a b c ...`), so
    /// that a change of load on a shared machine hits them alike. Returns the times of each.
    pub fn time_interleaved(
        &mut self,
        runs: usize,
        work: &mut [&mut dyn FnMut() -> Result<()>],
    ) -> Result<Vec<Vec<Duration>>> {
        let k = work.len();
        let mut out = vec![Vec::with_capacity(runs); k];
        if k == 0 {
            return Ok(out);
        }
        if 2 * k > QUERIES as usize {
            return Err(Error::DeviceLimit(format!(
                "at most {} pieces of work can be interleaved",
                QUERIES / 2
            )));
        }
        let per_batch = (QUERIES as usize / 2 / k).max(1);
        let mut done = 0;
        while done < runs {
            let batch = per_batch.min(runs - done);
            match &self.queries {
                None => {
                    for _ in 0..batch {
                        for (w, times) in work.iter_mut().zip(&mut out) {
                            self.wait()?;
                            let t0 = Instant::now();
                            w()?;
                            self.wait()?;
                            times.push(t0.elapsed());
                        }
                    }
                }
                Some(q) => {
                    let mut at = 0;
                    for _ in 0..batch {
                        for w in work.iter_mut() {
                            self.wait()?;
                            self.mark(q, at, true);
                            w()?;
                            self.mark(q, at + 1, false);
                            at += 2;
                        }
                    }
                    let ticks = self.resolve(q, at)?;
                    for (j, t) in ticks.chunks_exact(2).enumerate() {
                        let ns = t[1].saturating_sub(t[0]) as f64 * q.period_ns;
                        out[j % k].push(Duration::from_nanos(ns as u64));
                    }
                }
            }
            done += batch;
        }
        Ok(out)
    }

    /// Submit a timestamp write at `index`.
    fn mark(&self, q: &Queries, index: u32, begin: bool) {
        let mut enc = self
            .gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim bench timestamp"),
            });
        if self.mode == TimerMode::EncoderTimestamps {
            enc.write_timestamp(&q.set, index);
        } else {
            let (b, e) = if begin {
                (Some(index), None)
            } else {
                (None, Some(index))
            };
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("wgpu-optim bench timestamp"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &q.set,
                    beginning_of_pass_write_index: b,
                    end_of_pass_write_index: e,
                }),
            });
        }
        self.gpu.queue().submit([enc.finish()]);
    }

    /// Resolve and read back the first `count` timestamps. Blocks.
    fn resolve(&self, q: &Queries, count: u32) -> Result<Vec<u64>> {
        let bytes = count as u64 * 8;
        let mut enc = self
            .gpu
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgpu-optim bench resolve"),
            });
        enc.resolve_query_set(&q.set, 0..count, &q.resolve, 0);
        enc.copy_buffer_to_buffer(&q.resolve, 0, &q.readback, 0, bytes);
        self.gpu.queue().submit([enc.finish()]);
        let slice = q.readback.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|e| Error::ReadBack(e.to_string()))?
            .map_err(|e| Error::ReadBack(e.to_string()))?;
        let ticks = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::ReadBack(e.to_string()))?;
            bytemuck::pod_collect_to_vec::<u8, u64>(&view)
        };
        q.readback.unmap();
        Ok(ticks)
    }

    /// Block until the queue is empty.
    fn wait(&self) -> Result<()> {
        self.gpu
            .device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::ReadBack(e.to_string()))
    }
}

/// Median time per step of `steps` steps of `opt` on `params`, after two untimed warm-up steps
/// (pipeline compilation, first-step rules). Each step is timed on its own by `timer`.
pub fn time_steps(
    timer: &mut GpuTimer,
    opt: &mut dyn Optimizer,
    params: &mut Params,
    steps: usize,
) -> Result<Duration> {
    for _ in 0..2 {
        opt.step(params)?;
    }
    let times = timer.time(steps.max(1), || opt.step(params))?;
    Ok(median(&times))
}

/// Median time of `runs` runs of the copy kernel, after two untimed warm-up runs.
pub fn time_copy(timer: &mut GpuTimer, copy: &CopyKernel, runs: usize) -> Result<Duration> {
    for _ in 0..2 {
        copy.submit();
    }
    let times = timer.time(runs.max(1), || {
        copy.submit();
        Ok(())
    })?;
    Ok(median(&times))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_per_element_table() {
        let got: Vec<(String, u64)> = Workload::standard()
            .iter()
            .map(|w| (w.label().to_string(), w.bytes_per_element()))
            .collect();
        let want = [
            ("copy", 8),
            ("Adam", 28),
            ("Adam amsgrad", 36),
            ("Adam decoupled", 28),
            ("SGD", 12),
            ("SGD momentum", 20),
            ("SGD momentum+nesterov", 20),
            ("RMSprop", 20),
            ("RMSprop centered+momentum", 36),
            ("Adagrad", 20),
            ("Lion", 20),
            ("Adadelta", 28),
            ("Rprop", 28),
            ("ASGD", 20),
            ("Adamax", 28),
            ("RAdam", 28),
            ("NAdam", 28),
            ("ScheduleFreeAdamW", 28),
            ("LAMB", 28),
            ("Adafactor", 28),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(l, b)| (l.to_string(), *b))
                .collect::<Vec<_>>()
        );
        let centered = RmsPropConfig {
            centered: true,
            ..Default::default()
        };
        assert_eq!(bytes_per_element(&centered), 28);
        assert_eq!(label(&centered), "RMSprop centered");
        assert!(Workload::standard()
            .iter()
            .all(|w| w.reference_step(4).is_some()));
    }

    #[test]
    fn median_and_pattern() {
        let ms = Duration::from_millis;
        assert_eq!(median(&[ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&[ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
        let p = pattern(10_000, 3);
        assert!(p.iter().all(|x| (-1.0..1.0).contains(x)));
        assert!(p.iter().any(|&x| x > 0.5) && p.iter().any(|&x| x < -0.5));
        assert_eq!(p, pattern(10_000, 3));
    }
}
