#!/usr/bin/env python3
"""Convert wgpu-optim checkpoints to and from PyTorch, and write the interchange test fixture.

Commands
--------
::

    python3 tools/torch_checkpoint.py to-torch ours.safetensors out.pt
    python3 tools/torch_checkpoint.py from-torch in.pt ours.safetensors
    python3 tools/torch_checkpoint.py fixture [-o tests/data/checkpoint_torch]

Needs PyTorch (CPU is enough; ``pip install torch``). The safetensors format is read and written
here directly (no ``safetensors`` package needed).

The PyTorch side: a checkpoint dict as training scripts usually save one
--------------------------------------------------------------------------
``to-torch`` writes, and ``from-torch`` reads, a ``torch.save``'d dict::

    {
      "model":     {name: tensor, ...},        # the parameters, in the checkpoint's tensor order
      "optimizer": opt.state_dict(),           # torch.optim's own format
      "scaler":    torch.amp.GradScaler(...).state_dict() or absent,
      "optimizer_class": "Adam" | "AdamW" | "SGD" | "RMSprop" | "Adagrad",   # optional on input
      "wgpu_optim": {"step": int, "max_grad_norm": float | None, "grad_norm_type": float,
                     "skip_nonfinite": bool, "grad_scaler_init_scale": float},  # optional on input
    }

so that ``opt.load_state_dict(ck["optimizer"])``, ``model.load_state_dict(ck["model"],
strict=False)`` and ``scaler.load_state_dict(ck["scaler"])`` resume in PyTorch.

* Parameter ids in ``state`` and ``param_groups[i]["params"]`` are 0..n in the checkpoint's tensor
  order; every group also carries ``param_names`` (PyTorch >= 2.6 understands them).
* Hyperparameters keep PyTorch's names; Adam's ``betas[0]``/``betas[1]`` become the ``betas``
  tuple; booleans (stored as 0/1 on our side) become bools. Adam with
  ``decoupled_weight_decay`` = 1 becomes ``torch.optim.AdamW``.
* State: our tensors ``state.<name>.<key>`` under PyTorch's keys. ``step`` is a float32 scalar
  tensor for Adam(W), RMSprop and Adagrad; PyTorch's SGD keeps no step. An optimizer at step 0
  gets an empty state, as PyTorch's lazy initialisation has (Adagrad's is created eagerly).
* On input (``from-torch``), parameter names come from the groups' ``param_names`` when present,
  otherwise the i-th id listed across the groups is the i-th tensor of ``model``. Parameters
  without state (never stepped) get PyTorch's initial state. All parameters must have the same
  step (wgpu-optim keeps one step count); SGD's step is ``wgpu_optim.step`` when given, else 1
  when momentum buffers exist (SGD only needs to know whether the first step is done), else 0.
  Tensors keep their PyTorch shapes (wgpu-optim accepts any shape with the right element count).
  The GradScaler's ``init_scale`` is not in PyTorch's state_dict: it is
  ``wgpu_optim.grad_scaler_init_scale`` when present, else PyTorch's default 65536.

Our side: a wgpu-optim checkpoint (see ``src/checkpoint.rs`` for the full format)
--------------------------------------------------------------------------------
safetensors, all F32: ``param.<name>``, ``state.<name>.<key>``, ``state.<name>.step``; metadata
``format``, ``format_version``, ``optimizer``, ``step``, ``tensors``, ``param_groups``,
``max_grad_norm``, ``grad_norm_type``, ``skip_nonfinite``, ``grad_scaler``, ``written_by``.

``fixture``
-----------
Writes the data of ``tests/checkpoint.rs``'s PyTorch interchange test into
``tests/data/checkpoint_torch/`` (relative to the repository root): for each case (Adam with
amsgrad and two named groups, AdamW, SGD with momentum and two unnamed groups, RMSprop centered
with momentum, Adagrad) it runs 10 steps in PyTorch (``foreach=False``, fixed seed), saves the
PyTorch checkpoint dict, converts it with ``from-torch`` into ``<case>.safetensors``, runs 10
more steps and records their gradients and PyTorch's parameters and state after step 20 in
``expected.json``. As a self-check it also converts the file back with ``to-torch``, resumes a
fresh PyTorch optimizer from it and requires the same 20-step result bit for bit. Deterministic
for a given torch version and CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from collections import OrderedDict

import torch

FORMAT = "wgpu-optim-checkpoint"
FORMAT_VERSION = "1"

# Our hyperparameter names per optimizer (OptimizerConfig::hyperparameters), booleans marked.
HYPERPARAMETERS = {
    "Adam": [("lr", False), ("betas[0]", False), ("betas[1]", False), ("eps", False),
             ("weight_decay", False), ("amsgrad", True), ("maximize", True),
             ("decoupled_weight_decay", True)],
    "SGD": [("lr", False), ("momentum", False), ("dampening", False), ("weight_decay", False),
            ("nesterov", True), ("maximize", True)],
    "RMSprop": [("lr", False), ("alpha", False), ("eps", False), ("weight_decay", False),
                ("momentum", False), ("centered", True), ("maximize", True)],
    "Adagrad": [("lr", False), ("lr_decay", False), ("weight_decay", False),
                ("initial_accumulator_value", False), ("eps", False), ("maximize", True)],
}


def state_keys(kind: str, hp: dict) -> list[str]:
    """The state keys wgpu-optim keeps for a configuration (same rule as `uses_state`)."""
    if kind == "Adam":
        return ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if hp["amsgrad"] else [])
    if kind == "SGD":
        return ["momentum_buffer"] if hp["momentum"] != 0 else []
    if kind == "RMSprop":
        keys = ["square_avg"]
        if hp["momentum"] > 0:
            keys.append("momentum_buffer")
        if hp["centered"]:
            keys.append("grad_avg")
        return keys
    if kind == "Adagrad":
        return ["sum"]
    raise SystemExit(f"unknown optimizer {kind!r}")


# ---------------------------------------------------------------------------- safetensors

def read_safetensors(path: str):
    """(OrderedDict name -> float32 tensor in file order, metadata dict)."""
    if sys.byteorder != "little":
        raise SystemExit("this script assumes a little-endian machine")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise SystemExit(f"{path}: too short for safetensors")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise SystemExit(f"{path}: header length {n} exceeds the file")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = OrderedDict()
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name == "__checksum__":
            # Format version 2: the header's CRC-32 (the script writes version 1 files, which
            # wgpu-optim still reads, without checksums).
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {info['dtype']}, only F32 is supported")
        s, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + s:base + e]), dtype=torch.float32)
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors, meta


def write_safetensors(path: str, tensors, meta: dict) -> None:
    """Write (name, tensor) pairs in order as F32, atomically (temporary file + rename)."""
    header = {"__metadata__": meta}
    blobs = []
    offset = 0
    for name, t in tensors:
        b = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- to-torch

def torch_kwargs(kind: str, hp: dict) -> tuple[type, dict]:
    """Our hyperparameters of one group -> (torch class, constructor kwargs)."""
    kw = {}
    for name, is_bool in HYPERPARAMETERS[kind]:
        if name not in hp:
            raise SystemExit(f"group lacks hyperparameter {name!r}")
        kw[name] = bool(hp[name]) if is_bool else float(hp[name])
    if kind == "Adam":
        kw["betas"] = (kw.pop("betas[0]"), kw.pop("betas[1]"))
        if kw.pop("decoupled_weight_decay"):
            return torch.optim.AdamW, kw
        return torch.optim.Adam, kw
    return getattr(torch.optim, kind), kw


def to_torch(src: str, dst: str) -> None:
    tensors, meta = read_safetensors(src)
    if meta.get("format") != FORMAT:
        raise SystemExit(f"{src}: not a wgpu-optim checkpoint")
    kind = meta["optimizer"]
    names = json.loads(meta["tensors"])
    groups = json.loads(meta["param_groups"])
    step = int(meta["step"])
    scaler = json.loads(meta["grad_scaler"])

    params = OrderedDict((n, tensors[f"param.{n}"].clone().requires_grad_(True)) for n in names)
    cls = None
    torch_groups = []
    for g in groups:
        c, kw = torch_kwargs(kind, g)
        if cls is not None and c is not cls:
            raise SystemExit("groups disagree on decoupled_weight_decay")
        cls = c
        torch_groups.append({"params": [(n, params[n]) for n in g["params"]], **kw})
    opt = cls(torch_groups, foreach=False)

    for g in groups:
        hp = dict(g)
        for n in g["params"]:
            p = params[n]
            st = {}
            if step > 0 or kind == "Adagrad":
                for key in state_keys(kind, hp):
                    st[key] = tensors[f"state.{n}.{key}"].reshape(p.shape).clone()
                if kind != "SGD":
                    st["step"] = torch.tensor(float(step), dtype=torch.float32)
            opt.state[p] = st

    sd = opt.state_dict()
    # torch numbers ids in group order; renumber them 0..n in the checkpoint's tensor order.
    chain = [n for g in sd["param_groups"] for n in g["param_names"]]
    to_ours = {torch_id: names.index(n) for torch_id, n in enumerate(chain)}
    sd["state"] = {to_ours[i]: v for i, v in sd["state"].items()}
    sd["state"] = dict(sorted(sd["state"].items()))
    for g in sd["param_groups"]:
        g["params"] = [to_ours[i] for i in g["params"]]

    out = {
        "model": OrderedDict((n, p.detach()) for n, p in params.items()),
        "optimizer": sd,
        "optimizer_class": cls.__name__,
        "wgpu_optim": {
            "step": step,
            "max_grad_norm": json.loads(meta["max_grad_norm"]),
            "grad_norm_type": float(meta["grad_norm_type"]),
            "skip_nonfinite": meta["skip_nonfinite"] == "true",
        },
    }
    if scaler is not None:
        out["scaler"] = {
            "scale": float(scaler["scale"]),
            "growth_factor": float(scaler["growth_factor"]),
            "backoff_factor": float(scaler["backoff_factor"]),
            "growth_interval": int(scaler["growth_interval"]),
            "_growth_tracker": int(scaler["growth_tracker"]),
        }
        out["wgpu_optim"]["grad_scaler_init_scale"] = float(scaler["init_scale"])
    torch.save(out, dst)


# ---------------------------------------------------------------------------- from-torch

def infer_kind(group: dict, declared: str | None) -> str:
    if declared is not None:
        return {"AdamW": "Adam"}.get(declared, declared)
    if "betas" in group:
        return "Adam"
    if "nesterov" in group:
        return "SGD"
    if "alpha" in group:
        return "RMSprop"
    if "lr_decay" in group:
        return "Adagrad"
    raise SystemExit("cannot tell the optimizer; add 'optimizer_class' to the checkpoint")


def our_hyperparameters(kind: str, group: dict, declared: str | None) -> dict:
    hp = {}
    for name, is_bool in HYPERPARAMETERS[kind]:
        if name.startswith("betas["):
            v = group["betas"][int(name[6])]
        elif name == "decoupled_weight_decay":
            v = group.get(name, declared == "AdamW")
        else:
            v = group[name]
        if isinstance(v, torch.Tensor):
            v = v.item()
        hp[name] = (1 if v else 0) if is_bool else float(v)
    return hp


def from_torch(src: str, dst: str) -> None:
    ck = torch.load(src, weights_only=True)
    if "optimizer" not in ck or "model" not in ck:
        raise SystemExit(f"{src}: expected a dict with 'optimizer' (a state_dict) and 'model'")
    sd, model = ck["optimizer"], ck["model"]
    declared = ck.get("optimizer_class")
    extra = ck.get("wgpu_optim", {}) or {}
    groups = sd["param_groups"]
    kind = infer_kind(groups[0], declared)

    # Parameter id -> name.
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

    our_groups = []
    for g in groups:
        hp = our_hyperparameters(kind, g, declared)
        our_groups.append({"params": [id_name[i] for i in g["params"]], **hp})
    hp0 = our_groups[0]
    keys = state_keys(kind, hp0)
    for g in our_groups[1:]:
        if state_keys(kind, g) != keys:
            raise SystemExit("groups disagree on boolean options; wgpu-optim needs them equal")

    # One step count for all.
    steps = set()
    for n in names:
        st = sd["state"].get(name_id[n], {})
        if "step" in st:
            s = st["step"]
            steps.add(int(s.item() if isinstance(s, torch.Tensor) else s))
    if len(steps) > 1:
        raise SystemExit(f"parameters have different step counts {sorted(steps)}; "
                         "wgpu-optim keeps one")
    if steps:
        step = steps.pop()
    elif "step" in extra:
        step = int(extra["step"])
    elif kind == "SGD" and any("momentum_buffer" in sd["state"].get(name_id[n], {})
                               and sd["state"][name_id[n]]["momentum_buffer"] is not None
                               for n in names):
        step = 1
    else:
        step = 0

    group_of = {n: g for g in our_groups for n in g["params"]}
    out = [(f"param.{n}", model[n].detach().to(torch.float32)) for n in names]
    for n in names:
        p = model[n]
        st = sd["state"].get(name_id[n], {})
        for key in keys:
            t = st.get(key)
            if t is None:
                init = group_of[n]["initial_accumulator_value"] if key == "sum" else 0.0
                t = torch.full(p.shape, init, dtype=torch.float32)
            if t.numel() != p.numel():
                raise SystemExit(f"state {key} of {n} has {t.numel()} elements, "
                                 f"the parameter {p.numel()}")
            out.append((f"state.{n}.{key}", t.detach().to(torch.float32).reshape(p.shape)))
        out.append((f"state.{n}.step", torch.tensor(float(step), dtype=torch.float32)))

    scaler = None
    sc = ck.get("scaler")
    if sc:
        scaler = {
            "scale": float(sc["scale"]),
            "growth_tracker": int(sc["_growth_tracker"]),
            "init_scale": float(extra.get("grad_scaler_init_scale", 65536.0)),
            "growth_factor": float(sc["growth_factor"]),
            "backoff_factor": float(sc["backoff_factor"]),
            "growth_interval": int(sc["growth_interval"]),
        }
    norm_type = float(extra.get("grad_norm_type", 2.0))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "optimizer": kind,
        "step": str(step),
        "tensors": json.dumps(names),
        "param_groups": json.dumps(our_groups),
        "max_grad_norm": json.dumps(extra.get("max_grad_norm")),
        "grad_norm_type": "inf" if norm_type == float("inf") else str(int(norm_type)),
        "skip_nonfinite": "true" if extra.get("skip_nonfinite", False) else "false",
        "grad_scaler": json.dumps(scaler),
        "written_by": f"tools/torch_checkpoint.py (torch {torch.__version__.split('+')[0]})",
    }
    write_safetensors(dst, out, meta)


# ---------------------------------------------------------------------------- fixture

SHAPES = [("fc1.weight", (5, 7)), ("fc1.bias", (5,)), ("fc2.weight", (3, 5)), ("fc2.bias", (3,))]
STEPS_BEFORE = 10
STEPS_AFTER = 10
BASE_SEED = 20240917

# (case, torch class, groups as (tensor names, kwargs), use named params)
FIXTURE_CASES = [
    ("adam_amsgrad", "Adam",
     [(["fc1.weight", "fc2.weight"], dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8,
                                          weight_decay=0.01, amsgrad=True)),
      (["fc1.bias", "fc2.bias"], dict(lr=0.02, betas=(0.8, 0.999), eps=1e-8,
                                      weight_decay=0.0, amsgrad=True))], True),
    ("adamw", "AdamW",
     [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
       dict(lr=0.005, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05))], False),
    ("sgd_momentum", "SGD",
     [(["fc1.weight", "fc1.bias"], dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
      (["fc2.weight", "fc2.bias"], dict(lr=0.02, momentum=0.8, dampening=0.0,
                                        weight_decay=0.0))], False),
    ("rmsprop_centered_momentum", "RMSprop",
     [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
       dict(lr=0.01, alpha=0.95, eps=1e-8, weight_decay=0.01, momentum=0.9, centered=True))],
     False),
    ("adagrad", "Adagrad",
     [(["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"],
       dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1,
            eps=1e-10))], False),
]


def make_optimizer(cls_name, groups, params, named):
    cls = getattr(torch.optim, cls_name)
    torch_groups = []
    for names, kw in groups:
        ps = [(n, params[n]) for n in names] if named else [params[n] for n in names]
        torch_groups.append({"params": ps, **kw})
    return cls(torch_groups, foreach=False)


def fixture(out_dir: str) -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(out_dir, exist_ok=True)
    cases = []
    for index, (case, cls_name, groups, named) in enumerate(FIXTURE_CASES):
        torch.manual_seed(BASE_SEED + index)
        params = OrderedDict((n, torch.randn(s, dtype=torch.float32).requires_grad_(True))
                             for n, s in SHAPES)
        init = {n: p.detach().clone() for n, p in params.items()}
        opt = make_optimizer(cls_name, groups, params, named)
        grads = [{n: torch.randn(s, dtype=torch.float32) for n, s in SHAPES}
                 for _ in range(STEPS_BEFORE + STEPS_AFTER)]

        def step(opt, params, g):
            for n, p in params.items():
                p.grad = g[n].clone()
            opt.step()

        for k in range(STEPS_BEFORE):
            step(opt, params, grads[k])
        pt = os.path.join(out_dir, f".{case}.pt")
        torch.save({"model": OrderedDict((n, p.detach().clone()) for n, p in params.items()),
                    "optimizer": opt.state_dict(), "optimizer_class": cls_name}, pt)
        ours = os.path.join(out_dir, f"{case}.safetensors")
        from_torch(pt, ours)
        os.remove(pt)
        for k in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
            step(opt, params, grads[k])

        # Self-check: back to torch, resume, same bits as the uninterrupted run.
        back = os.path.join(out_dir, f".{case}.back.pt")
        to_torch(ours, back)
        ck = torch.load(back, weights_only=True)
        os.remove(back)
        params2 = OrderedDict((n, t.clone().requires_grad_(True)) for n, t in ck["model"].items())
        opt2 = make_optimizer(cls_name, groups, params2, True)
        sd = ck["optimizer"]
        opt2.load_state_dict(sd)
        for k in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
            step(opt2, params2, grads[k])
        for n in params:
            if not torch.equal(params[n], params2[n]):
                raise SystemExit(f"{case}: to-torch round trip differs on {n}")

        state = {}
        for n, p in params.items():
            st = opt.state[p]
            state[n] = {k: v.reshape(-1).tolist() for k, v in sorted(st.items()) if k != "step"}
        cases.append({
            "name": case,
            "optimizer_class": cls_name,
            "checkpoint": f"{case}.safetensors",
            "steps_before": STEPS_BEFORE,
            "init": {n: v.reshape(-1).tolist() for n, v in init.items()},
            "grads": [{n: g[n].reshape(-1).tolist() for n in g}
                      for g in grads[STEPS_BEFORE:]],
            "params": {n: p.detach().reshape(-1).tolist() for n, p in params.items()},
            "state": state,
        })
        print(f"{case}: ok")
    doc = {
        "torch_version": torch.__version__.split("+")[0],
        "generated_by": "python3 tools/torch_checkpoint.py fixture",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": cases,
    }
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {out_dir}")


def main() -> None:
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("to-torch", help="wgpu-optim .safetensors -> torch checkpoint dict .pt")
    a.add_argument("src")
    a.add_argument("dst")
    b = sub.add_parser("from-torch", help="torch checkpoint dict .pt -> wgpu-optim .safetensors")
    b.add_argument("src")
    b.add_argument("dst")
    c = sub.add_parser("fixture", help="write the interchange test fixture")
    c.add_argument("-o", "--output",
                   default=os.path.join(repo_root, "tests", "data", "checkpoint_torch"))
    args = ap.parse_args()
    if args.command == "to-torch":
        to_torch(args.src, args.dst)
    elif args.command == "from-torch":
        from_torch(args.src, args.dst)
    else:
        fixture(args.output)


if __name__ == "__main__":
    main()
