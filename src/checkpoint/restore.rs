//! Restoring a checkpoint: [`Checkpoint::restore`] checks everything against the optimizer
//! and the data (checksums, finite values), then uploads the data in blocks, many tensors per
//! staging buffer.

use super::io::{read_blocks, widened, Realign, Segments};
use super::open::{kind, Checkpoint, Kind, LoadReport};
use super::{format_err, mismatch};
use crate::arena::Piece;
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::optim::{Optimizer, StateHome};
use crate::params::Params;
use crate::scaler::GradScaler;
use std::collections::{HashMap, HashSet};

/// Where the bytes of a checkpoint tensor go on the GPU: `(buffer, byte offset, bytes)`
/// ranges that take the tensor's bytes in order.
pub(super) type Dest<'a> = Option<Vec<(&'a wgpu::Buffer, u64, usize)>>;

/// The ranges of a tensor's `pieces` in per-chunk buffers `bufs` of `dtype`.
fn piece_dest<'a>(bufs: &'a [wgpu::Buffer], pieces: &[Piece], dtype: DType) -> Dest<'a> {
    let es = dtype.size();
    Some(
        pieces
            .iter()
            .map(|p| (&bufs[p.chunk], (p.offset * es) as u64, p.len * es))
            .collect(),
    )
}

/// The same from an 8-bit state's `(buffer, byte offset, bytes)` ranges.
fn range_dest<'a>(ranges: &[(&'a wgpu::Buffer, u64, u64)]) -> Dest<'a> {
    Some(ranges.iter().map(|&(b, o, n)| (b, o, n as usize)).collect())
}

impl Checkpoint {
    /// A fresh parameter set on `gpu` holding the saved parameter values in their saved shapes
    /// and dtypes (gradients zero), uploaded block by block and checked against their checksums. Non-finite values are an
    /// [`Error::CheckpointNonFinite`].
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint::Checkpoint, Gpu};
    /// let gpu = Gpu::new()?;
    /// let params = Checkpoint::open("run.safetensors")?.params(&gpu)?;
    /// println!("{:?}", params.names());
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn params(&self, gpu: &Gpu) -> Result<Params> {
        let h = &self.header;
        let mut builder = Params::builder(gpu);
        for (((name, _), shape), &dtype) in h.tensors.iter().zip(&h.shapes).zip(&h.dtypes) {
            builder = builder.tensor(name, shape, dtype);
        }
        let params = builder.build()?;
        let dests: Vec<Dest<'_>> = self
            .order
            .iter()
            .map(|name| match kind(name) {
                Kind::Param(t) => params.layout.index.get(t).and_then(|&i| {
                    let slot = &params.layout.slots[i];
                    piece_dest(&params.param_bufs, &slot.pieces, slot.dtype)
                }),
                _ => None,
            })
            .collect();
        self.upload(gpu, &dests, None, true)?;
        Ok(params)
    }

    /// Restore `params` and `opt` (and the attached loss scaler) from this checkpoint; see
    /// [`super::load`].
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint::Checkpoint, Gpu, Params, Sgd, SgdConfig};
    /// let gpu = Gpu::new()?;
    /// let ck = Checkpoint::open("sgd.safetensors")?;
    /// let mut params = Params::zeros(&gpu, &[("w", 4)])?;
    /// let mut opt = Sgd::new(&params, SgdConfig { momentum: 0.9, ..Default::default() })?;
    /// ck.restore(&mut params, &mut opt)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn restore(&self, params: &mut Params, opt: &mut dyn Optimizer) -> Result<LoadReport> {
        let scaler = opt.ck_scaler().cloned();
        self.restore_impl(params, opt, scaler.as_ref())
    }

    /// Restore as [`Checkpoint::restore`], with the loss scaler state going to `scaler`; see
    /// [`super::load_with_scaler`].
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint::Checkpoint, Adam, AdamConfig, GradScaler, Gpu, Params};
    /// let gpu = Gpu::new()?;
    /// let ck = Checkpoint::open("amp.safetensors")?;
    /// let mut params = ck.params(&gpu)?;
    /// let mut opt = Adam::new(&params, AdamConfig::default())?;
    /// let scaler = GradScaler::new(&gpu, ck.grad_scaler().unwrap().config.clone())?;
    /// ck.restore_with_scaler(&mut params, &mut opt, &scaler)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn restore_with_scaler(
        &self,
        params: &mut Params,
        opt: &mut dyn Optimizer,
        scaler: &GradScaler,
    ) -> Result<LoadReport> {
        self.restore_impl(params, opt, Some(scaler))
    }

    /// Check everything [`Checkpoint::restore`] checks (the optimizer kind, tensors, groups,
    /// options, scaler, every value and every checksum) without changing anything: a dry run
    /// that reads the whole file once and uses no GPU.
    ///
    /// ```no_run
    /// use wgpu_optim::{checkpoint, Adam, AdamConfig, Gpu, Params};
    /// let gpu = Gpu::new()?;
    /// let params = Params::zeros(&gpu, &[("w", 4)])?;
    /// let opt = Adam::new(&params, AdamConfig::default())?;
    /// checkpoint::open("run.safetensors")?.check(&params, &opt)?;
    /// # Ok::<(), wgpu_optim::Error>(())
    /// ```
    pub fn check(&self, params: &Params, opt: &dyn Optimizer) -> Result<LoadReport> {
        self.check_fit(params, opt, opt.ck_scaler())?;
        self.scan()?;
        Ok(self.report())
    }

    /// Everything that needs no data: the optimizer, tensors, groups, options and scaler fit.
    fn check_fit(
        &self,
        params: &Params,
        opt: &dyn Optimizer,
        scaler: Option<&GradScaler>,
    ) -> Result<()> {
        opt.ck_ensure_params(params)?;
        if self.header.optimizer != opt.ck_kind() {
            return Err(mismatch("optimizer", opt.ck_kind(), &self.header.optimizer));
        }
        let (precision, _, _) = opt.ck_precision();
        let saved = self.header.precision;
        if (precision.state, precision.master_weights) != (saved.state, saved.master_weights) {
            let describe = |p: Precision| {
                format!(
                    "{} state, master weights {}",
                    p.state,
                    if p.master_weights { "on" } else { "off" }
                )
            };
            return Err(mismatch(
                "optimizer precision (set_precision before loading)",
                describe(precision),
                describe(saved),
            ));
        }
        if opt.ck_state_format() != self.header.state_format {
            return Err(mismatch(
                "state format (set_state_format before loading)",
                format!("{:?}", opt.ck_state_format()),
                format!("{:?}", self.header.state_format),
            ));
        }
        let mut ours: Vec<(&str, usize)> = opt.ck_tensors().iter().map(|t| (t.0, t.1)).collect();
        let mut theirs: Vec<(&str, usize)> = self
            .header
            .tensors
            .iter()
            .map(|(n, l)| (n.as_str(), *l))
            .collect();
        ours.sort();
        theirs.sort();
        if ours != theirs {
            let (a, b): (HashSet<_>, HashSet<_>) = (
                ours.iter().copied().collect(),
                theirs.iter().copied().collect(),
            );
            let describe = |v: &[(&str, usize)], other: &HashSet<(&str, usize)>| {
                v.iter()
                    .filter(|t| !other.contains(t))
                    .map(|(n, l)| format!("{n}[{l}]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(mismatch(
                "tensors",
                describe(&ours, &b),
                describe(&theirs, &a),
            ));
        }
        if self.header.groups.len() != opt.group_count() {
            return Err(mismatch(
                "number of groups",
                opt.group_count(),
                self.header.groups.len(),
            ));
        }
        for (g, rec) in self.header.groups.iter().enumerate() {
            let mut want = opt.ck_group_tensors(g)?;
            let mut got: Vec<&str> = rec.tensors.iter().map(|s| s.as_str()).collect();
            want.sort();
            got.sort();
            if want != got {
                return Err(mismatch(
                    format!("tensors of group {g}"),
                    want.join(", "),
                    got.join(", "),
                ));
            }
            opt.ck_check_group(g, &rec.hyperparameters)?;
        }
        // The state keys of every tensor, in one pass over the file's tensors.
        let mut keys_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for name in &self.order {
            match kind(name) {
                Kind::State(t, key) | Kind::Quant(t, key, super::CODES) => {
                    keys_of.entry(t).or_default().push(key)
                }
                _ => {}
            }
        }
        let keys = opt.state_keys();
        let ours: HashMap<&str, (usize, DType)> = opt
            .ck_tensors()
            .iter()
            .enumerate()
            .map(|(i, o)| (o.0, (i, o.3)))
            .collect();
        for (i, (t, _)) in self.header.tensors.iter().enumerate() {
            let dtype = self.header.dtypes[i];
            let mut want = keys.clone();
            if let Some(&(index, our_dtype)) = ours.get(t.as_str()) {
                if our_dtype != dtype {
                    return Err(mismatch(format!("dtype of `{t}`"), our_dtype, dtype));
                }
                // A factored second moment: a tensor keeps some of the keys.
                let mut kept = Vec::with_capacity(want.len());
                for k in want {
                    if !matches!(opt.ck_state_home(k, index)?, StateHome::Absent) {
                        kept.push(k);
                    }
                }
                want = kept;
            }
            if precision.master_weights && dtype.is_half() {
                want.push(crate::optim::MASTER);
            }
            want.sort();
            let mut got = keys_of.remove(t.as_str()).unwrap_or_default();
            got.sort();
            if want != got {
                return Err(mismatch(
                    format!("state of `{t}`"),
                    want.join(", "),
                    got.join(", "),
                ));
            }
        }
        match (scaler, &self.header.scaler) {
            (None, None) => {}
            (Some(_), None) => return Err(mismatch("grad scaler", "one", "none")),
            (None, Some(_)) => return Err(mismatch("grad scaler", "none", "one")),
            (Some(s), Some(rec)) => {
                if s.config() != &rec.config {
                    return Err(mismatch(
                        "grad scaler options",
                        format!("{:?}", s.config()),
                        format!("{:?}", rec.config),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The validation pass over the data: every checksum, every value finite, the step tensors
    /// agree with the metadata. Returns every tensor's CRC-32 in data order.
    fn scan(&self) -> Result<Vec<u32>> {
        let mut crcs = Vec::with_capacity(self.order.len());
        let mut h = crc32fast::Hasher::new();
        let mut seg = Segments::new(&self.ranges);
        let mut realign = Realign::default();
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let data = (0, self.ranges.last().map_or(0, |r| r.1));
        let step = self.header.step as f32;
        // A tensor's values are judged only once its checksum is known to be right: a damaged
        // file is reported as damaged, not as holding a NaN.
        let mut problem: Option<Error> = None;
        read_blocks(
            &mut file,
            &self.path,
            self.data_start,
            data,
            |block, offset| {
                seg.each(block, offset, |t, bytes, at, ends| {
                    realign.each(bytes, at, ends, |bytes, at, ends| {
                        h.update(bytes);
                        let name = &self.order[t];
                        let k = kind(name);
                        let dtype = self.dtypes[t];
                        if problem.is_none()
                            && !matches!(k, Kind::Checksum | Kind::Quant(_, _, super::CODES))
                        {
                            for (i, x) in widened(dtype, bytes).enumerate() {
                                if !x.is_finite() {
                                    problem = Some(Error::CheckpointNonFinite {
                                        tensor: name.clone(),
                                        index: at / dtype.size() + i,
                                        value: x,
                                    });
                                    break;
                                }
                                if matches!(k, Kind::Step) && x != step {
                                    problem = Some(format_err(format!(
                                        "`{name}` is {x}, the metadata says step {}",
                                        self.header.step
                                    )));
                                    break;
                                }
                            }
                        }
                        if ends {
                            let got = std::mem::take(&mut h).finalize();
                            if !matches!(k, Kind::Checksum) {
                                self.check_crc(t, got)?;
                            }
                            if let Some(e) = problem.take() {
                                return Err(e);
                            }
                            crcs.push(got);
                        }
                        Ok(())
                    })
                })
            },
        )?;
        Ok(crcs)
    }

    /// With 8-bit state: the map of each state key, read from its `.qmap` tensors, which must
    /// be one of bitsandbytes' two dynamic maps and the same for every tensor.
    fn quant_maps(&self) -> Result<Vec<(String, crate::QuantMap)>> {
        let mut maps: Vec<(String, crate::QuantMap)> = Vec::new();
        for name in &self.order {
            let Kind::Quant(_, key, super::QMAP) = kind(name) else {
                continue;
            };
            let values = self.read(name)?;
            let map = [crate::QuantMap::Signed, crate::QuantMap::Unsigned]
                .into_iter()
                .find(|m| {
                    m.values()
                        .iter()
                        .zip(&values)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                })
                .ok_or_else(|| {
                    format_err(format!(
                        "`{name}` is neither of bitsandbytes' dynamic maps (signed, unsigned)"
                    ))
                })?;
            match maps.iter().find(|(k, _)| k == key) {
                Some((_, m)) if *m != map => {
                    return Err(format_err(format!(
                        "state `{key}` has the {m:?} map for some tensors and the {map:?} map \
                         for `{name}`"
                    )))
                }
                Some(_) => {}
                None => maps.push((key.to_string(), map)),
            }
        }
        Ok(maps)
    }

    fn restore_impl(
        &self,
        params: &mut Params,
        opt: &mut dyn Optimizer,
        scaler: Option<&GradScaler>,
    ) -> Result<LoadReport> {
        // ---- 1. Everything that needs no data, then the data itself.
        self.check_fit(params, opt, scaler)?;
        let crcs = self.scan()?;
        let maps = self.quant_maps()?;
        for (key, map) in &maps {
            opt.ck_set_quant_map(key, *map)?;
        }

        // ---- 2. Apply. Nothing below can fail on a valid file but I/O.
        for (g, rec) in self.header.groups.iter().enumerate() {
            opt.ck_apply_group(g, &rec.hyperparameters)?;
        }
        opt.ck_set_clipping(
            self.header.max_grad_norm,
            self.header.norm_type,
            self.header.skip_nonfinite,
        )?;
        opt.ck_set_l1(&self.header.l1)?;
        {
            let gpu = opt.ck_gpu().clone();
            let keys = opt.state_keys();
            let mut state_bufs = HashMap::with_capacity(keys.len());
            for k in keys {
                state_bufs.insert(k, opt.ck_state_buffers(k)?);
            }
            let state_dtype = self.header.precision.state;
            let master = opt.ck_master_buffers();
            let tensors = opt.ck_tensors();
            let pieces: HashMap<&str, (&[Piece], DType)> =
                tensors.iter().map(|t| (t.0, (t.2, t.3))).collect();
            let index: HashMap<&str, usize> =
                tensors.iter().enumerate().map(|(i, t)| (t.0, i)).collect();
            let mut dests: Vec<Dest<'_>> = Vec::with_capacity(self.order.len());
            for name in &self.order {
                dests.push(match kind(name) {
                    Kind::Param(t) => piece_dest(&params.param_bufs, pieces[t].0, pieces[t].1),
                    Kind::State(t, crate::optim::MASTER) => {
                        piece_dest(master, pieces[t].0, DType::F32)
                    }
                    Kind::State(t, k) => match opt.ck_state_home(k, index[t])? {
                        StateHome::Factored { range, .. } => range_dest(&[range]),
                        _ => match opt.ck_blockwise(k, index[t])? {
                            Some(v) => range_dest(&v.values),
                            None => piece_dest(state_bufs[k], pieces[t].0, state_dtype),
                        },
                    },
                    Kind::Quant(t, k, part) => {
                        let v = opt
                            .ck_blockwise(k, index[t])?
                            .expect("checked: 8-bit state");
                        match part {
                            super::CODES => range_dest(&v.codes),
                            super::ABSMAX => range_dest(&v.absmax),
                            _ => None,
                        }
                    }
                    Kind::Step | Kind::Checksum => None,
                });
            }
            self.upload(&gpu, &dests, Some(&crcs), false)?;
        }
        if let (Some(s), Some(rec)) = (scaler, &self.header.scaler) {
            s.set_state(rec.scale, rec.growth_tracker)?;
        }
        opt.ck_set_step_count(self.header.step)?;
        let h = &self.header;
        opt.ck_set_rounding(
            h.precision.stochastic_rounding,
            h.rounding_seed,
            h.rounding_counter,
        )?;
        Ok(self.report())
    }
}
