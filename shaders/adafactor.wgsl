// Adafactor (Shazeer & Stern 2018) as torch.optim.Adafactor steps one tensor, t the step:
//   w = t^beta2_decay, rho = min(lr, 1 / sqrt(t))
//   alpha = max(eps2, ||p|| / sqrt(numel)) * rho                 (p before the decay)
//   p = p * (1 - lr * weight_decay)
//   rank >= 2: row_var = lerp(row_var, mean(g^2, last dim), w)
//              col_var = lerp(col_var, mean(g^2, second-last dim), w)
//              v = row_var * col_var / max(mean(row_var), eps1)
//   vectors:   variance = lerp(variance, g^2, w); v = variance
//   u = g / sqrt(max(v, eps1^2))
//   p = p - (alpha / max(1, ||u|| / (sqrt(numel) * d))) * u
// The row and column means come from the passes of src/optim/engine/factored.rs (main_partials,
// main_factor, main_rowmean, below); then the update runs twice (OptimizerConfig::TENSOR_SUMS
// = 2): MODE 0 updates a vector's variance and adds up p * p and u * u per tensor, MODE 2 reads
// the sums and writes the parameter. Both compute u from the state as stored.

override MODE: u32 = 0u;

const KIND_MATRIX: u32 = 2u;

// torch.lerp(start, end, w) for one value (as lerp4).
fn lerp1(start: f32, end: f32, w: f32) -> f32 {
    if (abs(w) < 0.5) {
        return fma(w, end - start, start);
    }
    return fma(w - 1.0, end - start, end);
}

// Where the factored tail of this chunk's table starts (after its granules' entries).
fn fac_base() -> u32 {
    return 2u + 2u * (arrayLength(&param) / 16u);
}

// The first word of tensor t's info.
fn fac_info(t: u32) -> u32 {
    return tsum_table[fac_base()] + 8u * t;
}

// u = g / sqrt(max(v, eps1^2)) for the four elements of vec4 i (g prepared); with `update_var`,
// a vector's variance moves towards g^2 first. Lanes past the tensor's end are left alone.
fn direction(i: u32, g: vec4<f32>, s: Scalars, update_var: bool) -> vec4<f32> {
    let f = fac_base();
    let gr = i / 16u;
    let t = tsum_table[2u + 2u * gr];
    let valid = tsum_table[3u + 2u * gr];
    let lane0 = (i % 16u) * 4u;
    let local = tsum_table[f + 8u + gr] * 64u + lane0;
    let ib = fac_info(t);
    let kind = tsum_table[ib];
    let rows = tsum_table[ib + 1u];
    let cols = tsum_table[ib + 2u];
    let a0 = tsum_table[ib + 3u];
    let a1 = tsum_table[ib + 4u];
    let a2 = tsum_table[ib + 5u];
    var v = vec4<f32>(1.0);
    if (kind == KIND_MATRIX) {
        // Element j = local + l is at (matrix b, row r, column c): divide once per vec4, then
        // step along the row (integer division is slow on CPU drivers).
        let per = rows * cols;
        var b = local / per;
        var r = (local - b * per) / cols;
        var c = local - b * per - r * cols;
        for (var l = 0u; l < 4u && lane0 + l < valid; l = l + 1u) {
            v[l] = (tsums[a0 + b * rows + r] * tsums[a1 + b * cols + c]) / tsums[a2 + b];
            c = c + 1u;
            if (c == cols) {
                c = 0u;
                r = r + 1u;
                if (r == rows) {
                    r = 0u;
                    b = b + 1u;
                }
            }
        }
    } else {
        for (var l = 0u; l < 4u && lane0 + l < valid; l = l + 1u) {
            let j = local + l;
            var x = tsums[a0 + j];
            if (update_var) {
                x = lerp1(x, g[l] * g[l], s.beta2_weight);
                tsums[a0 + j] = x;
            }
            v[l] = x;
        }
    }
    return (vec4<f32>(1.0) / sqrt(max(v, vec4<f32>(s.eps1_sq)))) * g;
}

// Called by the entry points for vec4 `i` (in bounds, step not skipped).
fn update(i: u32, s: Scalars) {
    let p = load_param(i);
    let g = prep_grad(load_grad(i));
    if (MODE == 0u) {
        let u = direction(i, g, s, true);
        accumulate(0u, p * p);
        accumulate(1u, u * u);
        return;
    }
    let u = direction(i, g, s, false);
    let t = tsum_table[2u + 2u * (i / 16u)];
    let sqrt_numel = bitcast<f32>(tsum_table[fac_info(t) + 6u]);
    let alpha = max(s.eps2, sqrt(tensor_sum(i, 0u)) / sqrt_numel) * s.rho;
    let denom = max(1.0, sqrt(tensor_sum(i, 1u)) / (sqrt_numel * s.d));
    store_param(i, add_scaled(p * s.decay, u, -(alpha / denom)));
}

fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid;
}

// One task: sum of g * g over `count` elements of this chunk from `start` by `stride`.
@compute @workgroup_size(256)
fn main_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let n = arrayLength(&param);
    let f = fac_base();
    let k = thread_index(wid, nwg, lid);
    let live = k < tsum_table[f + 1u];
    let tb = tsum_table[f + 2u] + 4u * min(k, max(tsum_table[f + 1u], 1u) - 1u);
    let start = tsum_table[tb];
    let raw = begin(start / 4u, n);
    if (L1) {
        l1_coef = raw[3].w;
    }
    if (!live || step_skipped()) {
        return;
    }
    let stride = tsum_table[tb + 1u];
    let count = tsum_table[tb + 2u];
    var acc = 0.0;
    var e = 0u;
    while (e < count) {
        // One vec4 load for the elements of a row that share it; a column's one element.
        let at = start + e * stride;
        l1_at = at / 4u;
        let g = prep_grad(load_grad(at / 4u));
        var k = at % 4u;
        loop {
            acc = fma(g[k], g[k], acc);
            e = e + 1u;
            k = k + 1u;
            if (stride != 1u || k == 4u || e == count) {
                break;
            }
        }
    }
    tsums[tsum_table[tb + 3u]] = acc;
}

// One row or column: its tasks' sums in order, the mean, and the state's step towards it.
@compute @workgroup_size(256)
fn main_factor(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let n = arrayLength(&param);
    let f = fac_base();
    let k = thread_index(wid, nwg, lid);
    _ = begin(0u, n);
    if (k >= tsum_table[f + 3u] || step_skipped()) {
        return;
    }
    let ob = tsum_table[f + 4u] + 4u * k;
    let ib = fac_info(tsum_table[ob]);
    let s = unpack_scalars(scal[tsum_table[ib + 7u]]);
    let first = tsum_table[ob + 2u];
    let word = tsum_table[ob + 3u];
    let count = word & 0x7fffffffu;
    var over = tsum_table[ib + 2u]; // a row's mean is over the columns
    if ((word >> 31u) != 0u) {
        over = tsum_table[ib + 1u];
    }
    var acc = 0.0;
    for (var j = 0u; j < count; j = j + 1u) {
        acc = acc + tsums[first + j];
    }
    let mean = acc / f32(over);
    let at = tsum_table[ob + 1u];
    tsums[at] = lerp1(tsums[at], mean, s.beta2_weight);
}

// One matrix of a batch: max(mean(row_var), eps1).
@compute @workgroup_size(256)
fn main_rowmean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let n = arrayLength(&param);
    let f = fac_base();
    let k = thread_index(wid, nwg, lid);
    _ = begin(0u, n);
    if (k >= tsum_table[f + 5u] || step_skipped()) {
        return;
    }
    let mb = tsum_table[f + 6u] + 4u * k;
    let ib = fac_info(tsum_table[mb]);
    let s = unpack_scalars(scal[tsum_table[ib + 7u]]);
    let first = tsum_table[mb + 1u];
    let rows = tsum_table[mb + 2u];
    var acc = 0.0;
    for (var r = 0u; r < rows; r = r + 1u) {
        acc = acc + tsums[first + r];
    }
    tsums[tsum_table[mb + 3u]] = max(acc / f32(rows), s.eps1);
}
