// Tiny dense-network kernels for the examples: forward, backward and losses over a batch,
// reading parameters and writing gradients straight in the wgpu-optim arena, in f32 or (with
// BF16) in bf16, two elements per u32 word as wgpu-optim stores them.

override BF16: bool = false;

struct Dims {
    batch: u32,   // rows in this batch
    inp: u32,     // input features
    out: u32,     // output features
    flags: u32,   // 1: ReLU on the output (forward) / ReLU mask on the input (backward)
                  // 2: input rows through idx[offset + b]
    offset: u32,  // first idx entry of the batch
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // input rows (or activations)
@group(0) @binding(2) var<storage, read> w: array<u32>;          // [out x inp], f32 or bf16 bits
@group(0) @binding(3) var<storage, read> bias: array<u32>;       // [out]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // [batch x out]
@group(0) @binding(5) var<storage, read> idx: array<u32>;        // sample order
@group(0) @binding(6) var<storage, read> dy: array<f32>;         // [batch x out] upstream grad
@group(0) @binding(7) var<storage, read_write> gw: array<u32>;   // [out x inp] weight grad
@group(0) @binding(8) var<storage, read_write> gb: array<u32>;   // [out] bias grad
@group(0) @binding(9) var<storage, read_write> dx: array<f32>;   // [batch x inp] input grad
@group(0) @binding(10) var<storage, read> logits: array<f32>;    // [batch x out]
@group(0) @binding(11) var<storage, read> targets: array<f32>;    // label (class) or value per sample
@group(0) @binding(12) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(13) var<storage, read_write> acc: array<f32>; // [loss sum, correct, count]
@group(0) @binding(14) var<storage, read_write> losses: array<f32>; // [batch] loss, [batch..2b] correct
@group(0) @binding(15) var<storage, read_write> loss_log: array<f32>;    // mean loss of each step

// Element i of a parameter buffer's words.
fn element(word_at_i: u32, word_at_half: u32, i: u32) -> f32 {
    if (BF16) {
        return bitcast<f32>(select(word_at_half << 16u, word_at_half & 0xffff0000u, (i & 1u) == 1u));
    }
    return bitcast<f32>(word_at_i);
}

fn load_w(i: u32) -> f32 {
    if (BF16) {
        return element(0u, w[i >> 1u], i);
    }
    return bitcast<f32>(w[i]);
}

fn load_bias(i: u32) -> f32 {
    if (BF16) {
        return element(0u, bias[i >> 1u], i);
    }
    return bitcast<f32>(bias[i]);
}

// bf16 bits of x, to nearest even.
fn bf16(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

fn row(b: u32) -> u32 {
    if ((d.flags & 2u) != 0u) {
        return idx[d.offset + b];
    }
    return b;
}

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= d.batch * d.out) {
        return;
    }
    let b = t / d.out;
    let j = t % d.out;
    let r = row(b);
    var s = load_bias(j);
    for (var k = 0u; k < d.inp; k = k + 1u) {
        s = s + x[r * d.inp + k] * load_w(j * d.inp + k);
    }
    if ((d.flags & 1u) != 0u) {
        s = max(s, 0.0);
    }
    y[t] = s;
}

// dW[j,k] = sum_b dy[b,j] x[b,k];  db[j] = sum_b dy[b,j]
fn grad_w(t: u32) -> f32 {
    let j = t / d.inp;
    let k = t % d.inp;
    var s = 0.0;
    for (var b = 0u; b < d.batch; b = b + 1u) {
        s = s + dy[b * d.out + j] * x[row(b) * d.inp + k];
    }
    return s;
}

fn grad_b(j: u32) -> f32 {
    var s = 0.0;
    for (var b = 0u; b < d.batch; b = b + 1u) {
        s = s + dy[b * d.out + j];
    }
    return s;
}

// One thread per gradient element, or with BF16 per pair of elements (one u32 word): no two
// threads write halves of one word.
@compute @workgroup_size(64)
fn backward_weights(@builtin(global_invocation_id) gid: vec3<u32>) {
    let nw = d.out * d.inp;
    if (!BF16) {
        let t = gid.x;
        if (t < nw) {
            gw[t] = bitcast<u32>(grad_w(t));
        } else if (t < nw + d.out) {
            gb[t - nw] = bitcast<u32>(grad_b(t - nw));
        }
        return;
    }
    // Words of the weight gradient, then of the bias gradient (each tensor starts a word).
    let wwords = (nw + 1u) / 2u;
    let t = gid.x;
    if (t < wwords) {
        let e = 2u * t;
        var hi = 0u;
        if (e + 1u < nw) {
            hi = bf16(grad_w(e + 1u));
        }
        gw[t] = bf16(grad_w(e)) | (hi << 16u);
    } else if (t < wwords + (d.out + 1u) / 2u) {
        let j = 2u * (t - wwords);
        var hi = 0u;
        if (j + 1u < d.out) {
            hi = bf16(grad_b(j + 1u));
        }
        gb[t - wwords] = bf16(grad_b(j)) | (hi << 16u);
    }
}

// dx[b,k] = sum_j dy[b,j] W[j,k], masked by ReLU'(x) when flag 1 (x holds the activations).
@compute @workgroup_size(64)
fn backward_input(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= d.batch * d.inp) {
        return;
    }
    let b = t / d.inp;
    let k = t % d.inp;
    var s = 0.0;
    for (var j = 0u; j < d.out; j = j + 1u) {
        s = s + dy[b * d.out + j] * load_w(j * d.inp + k);
    }
    if ((d.flags & 1u) != 0u && x[t] <= 0.0) {
        s = 0.0;
    }
    dx[t] = s;
}

// Mean softmax cross-entropy over the batch: per-sample loss and correctness, and d/dlogits.
@compute @workgroup_size(64)
fn softmax_xent(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= d.batch) {
        return;
    }
    let c = d.out;
    let label = u32(targets[row(b)]);
    var m = logits[b * c];
    var best = 0u;
    for (var j = 1u; j < c; j = j + 1u) {
        if (logits[b * c + j] > m) {
            m = logits[b * c + j];
            best = j;
        }
    }
    var s = 0.0;
    for (var j = 0u; j < c; j = j + 1u) {
        s = s + exp(logits[b * c + j] - m);
    }
    for (var j = 0u; j < c; j = j + 1u) {
        let p = exp(logits[b * c + j] - m) / s;
        dlogits[b * c + j] = (p - select(0.0, 1.0, j == label)) / f32(d.batch);
    }
    losses[b] = log(s) + m - logits[b * c + label];
    losses[d.batch + b] = select(0.0, 1.0, best == label);
}

// Mean squared error of a single output: loss (p - t)^2, gradient 2 (p - t) / batch.
@compute @workgroup_size(64)
fn mse(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= d.batch) {
        return;
    }
    let e = logits[b] - targets[row(b)];
    dlogits[b] = 2.0 * e / f32(d.batch);
    losses[b] = e * e;
    losses[d.batch + b] = 0.0;
}

// One thread: add this batch's loss sum, correct count and size to the running totals.
@compute @workgroup_size(1)
fn accumulate() {
    var l = 0.0;
    var c = 0.0;
    for (var b = 0u; b < d.batch; b = b + 1u) {
        l = l + losses[b];
        c = c + losses[d.batch + b];
    }
    acc[0] = acc[0] + l;
    acc[1] = acc[1] + c;
    acc[2] = acc[2] + f32(d.batch);
    // flag 4: also keep this batch's mean loss in log[_p0] (a loss curve read back at the end)
    if ((d.flags & 4u) != 0u) {
        loss_log[d._p0] = l / f32(d.batch);
    }
}
