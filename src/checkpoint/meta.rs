//! The header's `__metadata__`: one serde type, [`Meta`], written by [`super::save`] and read by
//! [`super::Checkpoint::open`], and its check into a [`Header`] of typed records.
//!
//! safetensors keeps metadata as a map of strings to strings, so every entry that is not a
//! plain string is JSON text inside its string (`"step": "3"`, `"tensors": "[\"w\"]"`); the
//! `json_text` adapter does that in both directions. The norm type is the one entry that is not
//! JSON (`inf`), see `norm_text`.

use super::{
    format_err, GroupRecord, ScalerRecord, SchedulerRecord, CHECKSUM_TENSOR, FORMAT, FORMAT_VERSION,
};
use crate::dtype::{DType, Precision};
use crate::error::{Error, Result};
use crate::norm::NormType;
use crate::scaler::ScalerConfig;
use safetensors::tensor::{Dtype, TensorInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Everything a checkpoint's metadata holds (see the module documentation of
/// [`crate::checkpoint`] for each entry).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub format: String,
    #[serde(with = "json_text")]
    pub format_version: u32,
    pub optimizer: String,
    #[serde(with = "json_text")]
    pub step: u64,
    #[serde(with = "json_text")]
    pub tensors: Vec<String>,
    #[serde(with = "json_text")]
    pub param_groups: Vec<GroupMeta>,
    #[serde(with = "json_text")]
    pub max_grad_norm: Option<f64>,
    #[serde(with = "norm_text")]
    pub grad_norm_type: NormType,
    #[serde(with = "json_text")]
    pub skip_nonfinite: bool,
    #[serde(with = "json_text")]
    pub grad_scaler: Option<ScalerMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    pub lr_schedulers: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    pub precision: Option<PrecisionMeta>,
    /// Each group's L1 coefficient, where one is not 0.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    pub l1: Option<Vec<f64>>,
    /// With 8-bit state: its format (absent: dense state).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "json_text")]
    pub state_format: Option<StateFormatMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
    /// Version 2: the CRC-32 of every tensor's bytes in data order (the checksum tensor
    /// excluded), 8 lowercase hex digits each, concatenated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_crc32: Option<String>,
}

/// The `precision` entry: the optimizer's state dtype, master weights and rounding, and where
/// the stochastic-rounding stream stands. Absent means f32 state, no master weights, round to
/// nearest even.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PrecisionMeta {
    /// `F32` or `BF16`.
    pub state: String,
    pub master_weights: bool,
    pub stochastic_rounding: bool,
    pub rounding_seed: u64,
    /// Steps submitted when saved (skipped ones included): the rounding stream's counter.
    pub rounding_counter: u64,
}

/// The `state_format` entry: `{"kind": "blockwise8", "min_size": 4096}` for 8-bit state
/// (absent: one value per element in the precision's state dtype).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StateFormatMeta {
    pub kind: String,
    pub min_size: usize,
}

/// The `kind` of 8-bit blockwise state in the `state_format` entry.
pub(crate) const BLOCKWISE8: &str = "blockwise8";

/// One parameter group: its tensors and its hyperparameters by name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GroupMeta {
    pub params: Vec<String>,
    #[serde(flatten)]
    pub hyperparameters: BTreeMap<String, Hyper>,
}

/// A hyperparameter: a JSON number (a boolean is read as 0 or 1).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Hyper(pub f64);

impl<'de> Deserialize<'de> for Hyper {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Hyper;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a boolean")
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Hyper, E> {
                Ok(Hyper(v))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Hyper, E> {
                Ok(Hyper(v as f64))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Hyper, E> {
                Ok(Hyper(v as f64))
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Hyper, E> {
                Ok(Hyper(v as u8 as f64))
            }
        }
        d.deserialize_any(V)
    }
}

/// A loss scaler's state and options (f32 values written as f64).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ScalerMeta {
    pub scale: f64,
    pub growth_tracker: u32,
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u32,
}

/// A value as JSON text inside a metadata string.
mod json_text {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(v).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(D::Error::custom)
    }
}

/// [`NormType`] as PyTorch's `norm_type` in text: `1`, `2` or `inf`.
mod norm_text {
    use crate::norm::NormType;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &NormType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match v {
            NormType::L1 => "1",
            NormType::L2 => "2",
            NormType::Inf => "inf",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NormType, D::Error> {
        match String::deserialize(d)?.as_str() {
            "1" | "1.0" => Ok(NormType::L1),
            "2" | "2.0" => Ok(NormType::L2),
            "inf" => Ok(NormType::Inf),
            other => Err(D::Error::custom(format!(
                "grad_norm_type {other:?} is not 1, 2 or inf"
            ))),
        }
    }
}

impl Meta {
    /// The metadata map safetensors stores.
    pub fn to_map(&self) -> Result<HashMap<String, String>> {
        let v = serde_json::to_value(self)
            .map_err(|e| format_err(format!("serializing the metadata: {e}")))?;
        serde_json::from_value(v).map_err(|e| format_err(format!("serializing the metadata: {e}")))
    }

    /// Read the metadata map, with `format` and `format_version` checked first.
    pub fn from_map(md: &HashMap<String, String>) -> Result<Meta> {
        match md.get("format") {
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(format_err(format!(
                    "metadata `format` is {f:?}, not {FORMAT:?}"
                )))
            }
            None => return Err(format_err("the metadata lacks `format`")),
        }
        let version = md.get("format_version").map(|s| s.as_str());
        if !matches!(version, Some("1") | Some("2")) {
            return Err(format_err(format!(
                "format version {version:?} is not supported (this crate reads 1 and {FORMAT_VERSION})"
            )));
        }
        let obj = md
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        serde_json::from_value(Value::Object(obj))
            .map_err(|e| format_err(format!("bad metadata: {e}")))
    }
}

/// The checked contents of a header.
#[derive(Debug)]
pub(crate) struct Header {
    pub version: u32,
    pub optimizer: String,
    pub step: u64,
    pub tensors: Vec<(String, usize)>,
    /// Each tensor's shape and storage dtype, as `tensors`.
    pub shapes: Vec<Vec<usize>>,
    pub dtypes: Vec<DType>,
    pub precision: Precision,
    /// Dense, or 8-bit blockwise (the `state_format` entry).
    pub state_format: crate::StateFormat,
    pub rounding_seed: u64,
    pub rounding_counter: u64,
    /// Each group's L1 coefficient (zeros where the file has none).
    pub l1: Vec<f32>,
    pub groups: Vec<GroupRecord>,
    pub max_grad_norm: Option<f32>,
    pub norm_type: NormType,
    pub skip_nonfinite: bool,
    pub scaler: Option<ScalerRecord>,
    pub schedulers: Vec<SchedulerRecord>,
    /// Version 2: every tensor's CRC-32, in data order (the checksum tensor, last, excluded).
    pub crcs: Option<Vec<u32>>,
}

fn elements(info: &TensorInfo) -> Option<usize> {
    info.shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b))
}

/// Our storage dtype of a safetensors dtype (F32, BF16, F16).
pub(crate) fn storage_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::BF16 => Some(DType::Bf16),
        Dtype::F16 => Some(DType::F16),
        _ => None,
    }
}

/// The safetensors dtype of a storage dtype.
pub(crate) fn safetensors_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    }
}

fn finite_f32(x: f64, what: &str) -> Result<f32> {
    let f = x as f32;
    if !f.is_finite() {
        return Err(format_err(format!("{what} = {x} is not a finite f32")));
    }
    Ok(f)
}

fn positive(name: &'static str, x: f32) -> Result<f32> {
    if x > 0.0 {
        Ok(x)
    } else {
        Err(Error::InvalidHyperparameter {
            name,
            value: x as f64,
            rule: "must be > 0",
        })
    }
}

impl Header {
    /// Check `meta` against the tensors of the file (`infos`, by name; `order`: the names in
    /// data order): every tensor is `param.<name>`, `state.<name>.<key>` of a listed tensor or
    /// the checksum, with the right number of elements and dtype (a parameter F32, BF16 or F16;
    /// its state in the `precision` entry's state dtype; master copies and step counts F32); the groups partition the tensors;
    /// clipping and scaler values are finite and in range.
    pub fn check(
        meta: Meta,
        infos: &HashMap<String, TensorInfo>,
        order: &[&str],
    ) -> Result<Header> {
        if meta.tensors.is_empty() {
            return Err(format_err("`tensors` is empty"));
        }
        if meta.step > crate::optim::MAX_STEP_COUNT {
            return Err(format_err(format!(
                "`step` is {}, more than 2^53, the most an optimizer counts",
                meta.step
            )));
        }
        let (precision, rounding_seed, rounding_counter) = match &meta.precision {
            None => (Precision::default(), 0, 0),
            Some(p) => {
                let state = p.state.parse::<DType>().map_err(|_| {
                    format_err(format!(
                        "`precision.state` is {:?}, not F32 or BF16",
                        p.state
                    ))
                })?;
                let precision = Precision {
                    state,
                    master_weights: p.master_weights,
                    stochastic_rounding: p.stochastic_rounding,
                };
                (precision, p.rounding_seed, p.rounding_counter)
            }
        };
        let state_format = match &meta.state_format {
            None => crate::StateFormat::Dense,
            Some(f) if f.kind == BLOCKWISE8 && f.min_size > 0 => {
                if precision.state != DType::F32 {
                    return Err(format_err(format!(
                        "8-bit state with a {} state dtype",
                        precision.state
                    )));
                }
                crate::StateFormat::Blockwise8 {
                    min_size: f.min_size,
                }
            }
            Some(f) => {
                return Err(format_err(format!(
                    "`state_format` is {:?} with min_size {}, not {BLOCKWISE8:?} with min_size > 0",
                    f.kind, f.min_size
                )))
            }
        };
        let mut tensors = Vec::with_capacity(meta.tensors.len());
        let mut shapes = Vec::with_capacity(meta.tensors.len());
        let mut dtypes = Vec::with_capacity(meta.tensors.len());
        let mut index = HashMap::with_capacity(meta.tensors.len());
        for name in &meta.tensors {
            if name.is_empty() {
                return Err(format_err("an empty tensor name in `tensors`"));
            }
            let key = super::param_key(name);
            let info = infos
                .get(&key)
                .ok_or_else(|| format_err(format!("tensor `{key}` is missing")))?;
            let len = elements(info)
                .filter(|&l| l > 0)
                .ok_or_else(|| format_err(format!("`{key}` has shape {:?}", info.shape)))?;
            let dtype = storage_dtype(info.dtype).ok_or_else(|| {
                super::mismatch(
                    format!("dtype of `{key}`"),
                    "F32, BF16 or F16",
                    format!("{:?}", info.dtype),
                )
            })?;
            if index.insert(name.as_str(), tensors.len()).is_some() {
                return Err(format_err(format!("tensor `{name}` is listed twice")));
            }
            tensors.push((name.clone(), len));
            shapes.push(info.shape.clone());
            dtypes.push(dtype);
        }
        let sealed = meta.format_version >= 2;
        for (tname, info) in infos {
            if tname == CHECKSUM_TENSOR && sealed {
                continue; // checked by the reader
            }
            // The number of elements and the dtype this tensor must have.
            let quant =
                super::quant_part(tname).filter(|_| state_format != crate::StateFormat::Dense);
            let want = if let Some((name, _, part)) = quant {
                index.get(name).map(|&t| {
                    let len = tensors[t].1;
                    if !state_format.quantizes(len) {
                        return Err(format_err(format!(
                            "`{tname}`: 8-bit state of `{name}`, which has {len} elements, below \
                             min_size"
                        )));
                    }
                    Ok(match part {
                        super::CODES => (len, None),
                        super::ABSMAX => (crate::blockwise::blocks(len), Some(DType::F32)),
                        _ => (256, Some(DType::F32)),
                    })
                })
            } else if let Some(name) = tname.strip_prefix("param.") {
                index
                    .get(name)
                    .map(|&t| Ok((tensors[t].1, Some(dtypes[t]))))
            } else if let Some((name, key)) = tname
                .strip_prefix("state.")
                .and_then(|rest| rest.rsplit_once('.'))
            {
                index
                    .get(name)
                    .filter(|_| !key.is_empty())
                    .map(|&t| match key {
                        "step" => Ok((1, Some(DType::F32))),
                        crate::optim::MASTER
                            if !(precision.master_weights && dtypes[t].is_half()) =>
                        {
                            Err(format_err(format!(
                                "`{tname}`: a master copy of a {} tensor{}",
                                dtypes[t],
                                if precision.master_weights {
                                    ""
                                } else {
                                    " without master weights"
                                }
                            )))
                        }
                        crate::optim::MASTER => Ok((tensors[t].1, Some(DType::F32))),
                        // A factored second moment (Adafactor): f32, in torch's shape.
                        _ if crate::optim::FACTORED_KEYS.contains(&key) => {
                            match crate::optim::factored_state_shape(key, &shapes[t]) {
                                Some(s) if s == info.shape => {
                                    Ok((s.iter().product(), Some(DType::F32)))
                                }
                                Some(s) => Err(format_err(format!(
                                    "`{tname}` has shape {:?}, expected {s:?}",
                                    info.shape
                                ))),
                                None => Err(format_err(format!(
                                    "`{tname}`: `{name}` of shape {:?} keeps no {key}",
                                    shapes[t]
                                ))),
                            }
                        }
                        _ if state_format.quantizes(tensors[t].1) => Err(format_err(format!(
                            "`{tname}`: f32 state of `{name}`, which has 8-bit state \
                             (state.{name}.{key}.codes, .absmax, .qmap)"
                        ))),
                        _ => Ok((tensors[t].1, Some(precision.state))),
                    })
            } else {
                None
            };
            let (len, dtype) = want.ok_or_else(|| {
                format_err(format!(
                    "tensor `{tname}` is neither param.<name> nor state.<name>.<key> of a listed tensor"
                ))
            })??;
            // `None`: the U8 codes of an 8-bit state.
            let dtype_ok = match dtype {
                Some(d) => storage_dtype(info.dtype) == Some(d),
                None => info.dtype == Dtype::U8,
            };
            if !dtype_ok {
                return Err(super::mismatch(
                    format!("dtype of `{tname}`"),
                    dtype.map_or("U8".to_string(), |d| d.to_string()),
                    format!("{:?}", info.dtype),
                ));
            }
            if elements(info) != Some(len) {
                return Err(format_err(format!(
                    "`{tname}` has shape {:?}, expected {len} elements",
                    info.shape
                )));
            }
        }

        // Groups: a partition of the tensors, each with its hyperparameters.
        if meta.param_groups.is_empty() {
            return Err(format_err("`param_groups` is empty"));
        }
        let mut seen = HashSet::new();
        let mut groups = Vec::with_capacity(meta.param_groups.len());
        for (g, group) in meta.param_groups.into_iter().enumerate() {
            for name in &group.params {
                if !index.contains_key(name.as_str()) {
                    return Err(format_err(format!(
                        "group {g} lists `{name}`, which is not in `tensors`"
                    )));
                }
                if !seen.insert(name.clone()) {
                    return Err(format_err(format!("tensor `{name}` is in two groups")));
                }
            }
            groups.push(GroupRecord {
                tensors: group.params,
                hyperparameters: group
                    .hyperparameters
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            });
        }
        if let Some((lost, _)) = tensors.iter().find(|(n, _)| !seen.contains(n)) {
            return Err(format_err(format!("tensor `{lost}` is in no group")));
        }

        let l1 = match meta.l1 {
            None => vec![0.0; groups.len()],
            Some(v) if v.len() != groups.len() => {
                return Err(format_err(format!(
                    "`l1` has {} entries for {} groups",
                    v.len(),
                    groups.len()
                )))
            }
            Some(v) => v
                .iter()
                .map(|&x| {
                    let f = finite_f32(x, "l1")?;
                    crate::error::check("l1", x, f >= 0.0, "must be >= 0")?;
                    Ok(f)
                })
                .collect::<Result<Vec<f32>>>()?,
        };
        let max_grad_norm = match meta.max_grad_norm {
            None => None,
            Some(m) => Some(positive("max_norm", finite_f32(m, "max_grad_norm")?)?),
        };
        let scaler = match meta.grad_scaler {
            None => None,
            Some(s) => {
                let f = |x: f64, k: &str| finite_f32(x, &format!("grad_scaler.{k}"));
                Some(ScalerRecord {
                    scale: positive("scale", f(s.scale, "scale")?)?,
                    growth_tracker: s.growth_tracker,
                    config: ScalerConfig {
                        init_scale: f(s.init_scale, "init_scale")?,
                        growth_factor: f(s.growth_factor, "growth_factor")?,
                        backoff_factor: f(s.backoff_factor, "backoff_factor")?,
                        growth_interval: s.growth_interval,
                    },
                })
            }
        };
        let schedulers = meta
            .lr_schedulers
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                SchedulerRecord::from_json(v).map_err(|e| {
                    format_err(format!(
                        "`lr_schedulers`[{i}] is not a scheduler state: {e}"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let crcs = match (sealed, meta.tensor_crc32) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(format_err("a version 1 checkpoint with `tensor_crc32`"))
            }
            (true, None) => return Err(format_err("the metadata lacks `tensor_crc32`")),
            (true, Some(text)) => {
                let n = order.iter().filter(|n| **n != CHECKSUM_TENSOR).count();
                if !text.is_ascii() || text.len() != n * 8 {
                    return Err(format_err(format!(
                        "`tensor_crc32` has {} characters, expected 8 for each of {n} tensors",
                        text.len(),
                    )));
                }
                let crcs = text
                    .as_bytes()
                    .chunks(8)
                    .map(|hex| {
                        let hex = std::str::from_utf8(hex).unwrap_or("");
                        u32::from_str_radix(hex, 16)
                            .ok()
                            .filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                            .ok_or_else(|| format_err(format!("`tensor_crc32` has {hex:?}")))
                    })
                    .collect::<Result<Vec<u32>>>()?;
                Some(crcs)
            }
        };
        Ok(Header {
            version: meta.format_version,
            optimizer: meta.optimizer,
            step: meta.step,
            tensors,
            shapes,
            dtypes,
            precision,
            state_format,
            rounding_seed,
            rounding_counter,
            l1,
            groups,
            max_grad_norm,
            norm_type: meta.grad_norm_type,
            skip_nonfinite: meta.skip_nonfinite,
            scaler,
            schedulers,
            crcs,
        })
    }
}
