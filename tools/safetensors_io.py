"""Reading and writing safetensors files for the tools that convert checkpoints
(``torch_checkpoint.py``, ``bnb_convert.py``), by hand, with no ``safetensors`` package: each
tensor little-endian in its dtype and shape, the metadata as given.

``dtypes`` maps the safetensors dtype names a tool accepts to torch dtypes; anything else is
refused with a message naming them.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections import OrderedDict

import torch


def read_safetensors(path: str, dtypes: dict):
    """(OrderedDict name -> tensor in file order, in its own dtype and shape; metadata dict). A
    version 2 file's ``__checksum__`` is skipped (not verified)."""
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
            # Format version 2: the header's CRC-32 (the tools write version 1 files, which
            # wgpu-optim still reads, without checksums).
            continue
        if info["dtype"] not in dtypes:
            raise SystemExit(f"{path}: {name} is {info['dtype']}, not one of {sorted(dtypes)}")
        s, e = info["data_offsets"]
        dtype = dtypes[info["dtype"]]
        if s == e:
            t = torch.zeros(0, dtype=dtype)
        else:
            t = torch.frombuffer(bytearray(data[base + s:base + e]), dtype=dtype)
        tensors[name] = t.reshape(info["shape"]).clone()
    return tensors, meta


def write_safetensors(path: str, tensors, meta: dict, dtypes: dict) -> None:
    """Write (name, tensor) pairs in order, each in its dtype (one of ``dtypes``) and shape,
    atomically (temporary file + rename)."""
    names = {v: k for k, v in dtypes.items()}
    if sys.byteorder != "little":
        raise SystemExit("this script assumes a little-endian machine")
    header = {"__metadata__": meta}
    blobs = []
    offset = 0
    for name, t in tensors:
        if t.dtype not in names:
            raise SystemExit(f"{name} is {t.dtype}, not one of {sorted(dtypes)}")
        b = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
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
