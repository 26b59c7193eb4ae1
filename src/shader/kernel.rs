//! The source of the update kernels, generated for one chunk's storage: the bindings with
//! their `load_<name>`/`store_<name>` accessors in each dtype, the 8-bit blockwise entry point
//! and the per-tensor sums pass, around the optimizer's own `update`.

use super::{unpack_scalars, Ctrl, ShaderStruct, StepRng};
use crate::dtype::DType;

/// The shared WGSL of every optimizer's update kernel: bindings 0–2, the kernel's entry point
/// (index, scalars, bounds and skip check) and the gradient helpers.
const COMMON: &str = include_str!("../../shaders/common.wgsl");
/// Widening and narrowing of 16-bit storage, and the stochastic-rounding hash.
pub(crate) const DTYPE: &str = include_str!("../../shaders/dtype.wgsl");

/// How an update kernel stores one chunk: the parameters' and gradients' dtype, the state's,
/// whether 16-bit parameters have an f32 master copy, whether bf16 stores round stochastically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Storage {
    pub param: DType,
    pub state: DType,
    /// The kernel has a master binding (the optimizer keeps master weights).
    pub master_binding: bool,
    pub stochastic: bool,
    /// Bit `k` set: state slot `k` is 8-bit blockwise ([`crate::StateFormat::Blockwise8`]),
    /// and the kernel's entry point is `main_q8`. 0: every slot is stored in `state`'s dtype.
    pub q8: u8,
}

impl Storage {
    /// Whether this chunk's parameters are read from and written to the master copy.
    pub fn uses_master(self) -> bool {
        self.master_binding && self.param.is_half()
    }

    /// A number naming the variant in pipeline keys.
    pub fn code(self) -> u32 {
        self.param.code()
            | self.state.code() << 2
            | (self.master_binding as u32) << 4
            | (self.stochastic as u32) << 5
            | (self.q8 as u32) << 6
    }
}

/// The WGSL element type of a buffer of `dtype`, one entry per four elements.
fn array_of(dtype: DType) -> &'static str {
    if dtype.is_half() {
        "array<vec2<u32>>"
    } else {
        "array<vec4<f32>>"
    }
}

/// The expression widening entry `i` of buffer `name` (of `dtype`) to a `vec4<f32>`.
fn widen(name: &str, dtype: DType) -> String {
    match dtype {
        DType::F32 => format!("{name}[i]"),
        DType::Bf16 => format!("widen_bf16({name}[i])"),
        DType::F16 => format!("widen_f16({name}[i])"),
    }
}

/// The statement storing `v` into entry `i` of buffer `name` (of `dtype`), bf16 rounded
/// stochastically from random stream `stream` when `stochastic`.
fn narrow(name: &str, dtype: DType, stochastic: bool, stream: usize) -> String {
    match dtype {
        DType::F32 => format!("{name}[i] = v;"),
        DType::Bf16 if stochastic => {
            format!("{name}[i] = narrow_bf16_noise(v, noise4(rng.key, {stream}u, i));")
        }
        DType::Bf16 => format!("{name}[i] = narrow_bf16(v);"),
        DType::F16 => format!("{name}[i] = narrow_f16(v);"),
    }
}

/// `var<storage, access> name` at `binding`, with `load_<name>(i)` (and `store_<name>(i, v)`
/// when writable) converting from and to `dtype`.
pub(crate) fn storage_binding(
    binding: u32,
    name: &str,
    dtype: DType,
    writable: bool,
    stochastic: bool,
    stream: usize,
) -> String {
    let access = if writable { "read_write" } else { "read" };
    let mut s = format!(
        "@group(0) @binding({binding}) var<storage, {access}> {name}: {};
         fn load_{name}(i: u32) -> vec4<f32> {{ return {}; }}
",
        array_of(dtype),
        widen(name, dtype)
    );
    if writable {
        s += &format!(
            "fn store_{name}(i: u32, v: vec4<f32>) {{ {} }}
",
            narrow(name, dtype, stochastic, stream)
        );
    }
    s
}

/// The full source of an update kernel: the generated structs, the common prologue, the
/// param (3) and grad (4) bindings, one `var<storage, read_write>` per state slot (bindings 5,
/// 6, ... in `slots` order), the master copy (5 + slots, when the optimizer keeps one) and the
/// step's random key (a uniform after them), each buffer with its `load_<name>(i)` and
/// `store_<name>(i, v)` for `storage`'s dtypes, and the optimizer's own
/// `fn update(i: u32, s: Scalars)` from `family`.
pub(crate) fn update_kernel<S: ShaderStruct>(
    slots: &[&str],
    family: &str,
    storage: Storage,
    sums: u32,
) -> String {
    let mut src = String::new();
    src += &Ctrl::wgsl();
    src += &S::wgsl();
    src += &StepRng::wgsl();
    src += &unpack_scalars::<S>();
    src += COMMON;
    src += DTYPE;
    let k = slots.len() as u32;
    let sr = storage.stochastic;
    if storage.uses_master() {
        // The optimizer updates the f32 master copy; each store rounds it into the param.
        src += &format!(
            "@group(0) @binding(3) var<storage, read_write> param: {};
             @group(0) @binding({}) var<storage, read_write> master: array<vec4<f32>>;
             fn load_param(i: u32) -> vec4<f32> {{ return master[i]; }}
             fn store_param(i: u32, v: vec4<f32>) {{ master[i] = v; {} }}
",
            array_of(storage.param),
            5 + k,
            narrow("param", storage.param, sr, 0)
        );
    } else {
        src += &storage_binding(3, "param", storage.param, true, sr, 0);
        if storage.master_binding {
            src += &format!(
                "@group(0) @binding({}) var<storage, read_write> master: array<vec4<f32>>;
",
                5 + k
            );
        }
    }
    src += &storage_binding(4, "grad", storage.param, false, false, 0);
    if storage.q8 == 0 {
        for (j, slot) in slots.iter().enumerate() {
            src += &storage_binding(5 + j as u32, slot, storage.state, true, sr, 1 + j);
        }
    }
    let rng = 5 + k + storage.master_binding as u32;
    src += &format!(
        "@group(0) @binding({rng}) var<uniform> rng: StepRng;
"
    );
    if storage.q8 != 0 {
        src += &blockwise_prologue(slots, storage.q8, rng + 1);
    }
    if sums > 0 {
        src += &tensor_sums_prologue(rng + 1, sums);
    }
    src += family;
    src
}

/// With [`crate::OptimizerConfig::TENSOR_SUMS`] = `k` > 0: the table and sums bindings (after
/// the random key), `accumulate(k, v)` (the four lanes of `v` that lie in the tensor, added
/// up, as this thread's part of sum `k`), the first pass's entry point `main_sums` (the update,
/// then each granule's sums in a fixed order, see `src/optim/engine/tensor_sums.rs`) and
/// `tensor_sum(i, k)` (the tensor's sum `k`, for the second pass).
fn tensor_sums_prologue(binding: u32, k: u32) -> String {
    format!(
        "@group(0) @binding({binding}) var<storage, read> tsum_table: array<u32>;
@group(0) @binding({}) var<storage, read_write> tsums: array<f32>;
const TENSOR_SUMS: u32 = {k}u;
var<workgroup> granule_parts: array<vec4<f32>, 256>;
var<private> contrib: vec4<f32>;
var<private> lane_mask: vec4<bool>;

fn accumulate(k: u32, v: vec4<f32>) {{
    let w = select(vec4<f32>(0.0), v, lane_mask);
    contrib[k] = ((w.x + w.y) + w.z) + w.w;
}}

fn tensor_sum(i: u32, k: u32) -> f32 {{
    return tsums[tsum_table[1] + tsum_table[2u + 2u * (i / 16u)] * TENSOR_SUMS + k];
}}

@compute @workgroup_size(256)
fn main_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {{
    let i = vec_index(wid, nwg, lid);
    let n = arrayLength(&param);
    let raw = begin(i, n);
    let s = unpack_scalars(raw);
    if (L1) {{
        l1_coef = raw[3].w;
        l1_at = i;
    }}
    let live = i < n && !step_skipped();
    if (live) {{
        let valid = tsum_table[3u + 2u * (i / 16u)];
        let lane0 = (i % 16u) * 4u;
        lane_mask = vec4<u32>(lane0, lane0 + 1u, lane0 + 2u, lane0 + 3u) < vec4<u32>(valid);
        update(i, s);
    }}
    granule_parts[lid] = select(vec4<f32>(0.0), contrib, live);
    workgroupBarrier();
    if (live && lid % 16u == 0u) {{
        var acc = vec4<f32>(0.0);
        for (var t = 0u; t < 16u; t = t + 1u) {{
            acc = acc + granule_parts[lid + t];
        }}
        let g = tsum_table[0] + i / 16u;
        for (var k = 0u; k < TENSOR_SUMS; k = k + 1u) {{
            tsums[g * TENSOR_SUMS + k] = acc[k];
        }}
    }}
}}
",
        binding + 1
    )
}

/// With 8-bit blockwise state (`q8`: the quantized slots, bit `k` for slot `k`): each slot's
/// binding as words (`array<u32>`), accessors that read and write one thread's cached values,
/// the block table at `binding`, and the entry point `main_q8`, which runs the optimizer's
/// `update` on one 256-element block per 64 threads: dequantize, update, reduce the block's new
/// absmax in workgroup memory, requantize (see `shaders/blockwise.wgsl` and
/// `src/optim/engine/blockwise.rs` for the table).
fn blockwise_prologue(slots: &[&str], q8: u8, binding: u32) -> String {
    let mut src = format!(
        "@group(0) @binding({binding}) var<storage, read> qtab: array<u32>;
const QSLOTS: u32 = {}u;
",
        slots.len()
    );
    src += BLOCKWISE;
    let (mut load, mut reduce, mut store) = (String::new(), String::new(), String::new());
    for (k, slot) in slots.iter().enumerate() {
        src += &format!(
            "var<private> q_old_{slot}: vec4<f32>;
var<private> q_new_{slot}: vec4<f32>;
fn load_{slot}(i: u32) -> vec4<f32> {{ return q_old_{slot}; }}
fn store_{slot}(i: u32, v: vec4<f32>) {{ q_new_{slot} = v; }}
"
        );
        if q8 & (1 << k) == 0 {
            continue;
        }
        src += &format!(
            "@group(0) @binding({}) var<storage, read_write> {slot}: array<u32>;
",
            5 + k
        );
        load += &format!(
            "        if (quant) {{
            q_old_{slot} = q_dequant({k}u, {slot}[sbase + t], bitcast<f32>({slot}[amax_at]));
        }} else {{
            let b = sbase + 4u * t;
            q_old_{slot} = bitcast<vec4<f32>>(vec4<u32>({slot}[b], {slot}[b + 1u], {slot}[b + 2u], {slot}[b + 3u]));
        }}
        q_new_{slot} = q_old_{slot};
"
        );
        reduce += &format!(
            "    m[{k}] = q_block_max(q_new_{slot}, lanes);
"
        );
        store += &format!(
            "        if (quant) {{
            {slot}[sbase + t] = q_quant({k}u, q_new_{slot}, amax[{k}], lanes);
            if (t == 0u) {{
                {slot}[amax_at] = bitcast<u32>(amax[{k}]);
            }}
        }} else {{
            let b = sbase + 4u * t;
            let w = bitcast<vec4<u32>>(q_new_{slot});
            {slot}[b] = w.x;
            {slot}[b + 1u] = w.y;
            {slot}[b + 2u] = w.z;
            {slot}[b + 3u] = w.w;
        }}
"
        );
    }
    src += &format!(
        "
@compute @workgroup_size(256)
fn main_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {{
    let blk = q_begin(wid, nwg, lid);
    let t = lid % 64u;
    let start = blk.x;
    let nelem = blk.y;
    let amax_at = blk.z;
    let sbase = blk.w;
    let i = start + t;
    let n = arrayLength(&param);
    let raw = begin(i, n);
    let s = unpack_scalars(raw);
    if (L1) {{
        l1_coef = raw[3].w;
        l1_at = i;
    }}
    let live = t * 4u < nelem && !step_skipped();
    let quant = amax_at != Q_DENSE;
    let lanes = vec4<u32>(t * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(nelem);
    workgroupBarrier();
    if (live) {{
{load}        update(i, s);
    }}
    var m = vec4<f32>(0.0);
{reduce}    let amax = q_reduce(select(vec4<f32>(0.0), m, live), lid);
    if (live) {{
{store}    }}
}}
"
    );
    src
}

/// The WGSL helpers of 8-bit blockwise state: the maps in workgroup memory, dequantize, the
/// block's absmax reduction, nearest-code quantization.
const BLOCKWISE: &str = include_str!("../../shaders/blockwise.wgsl");
