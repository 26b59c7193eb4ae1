#!/usr/bin/env python3
"""Record bitsandbytes 8-bit blockwise optimizer trajectories for the wgpu-optim test-suite.

The reference is bitsandbytes' CPU backend (``bitsandbytes.optim.*8bit``, which steps through
``torch.ops.bitsandbytes.optimizer_update_8bit_blockwise`` for tensors of at least
``min_8bit_size`` elements and ``optimizer_update_32bit`` below it). Per tensor and step the
8-bit path does::

    s = dequantize_blockwise(codes, absmax, qmap)     # s[i] = qmap[codes[i]] * absmax[i // 256]
    <the optimizer's f32 update of s and of the parameter, using the updated s>
    codes, absmax = quantize_blockwise(s, qmap)       # absmax = max |s| of each 256-element block

For each case the script creates three float32 CPU tensors ``w`` (4096 elements, 8-bit state),
``big`` (5000, 8-bit state, last block partial) and ``b`` (300, below ``min_8bit_size`` = 4096,
so 32-bit state) from ``randn``, runs 5 steps with fresh ``randn * grad_scale`` gradients and
records the gradients, the parameters after every step and the final state: for 8-bit state its
codes, absmax (one per 256-element block) and the 256-entry map it was quantized with, for
32-bit state its values. State keys, optimizer and option names are wgpu-optim's (torch.optim's).

JSON layout::

    {"bitsandbytes_version", "torch_version", "cpu_capability", "generated_by",
     "maps": {"signed": [256 u32], "unsigned": [256 u32]},   # create_dynamic_map bit patterns
     "unsupported": [{"bnb_class", "error"}],                # classes that fail on CPU
     "cases": [{"name", "optimizer", "bnb_class", "config", "seed", "grad_scale", "notes",
                "tensors": [[name, len]], "init": {name: [f32]},
                "steps": [{"grads": {name: [f32]}, "params": {name: [f32]}}],
                "final_state": {name: {key: {"codes": [u8], "absmax": [f32], "qmap": [u32]}
                                            | {"values": [f32]}}},
                "torch_32bit_check": {...},   # the 32-bit tensor against torch.optim
                "perturbation": {...}}]}

With ``--final-params-only`` only the last step has ``params`` (the default file records
every step's, about 7 MB).

Floats are float32 values written in their shortest round-tripping decimal form (parse as
f64, round to f32: the value is exact; the script checks this for every float it writes).
``maps``/``qmap`` entries are the f32 bit patterns (``np.float32(x).view(np.uint32)``).

``perturbation``: the case rerun with every gradient multiplied elementwise by
``1 + 1e-6 * randn`` (a fixed seed per case): the largest absolute and relative difference of
the final parameters and the fraction of equal final codes, a measure of how far
bitsandbytes' own result moves under perturbations of the order of f32 rounding.

bitsandbytes 0.50's 8-bit optimizers are always blockwise (blocksize 256) and have neither
``block_wise`` nor ``percentile_clipping`` arguments (no clipping: the kernel gets
``gnorm_scale = 1``); ``min_8bit_size`` is passed explicitly.

Quantizers. bitsandbytes has two kernels for the requantization (``quantize_blockwise``) on
CPU, and they do not agree on every code:

* ``native`` (the default): its C++ CPU kernel (``quantize_cpu_impl`` in csrc/cpu_ops.cpp),
  which is what ``bnb.optim.*8bit`` runs on CPU. It is not a nearest-code search but a table of
  65536 bins over [-1, 1], each holding the code nearest to the bin's value; where codes are
  closer together than a bin (values far below the block's absmax) it gives the bin's code.
* ``nearest``: its device-independent kernel (the ``default`` backend of
  ``bitsandbytes::quantize_blockwise``, ``bucketize`` over the midpoints between codes), the
  nearest code as its CUDA kernels compute it. With ``--quantizer nearest`` the script runs the
  same optimizer (the CPU update, ``_optimizer_update_8bit_blockwise_cpu``) with that kernel for
  the requantization, and writes only what differs from the native file: per case its seed, the
  last step's parameters, the final state and the perturbation measure. Init and gradients are
  the native file's (same seeds); the test checks the seeds.

Run (needs ``pip install torch bitsandbytes numpy``; bitsandbytes' 8-bit optimizers run on
CPU)::

    python3 tools/bnb_blockwise.py                       # tests/data/bnb_blockwise.json
    python3 tools/bnb_blockwise.py --quantizer nearest   # tests/data/bnb_blockwise_nearest.json
    python3 tools/bnb_blockwise.py -o out.json

Deterministic: each case seeds ``torch.manual_seed`` with its own seed; single-threaded torch.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402

NUM_STEPS = 5
TENSOR_SHAPES = [("w", 4096), ("big", 5000), ("b", 300)]
MIN_8BIT_SIZE = 4096
BLOCKSIZE = 256
BASE_SEED = 20261202
PERTURB_SEED = 77001
PERTURB_REL = 1e-6

# (case name, our optimizer, bnb class, bnb kwargs, our config, bnb state -> our key, grad
# scale, notes on what bitsandbytes computes where it differs from torch.optim)
CASES = [
    ("adamw8bit", "AdamW", "AdamW8bit",
     dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
     dict(lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01),
     {"state1": "exp_avg", "state2": "exp_avg_sq"}, 1.0,
     "8-bit: exp_avg with the signed map (qmap1 'dynamic'), exp_avg_sq with the unsigned map "
     "(qmap2 'udynamic'); the update uses the f32 state before requantization: "
     "p *= 1 - lr*wd; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps) (torch's AdamW "
     "formula). 32-bit path (numel < min_8bit_size): p += -lr*sqrt(1-b2^t)/(1-b1^t) * "
     "m/(sqrt(v) + eps*sqrt(1-b2^t)) (same maths, other rounding)."),
    ("adam8bit", "Adam", "Adam8bit",
     dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
     dict(lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0),
     {"state1": "exp_avg", "state2": "exp_avg_sq"}, 1.0,
     "Same kernel as AdamW8bit (optimizer_name 'adam'): a nonzero weight_decay would be "
     "decoupled (p *= 1 - lr*wd), unlike torch.optim.Adam's L2 term; with weight_decay=0 it "
     "is torch's Adam. Maps as AdamW8bit (state1 signed, state2 unsigned)."),
    ("sgd8bit", "SGD", "SGD8bit",
     dict(lr=0.01, momentum=0.9, weight_decay=0.0),
     dict(lr=0.01, momentum=0.9, weight_decay=0.0),
     {"state1": "momentum_buffer"}, 1.0,
     "optimizer_name 'momentum': g += wd*p; buf = g at step 1, else buf = momentum*buf + g; "
     "p -= lr*buf (torch's SGD with dampening=0, nesterov=False; momentum=0, dampening and "
     "nesterov are not supported by bnb). momentum_buffer uses the signed map."),
    ("rmsprop8bit", "RMSprop", "RMSprop8bit",
     dict(lr=1e-3, alpha=0.99, eps=1e-8),
     dict(lr=1e-3, alpha=0.99, eps=1e-8),
     {"state1": "square_avg"}, 1.0,
     "optimizer_name 'rmsprop': g += wd*p; v = alpha*v + (1-alpha)*g^2; p -= lr*g/(sqrt(v) + "
     "eps) (torch's non-centered RMSprop without momentum; bnb's 8-bit kernel ignores "
     "momentum and rejects centered). square_avg is non-negative but uses the SIGNED map "
     "(Optimizer1State always takes 'dynamic' for qmap1), so only codes 127..255 are used."),
    ("adagrad8bit", "Adagrad", "Adagrad8bit",
     dict(lr=0.01, eps=1e-10),
     dict(lr=0.01, eps=1e-10),
     {"state1": "sum"}, 1.0,
     "optimizer_name 'adagrad': g += wd*p; sum += g^2; p -= lr*g/(sqrt(sum) + eps) (torch's "
     "Adagrad with lr_decay=0 and initial_accumulator_value=0, the only values bnb accepts). "
     "sum uses the SIGNED map, as square_avg of RMSprop8bit."),
    ("lion8bit", "Lion", "Lion8bit",
     dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01),
     dict(lr=1e-4, betas=[0.9, 0.99], weight_decay=0.01),
     {"state1": "exp_avg"}, 1.0,
     "optimizer_name 'lion': p *= 1 - lr*wd; p -= lr*sign(b1*m + (1-b1)*g); m = b2*m + "
     "(1-b2)*g (lion-pytorch's update with decoupled decay). exp_avg uses the signed map."),
]


# ---------------------------------------------------------------------------- f32 output

def f32(x: float) -> float:
    """The double whose repr is the shortest decimal that round-trips the f32 value of x."""
    v = float(str(np.float32(x)))
    if not math.isfinite(v) or np.float32(v) != np.float32(x):
        raise SystemExit(f"{x!r} does not round-trip as f32")
    return v


def f32_list(t: torch.Tensor) -> list[float]:
    """f32 values as doubles whose repr is numpy's shortest round-tripping f32 form; checked:
    parsing each as f64 and rounding to f32 gives the value back bit for bit."""
    a = t.detach().reshape(-1).to(torch.float32).numpy()
    out = [float(str(x)) for x in a]
    back = np.asarray(out, dtype=np.float64).astype(np.float32)
    if not np.array_equal(back.view(np.uint32), a.view(np.uint32)) or not np.isfinite(a).all():
        raise SystemExit("float32 values do not round-trip")
    return out


def u32_bits(t: torch.Tensor) -> list[int]:
    return t.detach().reshape(-1).to(torch.float32).numpy().view(np.uint32).tolist()


# ---------------------------------------------------------------------------- quantizer

def use_nearest_quantizer() -> None:
    """Make bitsandbytes' CPU 8-bit update requantize with its device-independent kernel
    (nearest code) instead of its native CPU table."""
    import bitsandbytes.backends.cpu.ops as cpu_ops

    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    kernel = torch.ops.bitsandbytes.quantize_blockwise.default

    def requantize(a_fp32, code, absmax_out, out_uint8, blocksize):
        out, absmax = kernel.redispatch(keys, a_fp32, code, blocksize)
        out_uint8.copy_(out)
        absmax_out.copy_(absmax)

    if not hasattr(cpu_ops, "_quant_blockwise_fp32_direct"):
        raise SystemExit("this bitsandbytes has no _quant_blockwise_fp32_direct to replace")
    cpu_ops._quant_blockwise_fp32_direct = requantize
    # Check: the replaced kernel is the nearest code.
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(1000, generator=gen) * 1e-2
    code = F.create_dynamic_map(signed=True)
    q = torch.empty(1000, dtype=torch.uint8)
    am = torch.empty(4, dtype=torch.float32)
    requantize(a, code, am, q, BLOCKSIZE)
    scaled = torch.cat([a[i * 256:(i + 1) * 256] * (1.0 / am[i]) for i in range(3)]
                       + [a[768:] / am[3]])
    near = (scaled.unsqueeze(-1) - code).abs().argmin(dim=-1).to(torch.uint8)
    if not torch.equal(near, q):
        raise SystemExit("the default quantize_blockwise is not the nearest code here")


def results_only(case: dict) -> dict:
    """What a ``--quantizer nearest`` file keeps of a case: the rest is the native file's."""
    return {"name": case["name"], "seed": case["seed"],
            "last_params": case["steps"][-1]["params"],
            "final_state": case["final_state"], "perturbation": case["perturbation"]}


# ---------------------------------------------------------------------------- runs

def make_data(seed: int, grad_scale: float):
    torch.manual_seed(seed)
    init = [torch.randn(n, dtype=torch.float32) for _, n in TENSOR_SHAPES]
    grads = []
    for _ in range(NUM_STEPS):
        gs = []
        for _, n in TENSOR_SHAPES:
            g = torch.randn(n, dtype=torch.float32)
            if grad_scale != 1.0:
                g = g * grad_scale
            gs.append(g)
        grads.append(gs)
    return init, grads


def run_bnb(cls_name: str, kwargs: dict, init, grads):
    """Step bitsandbytes; (params after each step, the optimizer, its parameters)."""
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(bnb.optim, cls_name)(params, min_8bit_size=MIN_8BIT_SIZE, **kwargs)
    history = []
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history, opt, params


def final_state(opt, params, state_map: dict) -> dict:
    out = {}
    for (name, _), p in zip(TENSOR_SHAPES, params):
        st = opt.state[p]
        entry = {}
        for bnb_key, key in state_map.items():
            s = st[bnb_key]
            if s.dtype == torch.uint8:
                i = bnb_key[-1]
                entry[key] = {"codes": s.reshape(-1).tolist(),
                              "absmax": f32_list(st[f"absmax{i}"]),
                              "qmap": u32_bits(st[f"qmap{i}"])}
            else:
                entry[key] = {"values": f32_list(s)}
        out[name] = entry
    return out


def torch_32bit_reference(optimizer: str, config: dict, init: torch.Tensor, grads) -> torch.Tensor:
    """The parameter torch.optim (or, for Lion, lion-pytorch's formula) gives for one tensor."""
    p = torch.nn.Parameter(init.clone())
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
    if optimizer == "Lion":
        lr, (b1, b2), wd = kw["lr"], kw["betas"], kw["weight_decay"]
        m = torch.zeros_like(p)
        with torch.no_grad():
            for g in grads:
                p.mul_(1 - lr * wd)
                p.add_(m.mul(b1).add(g, alpha=1 - b1).sign_(), alpha=-lr)
                m.mul_(b2).add_(g, alpha=1 - b2)
        return p.detach()
    opt = getattr(torch.optim, optimizer)([p], foreach=False, **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def run_case(index: int, case) -> dict:
    name, optimizer, cls_name, kwargs, config, state_map, grad_scale, notes = case
    seed = BASE_SEED + index
    init, grads = make_data(seed, grad_scale)
    history, opt, params = run_bnb(cls_name, kwargs, init, grads)
    group = opt.param_groups[0]
    for k, v in kwargs.items():
        if k in ("momentum", "alpha"):
            continue  # bnb keeps these inside betas
        got = tuple(group[k]) if isinstance(v, tuple) else group[k]
        if got != v:
            raise SystemExit(f"{name}: bnb option {k}={got!r}, expected {v!r}")
    for (tname, n), p in zip(TENSOR_SHAPES, params):
        is8 = opt.state[p]["state1"].dtype == torch.uint8
        if is8 != (n >= MIN_8BIT_SIZE):
            raise SystemExit(f"{name}: {tname} has {'8' if is8 else '32'}-bit state")
    state = final_state(opt, params, state_map)

    # The 32-bit-state tensor against torch.optim.
    bi = [i for i, (_, n) in enumerate(TENSOR_SHAPES) if n < MIN_8BIT_SIZE][0]
    ref = torch_32bit_reference(optimizer, config, init[bi], [gs[bi] for gs in grads])
    got = history[-1][bi]
    d = (got - ref).abs()
    check = {"tensor": TENSOR_SHAPES[bi][0], "torch_class": optimizer if optimizer != "Lion"
             else "lion-pytorch formula", "bitwise_equal": bool(torch.equal(got, ref)),
             "max_abs_diff": f32(d.max().item()),
             "max_rel_diff": f32((d / ref.abs().clamp_min(1e-30)).max().item())}

    # Perturbation: every gradient times (1 + 1e-6 * randn), fixed seed.
    gen = torch.Generator().manual_seed(PERTURB_SEED + index)
    pgrads = [[g * (1 + PERTURB_REL * torch.randn(g.shape, generator=gen)) for g in gs]
              for gs in grads]
    phist, popt, pparams = run_bnb(cls_name, kwargs, init, pgrads)
    max_abs = max_rel = 0.0
    for a, b in zip(history[-1], phist[-1]):
        d = (a.double() - b.double()).abs()
        max_abs = max(max_abs, d.max().item())
        max_rel = max(max_rel, (d / a.double().abs().clamp_min(1e-30)).max().item())
    equal = total = 0
    for p, q in zip(params, pparams):
        for k in state_map:
            s, t = opt.state[p][k], popt.state[q][k]
            if s.dtype == torch.uint8:
                equal += int((s == t).sum())
                total += s.numel()
    pert = {"seed": PERTURB_SEED + index, "relative_scale": PERTURB_REL,
            "max_abs_param_diff": max_abs, "max_rel_param_diff": max_rel,
            "code_agreement": equal / total}

    return {
        "name": name,
        "optimizer": optimizer,
        "bnb_class": cls_name,
        "config": config,
        "seed": seed,
        "grad_scale": grad_scale,
        "notes": notes,
        "tensors": [[n, s] for n, s in TENSOR_SHAPES],
        "init": {n: f32_list(t) for (n, _), t in zip(TENSOR_SHAPES, init)},
        "steps": [{"grads": {n: f32_list(g) for (n, _), g in zip(TENSOR_SHAPES, gs)},
                   "params": {n: f32_list(p) for (n, _), p in zip(TENSOR_SHAPES, ps)}}
                  for gs, ps in zip(grads, history)],
        "final_state": state,
        "torch_32bit_check": check,
        "perturbation": pert,
    }


def main() -> None:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", help="default: tests/data/bnb_blockwise.json, or "
                    "tests/data/bnb_blockwise_nearest.json with --quantizer nearest")
    ap.add_argument("--quantizer", choices=["native", "nearest"], default="native",
                    help="bitsandbytes' CPU table (native) or its nearest-code kernel")
    ap.add_argument("--final-params-only", action="store_true",
                    help="record the parameters of the last step only (about 40%% smaller)")
    args = ap.parse_args()
    nearest = args.quantizer == "nearest"
    if args.output is None:
        file = "bnb_blockwise_nearest.json" if nearest else "bnb_blockwise.json"
        args.output = os.path.join(repo_root, "tests", "data", file)
    if nearest:
        use_nearest_quantizer()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    cases, unsupported = [], []
    for index, case in enumerate(CASES):
        try:
            cases.append(run_case(index, case))
            if args.final_params_only:
                for st in cases[-1]["steps"][:-1]:
                    del st["params"]
        except (RuntimeError, ValueError, NotImplementedError) as e:
            unsupported.append({"bnb_class": case[2], "error": f"{type(e).__name__}: {e}"})
            print(f"{case[0]}: unsupported on CPU ({e})")
    doc = {
        "bitsandbytes_version": importlib.metadata.version("bitsandbytes"),
        "torch_version": torch.__version__.split("+")[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "generated_by": "python3 tools/bnb_blockwise.py"
                        + (" --quantizer nearest" if nearest else "")
                        + (" --final-params-only" if args.final_params_only else ""),
        "quantizer": args.quantizer,
        "blocksize": BLOCKSIZE,
        "min_8bit_size": MIN_8BIT_SIZE,
        "maps": {"signed": u32_bits(F.create_dynamic_map(signed=True)),
                 "unsigned": u32_bits(F.create_dynamic_map(signed=False))},
        "unsupported": unsupported,
        "cases": [results_only(c) for c in cases] if nearest else cases,
    }
    tmp = f"{args.output}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    os.replace(tmp, args.output)
    print(f"wrote {len(cases)} cases to {args.output} ({os.path.getsize(args.output)} bytes)")
    print(f"{'case':<14}{'code agreement':>16}{'max abs dp':>14}{'max rel dp':>14}"
          f"{'b vs torch (abs)':>18}")
    for c in cases:
        p, t = c["perturbation"], c["torch_32bit_check"]
        print(f"{c['name']:<14}{p['code_agreement']:>16.6f}{p['max_abs_param_diff']:>14.3e}"
              f"{p['max_rel_param_diff']:>14.3e}{t['max_abs_diff']:>18.3e}")


if __name__ == "__main__":
    main()
