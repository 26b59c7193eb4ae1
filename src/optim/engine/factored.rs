//! A factored second moment on the GPU ([`OptimizerConfig::FACTORED`], Adafactor): per
//! tensor of rank >= 2, a row and a column mean of `g * g` over its last two dimensions
//! (`row_var` of `batch x rows`, `col_var` of `batch x cols`), per vector one value per element
//! (`variance`), all f32, kept in the per-tensor sums buffer after the tensor sums
//! ([`super::tensor_sums`]), and read back and written through the same keys as other state.
//!
//! A step adds three small dispatches before the update's two passes, all in its submit and in
//! a fixed order (deterministic, no atomics):
//! 1. `main_partials`, per chunk, one thread per task: a task is up to [`TASK_LEN`] elements
//!    of one row (stride 1) or one column (stride `cols`) of a tensor, in one of its pieces
//!    (neighbouring threads take neighbouring columns); it adds up
//!    `g * g` of its elements in order (`fma(g, g, acc)`, `g` prepared as the update sees it).
//!    A tensor lies in one piece unless it is larger than a chunk.
//! 2. `main_factor`, one thread per row and per column: the sum of its tasks in piece order,
//!    its mean `s / n` (torch's `vector_norm(..).square_().div_(n)`
//!    without the square root and square, which drivers may fold away), and the
//!    state's `lerp` towards it with weight `t^beta2_decay`.
//! 3. `main_rowmean`, one thread per matrix of a batch: `max(mean(row_var), eps1)`, the rows
//!    in order.
//!
//! The update's passes then read `row_var[r] * col_var[c] / rowmean` per element (a vector its
//! `variance`, updated in the first pass), through the tail this module appends to every
//! chunk's tensor-sum table: `[info_at, tasks, tasks_at, factor, factor_at, mean, mean_at, 0]`,
//! the tensor-local granule index of each of the chunk's granules, the chunk's tasks
//! `[start, stride, count, out]`, each tensor's `[kind, rows, cols, a0, a1, a2, sqrt(numel),
//! group]` (kind 1, a vector: `a0` its variance; kind 2: `a0` row_var, `a1` col_var, `a2` the
//! row means), and in chunk 0 only the row/column outputs `[tensor, state, first task output,
//! count | COL]` and the row means `[tensor, first row, rows, out]`. Offsets into the sums
//! buffer are absolute f32 indices. [`crate::reference::adafactor`] adds up in the same order.

use crate::arena::Layout;
use crate::gpu::Gpu;
use crate::kernel;

/// Where a checkpoint finds state `key` of one tensor.
pub enum StateHome<'a> {
    /// With the other state: the per-chunk state buffers, or 8-bit, in the tensor's shape.
    Arena,
    /// A factored second moment's key this tensor does not keep (a matrix's `variance`).
    Absent,
    /// A factored second moment: its f32 values at `(buffer, byte offset, bytes)`, in torch's
    /// shape ([`state_shape`]).
    Factored {
        range: (&'a wgpu::Buffer, u64, u64),
        shape: Vec<usize>,
    },
}

/// The most elements one task of `main_partials` adds up: a row's or a column's part in one
/// piece is split into tasks of this many (the last shorter), for parallelism on large
/// matrices. [`crate::reference::adafactor`] splits its sums the same way.
pub(crate) const TASK_LEN: usize = 256;

/// The state keys of a factored second moment, in this order.
pub(crate) const KEYS: [&str; 3] = ["row_var", "col_var", "variance"];

const KIND_VECTOR: u32 = 1;
const KIND_MATRIX: u32 = 2;
const COL: u32 = 1 << 31;
const HEADER: usize = 8;

/// Where one tensor's state lies in the sums buffer (f32 indices).
#[derive(Clone, Debug)]
pub(crate) enum Region {
    /// Rank 0 or 1: `variance`, one value per element.
    Vector { var_at: usize },
    /// Rank >= 2, factored over its last two dimensions.
    Matrix {
        batch: usize,
        rows: usize,
        cols: usize,
        row_at: usize,
        col_at: usize,
    },
}

/// The shape torch gives factored state `key` of a tensor of `shape`: `row_var`
/// `[..., rows, 1]` and `col_var` `[..., 1, cols]` of a tensor of rank >= 2 with elements,
/// `variance` (the tensor's shape) of any other; `None` where the tensor does not keep `key`.
/// What [`Factored::new`] lays out, and what a checkpoint's factored state must look like.
pub(crate) fn state_shape(key: &str, shape: &[usize]) -> Option<Vec<usize>> {
    let matrix = shape.len() >= 2 && shape.iter().all(|&d| d > 0);
    let (lead, last) = shape.split_at(shape.len().saturating_sub(2));
    match (matrix, key) {
        (true, "row_var") => Some([lead, &[last[0], 1]].concat()),
        (true, "col_var") => Some([lead, &[1, last[1]]].concat()),
        (false, "variance") => Some(shape.to_vec()),
        _ => None,
    }
}

impl Region {
    /// The state `key`'s f32 offset and length and its shape as torch keeps it
    /// ([`state_shape`]), if the tensor has it.
    pub fn state(&self, key: &str, shape: &[usize]) -> Option<(usize, usize, Vec<usize>)> {
        let torch = state_shape(key, shape)?;
        let at = match (self, key) {
            (Region::Vector { var_at, .. }, _) => *var_at,
            (Region::Matrix { row_at, .. }, "row_var") => *row_at,
            (Region::Matrix { col_at, .. }, _) => *col_at,
        };
        Some((at, torch.iter().product(), torch))
    }

    /// The keys this tensor keeps.
    pub fn keys(&self) -> &'static [&'static str] {
        match self {
            Region::Vector { .. } => &KEYS[2..],
            Region::Matrix { .. } => &KEYS[..2],
        }
    }
}

/// The plan of a factored second moment over one layout.
pub(crate) struct Factored {
    /// Per tensor, its state.
    pub regions: Vec<Region>,
    /// Per chunk, the words appended to its tensor-sum table.
    pub tails: Vec<Vec<u32>>,
    /// The persistent state: `[start, end)` in f32 indices of the sums buffer.
    pub state: (usize, usize),
    /// f32 values this plan adds to the sums buffer (state, row means, task outputs).
    pub floats: usize,
    /// Per chunk, its tasks.
    tasks: Vec<u32>,
    outputs: u32,
    means: u32,
}

impl Factored {
    /// The plan for `layout` (tensor `t` in group `group_of[t]`), its values from f32 index
    /// `base` of the sums buffer on.
    pub fn new(layout: &Layout, group_of: &[u32], base: usize) -> Factored {
        let mut at = base;
        fn take(at: &mut usize, n: usize) -> usize {
            *at += n;
            *at - n
        }
        let mut regions = Vec::with_capacity(layout.slots.len());
        for slot in &layout.slots {
            let s = &slot.shape;
            regions.push(if s.len() >= 2 && slot.len > 0 {
                let (rows, cols) = (s[s.len() - 2], s[s.len() - 1]);
                let batch = slot.len / (rows * cols);
                Region::Matrix {
                    batch,
                    rows,
                    cols,
                    row_at: take(&mut at, batch * rows),
                    col_at: take(&mut at, batch * cols),
                }
            } else {
                Region::Vector {
                    var_at: take(&mut at, slot.len),
                }
            });
        }
        let state = (base, at);
        let chunks = layout.chunk_lens.len();
        let mut tasks: Vec<Vec<[u32; 4]>> = vec![Vec::new(); chunks];
        let mut info = Vec::with_capacity(8 * layout.slots.len());
        let mut outputs: Vec<[u32; 4]> = Vec::new();
        let mut means: Vec<[u32; 4]> = Vec::new();
        let mut local_granule: Vec<Vec<u32>> = layout
            .chunk_lens
            .iter()
            .map(|&n| vec![0; n / super::tensor_sums::GRANULE])
            .collect();
        let mut col_tasks: Vec<(usize, usize, usize, [u32; 4])> = Vec::new();
        for (t, (slot, region)) in layout.slots.iter().zip(&regions).enumerate() {
            // Each piece: (chunk, chunk offset, tensor-local start, len).
            let mut pieces = Vec::with_capacity(slot.pieces.len());
            let mut local = 0;
            for p in &slot.pieces {
                pieces.push((p.chunk, p.offset, local, p.len));
                let g0 = p.offset / super::tensor_sums::GRANULE;
                for g in 0..p.len.div_ceil(super::tensor_sums::GRANULE) {
                    local_granule[p.chunk][g0 + g] =
                        (local / super::tensor_sums::GRANULE + g) as u32;
                }
                local += p.len;
            }
            let sqrt_numel = ((slot.len as f64).sqrt() as f32).to_bits();
            let group = group_of[t];
            match *region {
                Region::Vector { var_at, .. } => {
                    info.extend([KIND_VECTOR, 0, 0, var_at as u32, 0, 0, sqrt_numel, group]);
                }
                Region::Matrix {
                    batch,
                    rows,
                    cols,
                    row_at,
                    col_at,
                } => {
                    let mean_at = take(&mut at, batch);
                    info.extend([
                        KIND_MATRIX,
                        rows as u32,
                        cols as u32,
                        row_at as u32,
                        col_at as u32,
                        mean_at as u32,
                        sqrt_numel,
                        group,
                    ]);
                    // Rows: elements [o * cols, (o + 1) * cols).
                    for o in 0..batch * rows {
                        let (lo, hi) = (o * cols, (o + 1) * cols);
                        let first = at;
                        let mut count = 0;
                        for &(chunk, offset, s, len) in &pieces {
                            let (a, b) = (lo.max(s), hi.min(s + len));
                            for a in (a..b).step_by(TASK_LEN) {
                                let out = take(&mut at, 1);
                                tasks[chunk].push([
                                    (offset + a - s) as u32,
                                    1,
                                    (b - a).min(TASK_LEN) as u32,
                                    out as u32,
                                ]);
                                count += 1;
                            }
                        }
                        outputs.push([t as u32, (row_at + o) as u32, first as u32, count]);
                    }
                    // Columns: elements b * rows * cols + r * cols + c, r = 0..rows.
                    for o in 0..batch * cols {
                        let (b, c) = (o / cols, o % cols);
                        let j0 = b * rows * cols + c;
                        let first = at;
                        let mut count = 0;
                        for &(chunk, offset, s, len) in &pieces {
                            let r_lo = s.saturating_sub(j0).div_ceil(cols);
                            if s + len <= j0 || r_lo >= rows {
                                continue;
                            }
                            let r_hi = ((s + len - 1 - j0) / cols).min(rows - 1);
                            if r_lo > r_hi {
                                continue;
                            }
                            for (k, r) in (r_lo..=r_hi).step_by(TASK_LEN).enumerate() {
                                let out = take(&mut at, 1);
                                let start = j0 + r * cols;
                                let task = [
                                    (offset + start - s) as u32,
                                    cols as u32,
                                    (r_hi + 1 - r).min(TASK_LEN) as u32,
                                    out as u32,
                                ];
                                col_tasks.push((chunk, r_lo / TASK_LEN + k, o, task));
                                count += 1;
                            }
                        }
                        outputs.push([t as u32, (col_at + o) as u32, first as u32, count | COL]);
                    }
                    // Neighbouring threads take neighbouring columns (coalesced loads).
                    col_tasks.sort_by_key(|&(chunk, seg, o, _)| (chunk, seg, o));
                    for (chunk, _, _, task) in col_tasks.drain(..) {
                        tasks[chunk].push(task);
                    }
                    for b in 0..batch {
                        means.push([
                            t as u32,
                            (row_at + b * rows) as u32,
                            rows as u32,
                            (mean_at + b) as u32,
                        ]);
                    }
                }
            }
        }
        let tails = (0..chunks)
            .map(|c| {
                let granules = local_granule[c].len();
                let f = 2 + 2 * granules;
                let tasks_at = f + HEADER + granules;
                let info_at = tasks_at + 4 * tasks[c].len();
                let (outs, mean_list): (&[[u32; 4]], &[[u32; 4]]) = if c == 0 {
                    (&outputs, &means)
                } else {
                    (&[], &[])
                };
                let factor_at = info_at + info.len();
                let mean_at = factor_at + 4 * outs.len();
                let mut tail = vec![
                    info_at as u32,
                    tasks[c].len() as u32,
                    tasks_at as u32,
                    outs.len() as u32,
                    factor_at as u32,
                    mean_list.len() as u32,
                    mean_at as u32,
                    0,
                ];
                tail.extend(&local_granule[c]);
                tail.extend(tasks[c].iter().flatten());
                tail.extend(&info);
                tail.extend(outs.iter().flatten());
                tail.extend(mean_list.iter().flatten());
                tail
            })
            .collect();
        Factored {
            regions,
            tails,
            state,
            floats: at - base,
            tasks: tasks.iter().map(|t| t.len() as u32).collect(),
            outputs: outputs.len() as u32,
            means: means.len() as u32,
        }
    }

    /// Record the three passes (before the update's first pass): `pipelines` are
    /// `[main_partials, main_factor, main_rowmean]` per chunk, `chunks` the update's bind
    /// groups.
    pub fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        gpu: &Gpu,
        pipelines: &[[wgpu::ComputePipeline; 3]],
        chunks: &[(wgpu::BindGroup, usize)],
    ) {
        let wg = |n: u32| n.div_ceil(256);
        for (c, (bind, _)) in chunks.iter().enumerate() {
            if self.tasks[c] == 0 {
                continue;
            }
            pass.set_pipeline(&pipelines[c][0]);
            pass.set_bind_group(0, bind, &[]);
            kernel::dispatch(pass, gpu, wg(self.tasks[c]));
        }
        for (k, n) in [(1, self.outputs), (2, self.means)] {
            if n == 0 {
                continue;
            }
            pass.set_pipeline(&pipelines[0][k]);
            pass.set_bind_group(0, &chunks[0].0, &[]);
            kernel::dispatch(pass, gpu, wg(n));
        }
    }

    /// Bytes of persistent state.
    pub fn state_bytes(&self) -> u64 {
        4 * (self.state.1 - self.state.0) as u64
    }
}

use super::FusedOptimizer;
use crate::error::{Error, Result};
use crate::OptimizerConfig;

impl<C: OptimizerConfig> FusedOptimizer<C> {
    /// With a factored second moment and `key` one of its keys: the byte offset in the sums
    /// buffer, the length and torch's shape of state `key` of `tensor` (an
    /// [`Error::UnknownState`] where the tensor does not keep that key). `None` otherwise.
    pub(super) fn factored_state(
        &self,
        key: &str,
        tensor: &str,
    ) -> Result<Option<(u64, usize, Vec<usize>)>> {
        let Some(f) = &self.factored else {
            return Ok(None);
        };
        if !KEYS.contains(&key) {
            return Ok(None);
        }
        let t = *self
            .layout
            .index
            .get(tensor)
            .ok_or_else(|| Error::UnknownTensor(tensor.to_string()))?;
        let region = &f.regions[t];
        match region.state(key, &self.layout.slots[t].shape) {
            Some((at, len, shape)) => Ok(Some(((at * 4) as u64, len, shape))),
            None => Err(Error::UnknownState {
                key: format!(
                    "{key} (of {tensor}, which keeps {})",
                    region.keys().join(", ")
                ),
                optimizer: C::NAME,
                known: KEYS.to_vec(),
            }),
        }
    }

    /// Where state `key` of tensor `t` (layout order) lies, for checkpoints.
    pub(crate) fn state_home(&self, key: &str, t: usize) -> Result<StateHome<'_>> {
        let Some(f) = &self.factored else {
            return Ok(StateHome::Arena);
        };
        if !KEYS.contains(&key) {
            return Ok(StateHome::Arena);
        }
        Ok(match f.regions[t].state(key, &self.layout.slots[t].shape) {
            Some((at, len, shape)) => StateHome::Factored {
                range: (self.factored_buffer(), 4 * at as u64, 4 * len as u64),
                shape,
            },
            None => StateHome::Absent,
        })
    }

    /// With a factored second moment and `key` one of its keys: that state of every tensor in
    /// layout order (empty for those that do not keep it), in one read-back. `None` otherwise.
    #[cfg(feature = "burn")]
    pub(super) fn factored_of_all(&self, key: &str) -> Result<Option<Vec<Vec<f32>>>> {
        let Some(f) = self.factored.as_ref().filter(|_| KEYS.contains(&key)) else {
            return Ok(None);
        };
        let buffer = self.factored_buffer();
        let at: Vec<_> = f
            .regions
            .iter()
            .zip(&self.layout.slots)
            .map(|(r, s)| r.state(key, &s.shape))
            .collect();
        let pieces: Vec<_> = at
            .iter()
            .flatten()
            .map(|(at, len, _)| (buffer, 4 * *at as u64, 4 * *len as u64))
            .collect();
        let mut values = if pieces.is_empty() {
            Vec::new()
        } else {
            self.gpu.read_pieces(&pieces)?
        }
        .into_iter();
        Ok(Some(
            at.iter()
                .map(|a| match a {
                    Some((_, len, _)) => values.by_ref().take(*len).collect(),
                    None => Vec::new(),
                })
                .collect(),
        ))
    }

    /// The buffer holding the factored state.
    pub(super) fn factored_buffer(&self) -> &wgpu::Buffer {
        &self
            .tensor_sums
            .as_ref()
            .expect("a factored second moment keeps its state with the tensor sums")
            .sums
    }

    /// Bytes of factored state (0 without).
    pub(super) fn factored_bytes(&self) -> u64 {
        self.factored.as_ref().map_or(0, Factored::state_bytes)
    }

    /// For benchmarks (the `bench` feature): submit a factored second moment's row, column and
    /// row-mean passes alone, as a step runs them before its update passes, so that their
    /// share of a step can be timed (`examples/throughput.rs`). They move `row_var` and
    /// `col_var` as the first half of a step would (with the last step's scalars). Returns
    /// false, submitting nothing, for an optimizer without a factored second moment or before
    /// its first step.
    ///
    /// ```
    /// use wgpu_optim::{Adafactor, AdafactorConfig, DType, Gpu, Optimizer, Params};
    /// let gpu = Gpu::new()?;
    /// let mut params = Params::builder(&gpu).tensor("w", &[64, 32], DType::F32).build()?;
    /// let mut opt = Adafactor::new(&params, AdafactorConfig::default())?;
    /// assert!(!opt.submit_factored_passes());
    /// opt.step(&mut params)?;
    /// assert!(opt.submit_factored_passes());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    #[cfg(feature = "bench")]
    pub fn submit_factored_passes(&self) -> bool {
        let Some(f) = &self.factored else {
            return false;
        };
        self.submit_for_bench("factored passes", |pass, gpu| {
            f.record(pass, gpu, &self.pipelines_factored, &self.chunks)
        })
    }
}
