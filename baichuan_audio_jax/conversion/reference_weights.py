"""Reading reference-layout (PyTorch-named) tensors from safetensors checkpoints.

Accepts a single ``.safetensors`` file, or a directory holding either a Hugging Face index
(``model.safetensors.index.json`` whose ``weight_map`` names the shard of every tensor) or plain
``*.safetensors`` files. Only the requested tensors are read (by name or by name prefix), so
picking the audio tokenizer out of a full 7B checkpoint reads a few hundred MB, not 20 GB.
bfloat16/float16 tensors are up-cast to float32 (exactly).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Iterable

import numpy as np

INDEX_NAME = "model.safetensors.index.json"


class WeightsError(ValueError):
    pass


def tensor_locations(path: str | os.PathLike) -> dict[str, str]:
    """Tensor name -> the safetensors file that holds it."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"weights path {path} does not exist")
    if os.path.isfile(path):
        files = [path]
    else:
        index = os.path.join(path, INDEX_NAME)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError) as e:
                raise WeightsError(f"{index}: not a safetensors index ({e})") from e
            return {name: os.path.join(path, shard) for name, shard in weight_map.items()}
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise WeightsError(f"weights directory {path} holds no *.safetensors files and no {INDEX_NAME}")
    out = {}
    for file in files:
        try:
            with safe_open(file, "numpy") as f:
                names = list(f.keys())
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise WeightsError(f"{file}: not a readable safetensors file ({e})") from e
        for name in names:
            if name in out:
                raise WeightsError(f"tensor {name} appears in both {out[name]} and {file}")
            out[name] = file
    return out


def read_reference_tensors(path: str | os.PathLike, *, prefixes: Iterable[str] = ("",)) -> dict[str, np.ndarray]:
    """Every tensor whose name starts with one of ``prefixes``, as float32/int numpy arrays."""
    from safetensors import safe_open

    prefixes = tuple(prefixes)
    where = {k: f for k, f in tensor_locations(path).items() if k.startswith(prefixes)}
    by_file: dict[str, list[str]] = {}
    for name, file in where.items():
        by_file.setdefault(file, []).append(name)
    out = {}
    for file, names in by_file.items():
        if not os.path.exists(file):
            raise WeightsError(f"shard {file} named by the index does not exist")
        with safe_open(file, "flax") as f:
            for name in names:
                a = np.asarray(f.get_tensor(name))
                if a.dtype.kind == "V" or str(a.dtype) in ("bfloat16", "float16"):
                    a = a.astype(np.float32)
                out[name] = a
    return out
