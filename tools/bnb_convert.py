#!/usr/bin/env python3
"""Convert bitsandbytes 8-bit optimizer checkpoints to and from wgpu-optim's, and write the
8-bit resume test fixture.

Commands
--------
::

    python3 tools/bnb_convert.py to-ours in.pt ours.safetensors [--min-8bit-size 4096]
    python3 tools/bnb_convert.py to-bnb ours.safetensors out.pt
    python3 tools/bnb_convert.py fixture [-o tests/data/bnb_resume]

Needs PyTorch and bitsandbytes (CPU is enough; ``pip install torch bitsandbytes``). The
safetensors format is read and written by ``tools/safetensors_io.py`` (no ``safetensors`` package needed).

The bitsandbytes side
---------------------
A ``torch.save``'d dict, as ``tools/torch_checkpoint.py`` uses for torch.optim::

    {
      "model":     {name: tensor, ...},             # the parameters, in the checkpoint's order
      "optimizer": opt.state_dict(),                # a bitsandbytes 8-bit optimizer's own format
      "optimizer_class": "AdamW8bit" | "Adam8bit" | "SGD8bit" | "RMSprop8bit" | "Adagrad8bit"
                         | "Lion8bit",              # optional on input if the groups tell it
      "min_8bit_size": int,                         # written by to-bnb; optional on input
    }

bitsandbytes keeps per parameter ``step`` (an int) and, wrapped in
``__bnb_optimizer_quant_state__``, ``state1`` (and ``state2`` for the Adams) with, for tensors
of at least ``min_8bit_size`` elements, u8 codes and ``absmax1``/``absmax2`` (one f32 per
256-element block) and ``qmap1``/``qmap2`` (the 256-entry maps); smaller tensors keep f32
``state1``/``state2``. Its groups keep ``betas`` for every optimizer (SGD: ``(momentum,
dampening)``, RMSprop: ``(alpha, momentum)``). ``to-bnb`` builds the class on the parameters,
fills its state and writes its ``state_dict()``, so ``opt.load_state_dict(ck["optimizer"])``
resumes in bitsandbytes; parameter ids are 0..n in the checkpoint's tensor order.

Our side (see ``src/checkpoint/`` and ``tools/torch_checkpoint.py``)
---------------------------------------------------------------------
safetensors, format version 1 (no checksums, as ``tools/torch_checkpoint.py`` writes):
``param.<name>`` (F32), the state under torch.optim's keys, ``state.<name>.step`` (F32
scalar); metadata ``format``, ``format_version``, ``optimizer``, ``step``, ``tensors``,
``param_groups``, ``max_grad_norm``, ``grad_norm_type``, ``skip_nonfinite``, ``grad_scaler``,
``written_by`` and ``state_format`` = ``{"kind":"blockwise8","min_size":N}``. A state of 8-bit
tensor ``<name>`` is three tensors::

    state.<name>.<key>.codes    U8   [numel]
    state.<name>.<key>.absmax   F32  [ceil(numel / 256)]
    state.<name>.<key>.qmap     F32  [256]

and of a tensor below ``min_size`` one, ``state.<name>.<key>`` (F32, the parameter's shape).
Keys: Adam(W) ``exp_avg`` (bnb state1), ``exp_avg_sq`` (state2); SGD ``momentum_buffer``;
RMSprop ``square_avg``; Adagrad ``sum``; Lion ``exp_avg``.

Hyperparameters: ``AdamW8bit`` is our ``Adam`` with ``decoupled_weight_decay`` 1; so is
``Adam8bit`` with a nonzero weight decay (bitsandbytes decays it decoupled too), with 0 it is
``decoupled_weight_decay`` 0. Options bitsandbytes' kernels do not have (amsgrad, maximize,
nesterov, dampening, RMSprop's momentum and centered, Adagrad's lr_decay and
initial_accumulator_value) are 0 on our side; a file with other values is refused.
``min_8bit_size`` is not in bitsandbytes' state_dict: ``to-ours`` takes it from
``min_8bit_size`` in the dict, else ``--min-8bit-size`` (default 4096), and checks that exactly
the tensors of at least that size have u8 state. A parameter without state (never stepped)
gets bitsandbytes' initial state (codes 0, absmax 0, f32 zeros).

``fixture``
-----------
Writes ``tests/data/bnb_resume/`` for the Rust 8-bit resume test: bitsandbytes' AdamW8bit as
case ``adamw8bit`` of ``tools/bnb_blockwise.py`` (same seed, tensors ``w`` 4096, ``big`` 5000,
``b`` 300, the same first 5 gradients) runs 5 steps, is converted with ``to-ours`` into
``adamw8bit_step5.safetensors``, then runs steps 6..10; ``adamw8bit_resume.json`` holds those
gradients, bitsandbytes' parameters after each of them and its final state (the format of
``tests/data/bnb_blockwise.json``). Self-checks: the first 5 steps give the parameters
``bnb_blockwise.py`` records for its case, the state_dict converted ``to-ours`` and back
``to-bnb`` equals the original exactly, and a fresh AdamW8bit resumed from it reproduces the
uninterrupted steps 6..10 bit for bit. Deterministic for a given torch and bitsandbytes
version and CPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import warnings
from collections import OrderedDict

import torch

import safetensors_io

warnings.filterwarnings("ignore")
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402

FORMAT = "wgpu-optim-checkpoint"
FORMAT_VERSION = "1"
BLOCKSIZE = 256
DEFAULT_MIN_8BIT_SIZE = 4096
QUANT_KEY = "__bnb_optimizer_quant_state__"

# bitsandbytes class -> (our optimizer, bnb state -> our key)
BNB_CLASSES = {
    "AdamW8bit": ("Adam", {"state1": "exp_avg", "state2": "exp_avg_sq"}),
    "Adam8bit": ("Adam", {"state1": "exp_avg", "state2": "exp_avg_sq"}),
    "SGD8bit": ("SGD", {"state1": "momentum_buffer"}),
    "RMSprop8bit": ("RMSprop", {"state1": "square_avg"}),
    "Adagrad8bit": ("Adagrad", {"state1": "sum"}),
    "Lion8bit": ("Lion", {"state1": "exp_avg"}),
}
# The maps bitsandbytes gives each state (Optimizer2State: state1 signed, state2 unsigned;
# Optimizer1State: state1 signed, whatever the optimizer).
SIGNED_QMAP = {"state1": True, "state2": False}


# ---------------------------------------------------------------------------- safetensors

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "U8": torch.uint8}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def read_safetensors(path: str):
    """(OrderedDict name -> tensor in file order; metadata dict), in this script's dtypes."""
    return safetensors_io.read_safetensors(path, DTYPES)


def write_safetensors(path: str, tensors, meta: dict) -> None:
    """Write (name, tensor) pairs in order, atomically, in this script's dtypes."""
    safetensors_io.write_safetensors(path, tensors, meta, DTYPES)


# ---------------------------------------------------------------------------- hyperparameters

def _zero(name: str, v) -> None:
    if v not in (None, 0, 0.0, False):
        raise SystemExit(f"{name} = {v!r}: bitsandbytes' 8-bit optimizers do not support it")


def our_hyperparameters(cls_name: str, g: dict) -> tuple[str, dict]:
    """A bitsandbytes group -> (our optimizer, our hyperparameters: torch's names and order,
    ``x[i]`` for tuples, flags as 0/1)."""
    kind, _ = BNB_CLASSES[cls_name]
    lr, wd, eps = float(g["lr"]), float(g["weight_decay"]), float(g.get("eps", 0.0))
    b = [float(x) for x in g["betas"]]
    if kind == "Adam":
        decoupled = 1 if cls_name == "AdamW8bit" or wd != 0.0 else 0
        return kind, {"lr": lr, "betas[0]": b[0], "betas[1]": b[1], "eps": eps,
                      "weight_decay": wd, "amsgrad": 0, "maximize": 0,
                      "decoupled_weight_decay": decoupled}
    if kind == "SGD":
        _zero("dampening", b[1])
        return kind, {"lr": lr, "momentum": b[0], "dampening": 0.0, "weight_decay": wd,
                      "nesterov": 0, "maximize": 0}
    if kind == "RMSprop":
        _zero("momentum", b[1])
        return kind, {"lr": lr, "alpha": b[0], "eps": eps, "weight_decay": wd, "momentum": 0.0,
                      "centered": 0, "maximize": 0}
    if kind == "Adagrad":
        return kind, {"lr": lr, "lr_decay": 0.0, "weight_decay": wd,
                      "initial_accumulator_value": 0.0, "eps": eps, "maximize": 0}
    if kind == "Lion":
        return kind, {"lr": lr, "betas[0]": b[0], "betas[1]": b[1], "weight_decay": wd,
                      "maximize": 0}
    raise SystemExit(f"no conversion for {cls_name}")


def bnb_class_and_kwargs(kind: str, hp: dict) -> tuple[str, dict]:
    """Our optimizer and one group's hyperparameters -> (bitsandbytes class, its kwargs)."""
    for k in ("maximize", "amsgrad", "nesterov", "centered", "dampening", "lr_decay",
              "initial_accumulator_value"):
        _zero(k, hp.get(k))
    if kind == "Adam":
        cls = "AdamW8bit" if hp.get("decoupled_weight_decay", 0) else "Adam8bit"
        if cls == "Adam8bit" and hp["weight_decay"] != 0.0:
            raise SystemExit("Adam with L2 weight decay (decoupled_weight_decay 0): "
                             "bitsandbytes only decays decoupled")
        return cls, dict(lr=hp["lr"], betas=(hp["betas[0]"], hp["betas[1]"]), eps=hp["eps"],
                         weight_decay=hp["weight_decay"])
    if kind == "SGD":
        return "SGD8bit", dict(lr=hp["lr"], momentum=hp["momentum"],
                               weight_decay=hp["weight_decay"])
    if kind == "RMSprop":
        _zero("momentum", hp.get("momentum"))
        return "RMSprop8bit", dict(lr=hp["lr"], alpha=hp["alpha"], eps=hp["eps"],
                                   weight_decay=hp["weight_decay"])
    if kind == "Adagrad":
        return "Adagrad8bit", dict(lr=hp["lr"], eps=hp["eps"], weight_decay=hp["weight_decay"])
    if kind == "Lion":
        return "Lion8bit", dict(lr=hp["lr"], betas=(hp["betas[0]"], hp["betas[1]"]),
                                weight_decay=hp["weight_decay"])
    raise SystemExit(f"no bitsandbytes 8-bit optimizer for {kind!r}")


def bnb_class_of(groups, declared: str | None) -> str:
    if declared is not None:
        if declared not in BNB_CLASSES:
            raise SystemExit(f"no conversion for {declared!r}; known: {sorted(BNB_CLASSES)}")
        return declared
    g = groups[0]
    if "t_alpha" in g:  # Optimizer2State groups (the Adams)
        return "AdamW8bit" if float(g["weight_decay"]) != 0.0 else "Adam8bit"
    raise SystemExit("cannot tell the optimizer; add 'optimizer_class' to the checkpoint")


# ---------------------------------------------------------------------------- to-ours

def blocks(n: int) -> int:
    return -(-n // BLOCKSIZE)


def to_ours(src: str, dst: str, min_8bit_size: int | None = None) -> None:
    ck = torch.load(src, weights_only=True)
    if "optimizer" not in ck or "model" not in ck:
        raise SystemExit(f"{src}: expected a dict with 'optimizer' (a state_dict) and 'model'")
    sd, model = ck["optimizer"], ck["model"]
    groups = sd["param_groups"]
    cls_name = bnb_class_of(groups, ck.get("optimizer_class"))
    _, state_map = BNB_CLASSES[cls_name]
    min_size = int(ck.get("min_8bit_size", min_8bit_size or DEFAULT_MIN_8BIT_SIZE))

    ids = [i for g in groups for i in g["params"]]
    if all("param_names" in g for g in groups):
        id_name = {i: n for g in groups for i, n in zip(g["params"], g["param_names"])}
    else:
        keys = list(model.keys())
        if len(keys) < len(ids):
            raise SystemExit("fewer model tensors than optimizer parameters")
        id_name = dict(zip(ids, keys))
    wanted = set(id_name.values())
    missing = wanted - set(model.keys())
    if missing:
        raise SystemExit(f"optimizer parameters missing from 'model': {sorted(missing)}")
    names = [n for n in model.keys() if n in wanted]
    name_id = {n: i for i, n in id_name.items()}

    kinds, our_groups = set(), []
    for g in groups:
        kind, hp = our_hyperparameters(cls_name, g)
        kinds.add(kind)
        our_groups.append({"params": [id_name[i] for i in g["params"]], **hp})
    (kind,) = kinds

    def quant_state(n):
        st = dict(sd["state"].get(name_id[n], {}))
        st.update(st.pop(QUANT_KEY, {}))
        return st

    steps = {int(quant_state(n)["step"]) for n in names if "step" in quant_state(n)}
    if len(steps) > 1:
        raise SystemExit(f"parameters have different step counts {sorted(steps)}; "
                         "wgpu-optim keeps one")
    step = steps.pop() if steps else 0

    out = [(f"param.{n}", model[n].detach().to(torch.float32)) for n in names]
    for n in names:
        p = model[n]
        numel = p.numel()
        eight = numel >= min_size
        st = quant_state(n)
        for bnb_key, key in state_map.items():
            i = bnb_key[-1]
            s = st.get(bnb_key)
            if eight:
                if s is None:  # never stepped: bitsandbytes' initial state
                    codes = torch.zeros(numel, dtype=torch.uint8)
                    absmax = torch.zeros(blocks(numel), dtype=torch.float32)
                    qmap = F.create_dynamic_map(signed=SIGNED_QMAP[bnb_key]).float()
                else:
                    if s.dtype != torch.uint8:
                        raise SystemExit(f"{n} ({numel} elements) has {s.dtype} {bnb_key}, "
                                         f"expected 8-bit state at min_8bit_size {min_size}")
                    codes, absmax, qmap = s, st[f"absmax{i}"], st[f"qmap{i}"]
                if codes.numel() != numel or absmax.numel() != blocks(numel) \
                        or qmap.numel() != 256:
                    raise SystemExit(f"{n}: {bnb_key} has inconsistent sizes")
                out.append((f"state.{n}.{key}.codes", codes.reshape(-1).clone()))
                out.append((f"state.{n}.{key}.absmax",
                            absmax.to(torch.float32).reshape(-1).clone()))
                out.append((f"state.{n}.{key}.qmap", qmap.to(torch.float32).reshape(-1).clone()))
            else:
                if s is None:
                    s = torch.zeros(p.shape, dtype=torch.float32)
                if s.dtype != torch.float32:
                    raise SystemExit(f"{n} ({numel} elements) has {s.dtype} {bnb_key}, "
                                     f"expected f32 state below min_8bit_size {min_size}")
                out.append((f"state.{n}.{key}", s.detach().reshape(p.shape).clone()))
        out.append((f"state.{n}.step", torch.tensor(float(step), dtype=torch.float32)))

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": kind,
        "step": str(step),
        "tensors": json.dumps(names),
        "param_groups": json.dumps(our_groups),
        "max_grad_norm": "null",
        "grad_norm_type": "2",
        "skip_nonfinite": "false",
        "grad_scaler": "null",
        "state_format": json.dumps({"kind": "blockwise8", "min_size": min_size},
                                   separators=(",", ":")),
        "written_by": f"tools/bnb_convert.py (bitsandbytes "
                      f"{importlib.metadata.version('bitsandbytes')}, "
                      f"torch {torch.__version__.split('+')[0]})",
    }
    write_safetensors(dst, out, meta)


# ---------------------------------------------------------------------------- to-bnb

def to_bnb_dict(src: str) -> dict:
    tensors, meta = read_safetensors(src)
    if meta.get("format") != FORMAT:
        raise SystemExit(f"{src}: not a wgpu-optim checkpoint")
    sf = json.loads(meta.get("state_format", "null") or "null")
    if not sf or sf.get("kind") != "blockwise8":
        raise SystemExit(f"{src}: no blockwise8 state_format; see tools/torch_checkpoint.py "
                         "for dense checkpoints")
    min_size = int(sf["min_size"])
    kind = meta["optimizer"]
    names = json.loads(meta["tensors"])
    groups = json.loads(meta["param_groups"])
    step = int(meta["step"])
    if json.loads(meta.get("precision", "null") or "null") is not None:
        raise SystemExit("checkpoints with a precision entry are not handled here")
    if json.loads(meta["grad_scaler"]) is not None:
        raise SystemExit("a grad_scaler is not part of a bitsandbytes optimizer")

    params = OrderedDict((n, tensors[f"param.{n}"].to(torch.float32).clone()
                          .requires_grad_(True)) for n in names)
    cls_names, kwargs = set(), []
    for g in groups:
        c, kw = bnb_class_and_kwargs(kind, g)
        cls_names.add(c)
        kwargs.append(kw)
    if len(cls_names) != 1:
        raise SystemExit("groups disagree on decoupled_weight_decay")
    (cls_name,) = cls_names
    _, state_map = BNB_CLASSES[cls_name]
    # The constructor takes the first group's options (some classes require lr); then each
    # group gets its own under bitsandbytes' group names (SGD8bit keeps momentum and dampening
    # as betas, RMSprop8bit alpha and momentum).
    opt = getattr(bnb.optim, cls_name)(
        [{"params": [params[n] for n in g["params"]]} for g in groups],
        min_8bit_size=min_size, **kwargs[0])
    for group, kw in zip(opt.param_groups, kwargs):
        kw = dict(kw)
        if cls_name == "SGD8bit":
            kw["betas"] = (kw.pop("momentum"), 0.0)
        elif cls_name == "RMSprop8bit":
            kw["betas"] = (kw.pop("alpha"), 0.0)
        for k, v in kw.items():
            if k not in group:
                raise SystemExit(f"{cls_name} groups have no {k!r}")
            group[k] = v

    if step > 0:
        fresh = {True: F.create_dynamic_map(signed=True).float(),
                 False: F.create_dynamic_map(signed=False).float()}
        shared = {True: opt.name2qmap["dynamic"], False: opt.name2qmap["udynamic"]}
        for n, p in params.items():
            st = {"step": step}
            for bnb_key, key in state_map.items():
                i = bnb_key[-1]
                if p.numel() >= min_size:
                    codes = tensors[f"state.{n}.{key}.codes"]
                    absmax = tensors[f"state.{n}.{key}.absmax"]
                    qmap = tensors[f"state.{n}.{key}.qmap"]
                    if codes.dtype != torch.uint8 or codes.numel() != p.numel() \
                            or absmax.numel() != blocks(p.numel()) or qmap.numel() != 256:
                        raise SystemExit(f"{n}: malformed 8-bit {key}")
                    signed = SIGNED_QMAP[bnb_key]
                    # bitsandbytes shares one map tensor among all parameters: keep that.
                    if torch.equal(qmap.reshape(-1), fresh[signed]):
                        qmap = shared[signed]
                    st[bnb_key] = codes.reshape(p.shape).clone()
                    st[f"qmap{i}"] = qmap.reshape(-1)
                    st[f"absmax{i}"] = absmax.to(torch.float32).reshape(-1).clone()
                else:
                    s = tensors[f"state.{n}.{key}"]
                    st[bnb_key] = s.to(torch.float32).reshape(p.shape).clone()
            opt.state[p] = st
    sd = opt.state_dict()
    return {"model": OrderedDict((n, p.detach()) for n, p in params.items()),
            "optimizer": sd, "optimizer_class": cls_name, "min_8bit_size": min_size}


def to_bnb(src: str, dst: str) -> None:
    torch.save(to_bnb_dict(src), dst)


# ---------------------------------------------------------------------------- fixture

def state_dicts_equal(a, b, path="") -> list[str]:
    """Exact comparison of nested state_dict structures (tensors: dtype, shape, bits; numbers:
    value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) \
                or a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            return [path]
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} keys {sorted(map(str, a))} vs {sorted(map(str, b))}"]
        return [d for k in a for d in state_dicts_equal(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in state_dicts_equal(x, y,
                                                                                   f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        # Hyperparameters are floats on our side: bitsandbytes' int defaults (weight_decay=0)
        # come back as the same value in a float.
        return [] if a == b else [f"{path}: {a!r} vs {b!r}"]
    return [] if (a == b and type(a) is type(b)) else [f"{path}: {a!r} vs {b!r}"]


def fixture(out_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bnb_blockwise as bb

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(out_dir, exist_ok=True)
    index = next(i for i, c in enumerate(bb.CASES) if c[0] == "adamw8bit")
    case_name, optimizer, cls_name, kwargs, config, state_map, grad_scale, _ = bb.CASES[index]
    steps_before, steps_after = 5, 5
    seed = bb.BASE_SEED + index
    # The same random stream as bnb_blockwise.py (init, then each step's gradients), 10 steps.
    torch.manual_seed(seed)
    init = [torch.randn(n, dtype=torch.float32) for _, n in bb.TENSOR_SHAPES]
    grads = []
    for _ in range(steps_before + steps_after):
        gs = []
        for _, n in bb.TENSOR_SHAPES:
            g = torch.randn(n, dtype=torch.float32)
            if grad_scale != 1.0:
                g = g * grad_scale
            gs.append(g)
        grads.append(gs)
    names = [n for n, _ in bb.TENSOR_SHAPES]
    ref_init, ref_grads = bb.make_data(seed, grad_scale)
    if not all(torch.equal(a, b) for a, b in zip(init, ref_init)) or not all(
            torch.equal(a, b) for gs, rs in zip(grads, ref_grads) for a, b in zip(gs, rs)):
        raise SystemExit("the random stream differs from bnb_blockwise.py's")

    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(bnb.optim, cls_name)(params, min_8bit_size=bb.MIN_8BIT_SIZE, **kwargs)

    def step(opt, params, gs):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()

    for k in range(steps_before):
        step(opt, params, grads[k])
    ref_hist, _, _ = bb.run_bnb(cls_name, kwargs, init, grads[:steps_before])
    if not all(torch.equal(a, b) for a, b in zip(ref_hist[-1], params)):
        raise SystemExit("5 steps differ from bnb_blockwise.py's")

    sd5 = opt.state_dict()
    pt = os.path.join(out_dir, f".{case_name}.pt")
    torch.save({"model": OrderedDict((n, p.detach().clone()) for n, p in zip(names, params)),
                "optimizer": sd5, "optimizer_class": cls_name,
                "min_8bit_size": bb.MIN_8BIT_SIZE}, pt)
    ours = os.path.join(out_dir, f"{case_name}_step{steps_before}.safetensors")
    to_ours(pt, ours)
    os.remove(pt)

    # Round trip: bnb -> ours -> bnb gives the same state_dict and parameters.
    back = to_bnb_dict(ours)
    diffs = state_dicts_equal(sd5, back["optimizer"], "optimizer")
    diffs += [f"model/{n}" for n, p in zip(names, params)
              if not torch.equal(back["model"][n], p.detach())]
    print(f"bnb -> ours -> bnb round trip: {'exact' if not diffs else diffs}")
    if diffs:
        raise SystemExit("round trip differs")

    history = []
    for k in range(steps_before, steps_before + steps_after):
        step(opt, params, grads[k])
        history.append([p.detach().clone() for p in params])

    # Resume a fresh AdamW8bit from the converted-back state_dict: the same bits.
    params2 = [torch.nn.Parameter(back["model"][n].clone()) for n in names]
    opt2 = getattr(bnb.optim, cls_name)(params2, min_8bit_size=bb.MIN_8BIT_SIZE, **kwargs)
    opt2.load_state_dict(back["optimizer"])
    for k in range(steps_before, steps_before + steps_after):
        step(opt2, params2, grads[k])
    same = all(torch.equal(a, b) for a, b in zip(params, params2)) and all(
        torch.equal(opt.state[p][k], opt2.state[q][k])
        for p, q in zip(params, params2) for k in opt.state[p] if k != "step")
    print(f"resume from the converted checkpoint: {'bit for bit' if same else 'DIFFERS'}")
    if not same:
        raise SystemExit("resume differs")

    doc = {
        "bitsandbytes_version": importlib.metadata.version("bitsandbytes"),
        "torch_version": torch.__version__.split("+")[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "generated_by": "python3 tools/bnb_convert.py fixture",
        "name": case_name,
        "optimizer": optimizer,
        "bnb_class": cls_name,
        "config": config,
        "seed": seed,
        "min_8bit_size": bb.MIN_8BIT_SIZE,
        "checkpoint": os.path.basename(ours),
        "steps_before": steps_before,
        "tensors": [[n, s] for n, s in bb.TENSOR_SHAPES],
        "steps": [{"grads": {n: bb.f32_list(g) for n, g in zip(names, gs)},
                   "params": {n: bb.f32_list(p) for n, p in zip(names, ps)}}
                  for gs, ps in zip(grads[steps_before:], history)],
        "final_state": bb.final_state(opt, params, state_map),
    }
    path = os.path.join(out_dir, f"{case_name}_resume.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {ours} ({os.path.getsize(ours)} bytes) and {path} "
          f"({os.path.getsize(path)} bytes)")


def main() -> None:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-ours", help="bitsandbytes checkpoint dict .pt -> wgpu-optim "
                                       ".safetensors")
    a.add_argument("src")
    a.add_argument("dst")
    a.add_argument("--min-8bit-size", type=int, default=None,
                   help=f"bitsandbytes' min_8bit_size when the .pt does not say "
                        f"(default {DEFAULT_MIN_8BIT_SIZE})")
    b = sub.add_parser("to-bnb", help="wgpu-optim .safetensors -> bitsandbytes checkpoint "
                                      "dict .pt")
    b.add_argument("src")
    b.add_argument("dst")
    c = sub.add_parser("fixture", help="write the 8-bit resume test fixture")
    c.add_argument("-o", "--output", default=os.path.join(repo_root, "tests", "data",
                                                          "bnb_resume"))
    args = ap.parse_args()
    if args.command == "to-ours":
        to_ours(args.src, args.dst, args.min_8bit_size)
    elif args.command == "to-bnb":
        to_bnb(args.src, args.dst)
    else:
        fixture(args.output)


if __name__ == "__main__":
    main()
