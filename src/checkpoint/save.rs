//! Writing a checkpoint: the plan of tensors, the metadata, and the data read back from the GPU
//! in batches of many tensors per mapped staging buffer.

#[cfg(not(target_arch = "wasm32"))]
use super::io::write_atomic;
use super::meta::{
    safetensors_dtype, GroupMeta, Hyper, Meta, PrecisionMeta, ScalerMeta, StateFormatMeta,
    BLOCKWISE8,
};
use super::{
    format_err, param_key, state_key, SaveOptions, SchedulerRecord, ABSMAX, BLOCK_BYTES,
    CHECKSUM_TENSOR, CODES, FORMAT, FORMAT_VERSION, QMAP,
};
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::optim::{Optimizer, StateHome, MASTER};
use crate::params::Params;
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// The pieces of a tensor of `dtype` in per-chunk buffers `bufs`: (buffer, byte offset, bytes
/// to copy (whole words), bytes of the tensor among them). Only the last piece of a 16-bit
/// tensor of odd length copies more than it keeps (its last word's padding half).
fn gpu_source<'a>(
    bufs: &'a [wgpu::Buffer],
    pieces: &[crate::Piece],
    dtype: DType,
) -> Vec<(&'a wgpu::Buffer, u64, u64, u64)> {
    let es = dtype.size();
    pieces
        .iter()
        .map(|p| {
            let keep = (p.len * es) as u64;
            (
                &bufs[p.chunk],
                (p.offset * es) as u64,
                keep.next_multiple_of(4),
                keep,
            )
        })
        .collect()
}

/// Where the bytes of one tensor of the file come from.
enum Source<'a> {
    /// Pieces of per-chunk GPU buffers (see [`gpu_source`]).
    Gpu(Vec<(&'a wgpu::Buffer, u64, u64, u64)>),
    /// The step count as an f32 scalar.
    Step,
    /// Bytes from the host (an 8-bit state's map).
    Host(Vec<u8>),
}

/// GPU ranges `(buffer, byte offset, bytes)` as [`Source::Gpu`] reads them: whole words, of
/// which the first `bytes` are kept.
fn whole_words<'a>(ranges: &[(&'a wgpu::Buffer, u64, u64)]) -> Source<'a> {
    Source::Gpu(
        ranges
            .iter()
            .map(|&(b, off, len)| (b, off, len.next_multiple_of(4), len))
            .collect(),
    )
}

/// Save to `path` atomically (see `write_atomic`). Blocks on the read-backs.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn save_impl<O: Optimizer + ?Sized>(
    path: &Path,
    params: &Params,
    opt: &O,
    options: &SaveOptions<'_>,
) -> Result<()> {
    // Everything that can be refused without a read-back is, before a file is created.
    opt.ck_ensure_params(params)?;
    opt.ck_validate()?;
    write_atomic(path, |w, at| {
        crate::gpu::block_on(
            "checkpoint::save",
            "checkpoint::save_to_bytes_async",
            save_into(w, at, params, opt, options),
        )
    })
}

/// The whole checkpoint as bytes (the same bytes [`save_impl`] writes to a file).
pub(crate) async fn save_to_bytes_impl<O: Optimizer + ?Sized>(
    params: &Params,
    opt: &O,
    options: &SaveOptions<'_>,
) -> Result<Vec<u8>> {
    let mut w = std::io::Cursor::new(Vec::new());
    save_into(&mut w, Path::new("<bytes>"), params, opt, options).await?;
    Ok(w.into_inner())
}

/// Write the checkpoint to `w` (`at` names it in errors), reading the tensors back from the
/// GPU in batches of at most [`BLOCK_BYTES`].
async fn save_into<W: Write + Seek, O: Optimizer + ?Sized>(
    w: &mut W,
    at: &Path,
    params: &Params,
    opt: &O,
    options: &SaveOptions<'_>,
) -> Result<()> {
    opt.ck_ensure_params(params)?;
    opt.ck_validate()?;
    let steps = opt.step_count();
    let keys = opt.state_keys();
    let tensors = opt.ck_tensors();
    let scaler = options.scaler.or_else(|| opt.ck_scaler());
    let (precision, _, _) = opt.ck_precision();

    // Parameters in their own dtype and shape, then per tensor its state (in the state dtype),
    // its f32 master copy (16-bit parameters with master weights) and its step count.
    // With 8-bit state, a quantized state is three tensors: its codes (U8), absmax and map.
    let mut plan: Vec<(String, Vec<usize>, Dtype, Source<'_>)> = Vec::new();
    for &(name, _, pieces, dtype, shape) in &tensors {
        let src = Source::Gpu(gpu_source(&params.param_bufs, pieces, dtype));
        plan.push((
            param_key(name),
            shape.to_vec(),
            safetensors_dtype(dtype),
            src,
        ));
    }
    let mut state_bufs = Vec::with_capacity(keys.len());
    for &k in &keys {
        state_bufs.push(opt.ck_state_buffers(k)?);
    }
    let master = opt.ck_master_buffers();
    for (t, &(name, len, pieces, dtype, shape)) in tensors.iter().enumerate() {
        for (&k, bufs) in keys.iter().zip(&state_bufs) {
            match opt.ck_state_home(k, t)? {
                StateHome::Arena => {}
                StateHome::Absent => continue,
                StateHome::Factored { range, shape } => {
                    plan.push((state_key(name, k), shape, Dtype::F32, whole_words(&[range])));
                    continue;
                }
            }
            match opt.ck_blockwise(k, t)? {
                None => {
                    let src = Source::Gpu(gpu_source(bufs, pieces, precision.state));
                    let d = safetensors_dtype(precision.state);
                    plan.push((state_key(name, k), shape.to_vec(), d, src));
                }
                Some(v) if !v.quantized => {
                    plan.push((
                        state_key(name, k),
                        shape.to_vec(),
                        Dtype::F32,
                        whole_words(&v.values),
                    ));
                }
                Some(v) => {
                    let base = state_key(name, k);
                    let blocks = crate::blockwise::blocks(len);
                    plan.push((
                        format!("{base}.{CODES}"),
                        vec![len],
                        Dtype::U8,
                        whole_words(&v.codes),
                    ));
                    plan.push((
                        format!("{base}.{ABSMAX}"),
                        vec![blocks],
                        Dtype::F32,
                        whole_words(&v.absmax),
                    ));
                    let map: Vec<u8> = v.map.iter().flat_map(|x| x.to_le_bytes()).collect();
                    plan.push((
                        format!("{base}.{QMAP}"),
                        vec![256],
                        Dtype::F32,
                        Source::Host(map),
                    ));
                }
            }
        }
        if precision.master_weights && dtype.is_half() {
            let src = Source::Gpu(gpu_source(master, pieces, DType::F32));
            plan.push((state_key(name, MASTER), shape.to_vec(), Dtype::F32, src));
        }
        plan.push((state_key(name, "step"), vec![], Dtype::F32, Source::Step));
    }

    let mut infos = Vec::with_capacity(plan.len() + 1);
    let mut offset = 0usize;
    for (name, shape, dtype, _) in &plan {
        let bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        let info = TensorInfo {
            dtype: *dtype,
            shape: shape.clone(),
            data_offsets: (offset, offset + bytes),
        };
        infos.push((name.clone(), info));
        offset += bytes;
    }
    infos.push((
        CHECKSUM_TENSOR.to_string(),
        TensorInfo {
            dtype: Dtype::U8,
            shape: vec![4],
            data_offsets: (offset, offset + 4),
        },
    ));

    // The metadata, with a placeholder for the tensors' CRCs that is patched once they are
    // known (it has a fixed width).
    let meta = metadata(opt, steps, scaler, options.schedulers, plan.len()).await?;
    let metadata = Metadata::new(Some(meta.to_map()?), infos)
        .map_err(|e| format_err(format!("building the header: {e}")))?;
    let mut header = header_bytes(&metadata)?;
    // Pad so the data starts 8-byte aligned, as the safetensors crate does.
    header.resize(header.len().next_multiple_of(8), b' ');
    let needle = b"\"tensor_crc32\":\"";
    let crc_at = header
        .windows(needle.len())
        .position(|w| w == needle)
        .ok_or_else(|| format_err("the header lost its checksum entry"))?
        + needle.len();

    let gpu = opt.ck_gpu();
    let io = |e| Error::io("write", at, e);
    let len_bytes = (header.len() as u64).to_le_bytes();
    w.write_all(&len_bytes).map_err(io)?;
    w.write_all(&header).map_err(io)?;
    let mut crcs = Vec::with_capacity(plan.len());
    let step = (steps as f32).to_le_bytes();
    // Batches of many tensors (a large one split) of at most BLOCK_BYTES from the GPU, one
    // staging buffer and one map each; the step scalars in between come from the host.
    let mut batch: Vec<(&wgpu::Buffer, u64, u64)> = Vec::new();
    let mut batch_bytes = 0u64;
    // What the batch writes, in order: GPU bytes (length read, length kept, whether they end a
    // tensor) or a step scalar. GPU memory is little-endian, as the file is.
    let mut parts: Vec<Part<'_>> = Vec::new();
    let mut hasher = crc32fast::Hasher::new();
    let mut out = Batches {
        gpu,
        w,
        at,
        hasher: &mut hasher,
        crcs: &mut crcs,
    };
    for (_, _, _, src) in &plan {
        match src {
            Source::Step => parts.push(Part::Host(&step)),
            Source::Host(bytes) => parts.push(Part::Host(bytes)),
            Source::Gpu(pieces) => {
                let total: u64 = pieces.iter().map(|p| p.2).sum();
                let mut done = 0u64;
                for &(buf, off, len, keep) in pieces {
                    let mut p_done = 0;
                    while p_done < len {
                        let n = (len - p_done).min(BLOCK_BYTES as u64 - batch_bytes);
                        batch.push((buf, off + p_done, n));
                        p_done += n;
                        done += n;
                        batch_bytes += n;
                        // The padding half of a last word is read, not written.
                        let kept = if p_done == len { n - (len - keep) } else { n };
                        parts.push(Part::Gpu(n, kept, done == total));
                        if batch_bytes == BLOCK_BYTES as u64 {
                            out.flush(&mut batch, &mut parts).await?;
                            batch_bytes = 0;
                        }
                    }
                }
            }
        }
    }
    if !parts.is_empty() {
        out.flush(&mut batch, &mut parts).await?;
    }
    debug_assert_eq!(crcs.len(), plan.len());
    // Patch the CRCs into the header, then the header's own CRC goes last.
    let mut hex = Vec::with_capacity(crcs.len() * 8);
    for c in &crcs {
        write!(hex, "{c:08x}").expect("writing to a Vec");
    }
    header[crc_at..crc_at + hex.len()].copy_from_slice(&hex);
    let mut h = crc32fast::Hasher::new();
    h.update(&len_bytes);
    h.update(&header);
    w.write_all(&h.finalize().to_le_bytes()).map_err(io)?;
    w.seek(SeekFrom::Start(8 + crc_at as u64))
        .and_then(|_| w.write_all(&hex))
        .map_err(io)?;
    Ok(())
}

/// What a read-back batch writes, in order: GPU bytes (length read, length kept, whether they
/// end a tensor) or a whole tensor from the host (a step scalar, a map).
enum Part<'a> {
    Gpu(u64, u64, bool),
    Host(&'a [u8]),
}

/// Where the read-back batches of a save go.
struct Batches<'a, W> {
    gpu: &'a crate::Gpu,
    w: &'a mut W,
    at: &'a Path,
    hasher: &'a mut crc32fast::Hasher,
    crcs: &'a mut Vec<u32>,
}

impl<W: Write> Batches<'_, W> {
    /// Read `batch` back (one staging buffer, one map) and write what `parts` says, in order:
    /// GPU bytes (length read, length kept, whether they end a tensor) or a step scalar.
    async fn flush(
        &mut self,
        batch: &mut Vec<(&wgpu::Buffer, u64, u64)>,
        parts: &mut Vec<Part<'_>>,
    ) -> Result<()> {
        let io = |e| Error::io("write", self.at, e);
        // Whole words from the GPU, as they lie there (little-endian, as the file).
        let words = self.gpu.read_pieces_async(batch).await?;
        let data: &[u8] = bytemuck::cast_slice(&words);
        let mut pos = 0usize;
        for part in parts.iter() {
            match *part {
                Part::Gpu(len, keep, ends) => {
                    let bytes = &data[pos..pos + keep as usize];
                    self.hasher.update(bytes);
                    self.w.write_all(bytes).map_err(io)?;
                    pos += len as usize;
                    if ends {
                        self.crcs.push(std::mem::take(self.hasher).finalize());
                    }
                }
                Part::Host(bytes) => {
                    self.w.write_all(bytes).map_err(io)?;
                    self.crcs.push(crc32fast::hash(bytes));
                }
            }
        }
        batch.clear();
        parts.clear();
        Ok(())
    }
}

/// The header's JSON with every object's keys in sorted order, so that one state always
/// gives the same bytes (the metadata map and the tensor index are hash maps, iterated in no
/// fixed order).
fn header_bytes(metadata: &Metadata) -> Result<Vec<u8>> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let m: std::collections::BTreeMap<String, serde_json::Value> =
                    m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(m.into_iter().collect())
            }
            other => other,
        }
    }
    let v = serde_json::to_value(metadata)
        .map_err(|e| format_err(format!("serializing the header: {e}")))?;
    serde_json::to_vec(&sorted(v)).map_err(|e| format_err(format!("serializing the header: {e}")))
}

/// The metadata of a checkpoint of `opt`, with `n` tensors' CRCs still zero.
async fn metadata<O: Optimizer + ?Sized>(
    opt: &O,
    steps: u64,
    scaler: Option<&crate::GradScaler>,
    schedulers: &[SchedulerRecord],
    n: usize,
) -> Result<Meta> {
    let tensors = opt.ck_tensors();
    let mut param_groups = Vec::with_capacity(opt.group_count());
    for g in 0..opt.group_count() {
        param_groups.push(GroupMeta {
            params: opt
                .ck_group_tensors(g)?
                .into_iter()
                .map(String::from)
                .collect(),
            hyperparameters: opt
                .ck_group_hyperparameters(g)?
                .into_iter()
                .map(|(k, v)| (k.to_string(), Hyper(v)))
                .collect(),
        });
    }
    let grad_scaler = match scaler {
        None => None,
        Some(s) => {
            let c = s.config();
            Some(ScalerMeta {
                scale: s.scale_async().await? as f64,
                growth_tracker: s.growth_tracker_async().await?,
                init_scale: c.init_scale as f64,
                growth_factor: c.growth_factor as f64,
                backoff_factor: c.backoff_factor as f64,
                growth_interval: c.growth_interval,
            })
        }
    };
    let lr_schedulers = if schedulers.is_empty() {
        None
    } else {
        Some(
            schedulers
                .iter()
                .map(SchedulerRecord::to_json)
                .collect::<Result<Vec<_>>>()?,
        )
    };
    let (max_grad_norm, norm_type, skip_nonfinite) = opt.ck_clipping();
    let l1 = opt.ck_l1();
    let l1 = l1
        .iter()
        .any(|&l| l != 0.0)
        .then(|| l1.iter().map(|&l| crate::optim::hyper(l)).collect());
    // Written only where it differs from f32 state, no master weights, round to nearest even,
    // so f32 checkpoints are what they were.
    let (p, seed, counter) = opt.ck_precision();
    let precision = (p != Precision::default()).then(|| PrecisionMeta {
        state: p.state.to_string(),
        master_weights: p.master_weights,
        stochastic_rounding: p.stochastic_rounding,
        rounding_seed: seed,
        rounding_counter: counter,
    });
    Ok(Meta {
        format: FORMAT.to_string(),
        format_version: FORMAT_VERSION,
        optimizer: opt.ck_kind().to_string(),
        step: steps,
        tensors: tensors.iter().map(|t| t.0.to_string()).collect(),
        param_groups,
        max_grad_norm: max_grad_norm.map(|m| m as f64),
        grad_norm_type: norm_type,
        skip_nonfinite,
        grad_scaler,
        lr_schedulers,
        precision,
        l1,
        state_format: match opt.ck_state_format() {
            crate::StateFormat::Dense => None,
            crate::StateFormat::Blockwise8 { min_size } => Some(StateFormatMeta {
                kind: BLOCKWISE8.to_string(),
                min_size,
            }),
        },
        written_by: Some(format!("wgpu-optim {}", env!("CARGO_PKG_VERSION"))),
        tensor_crc32: Some("0".repeat(8 * n)),
    })
}
