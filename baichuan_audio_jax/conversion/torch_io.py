"""Reference (PyTorch-side) checkpoint files.

This module is the one reader of reference weights in the package (conversion, the tokenizer
and vocoder runtimes, ``tokenize``/``detokenize``/``vocode --weights``, the parity fixtures).

Reading: a Hugging Face style directory (``model.safetensors``, or sharded
``model-XXXXX-of-YYYYY.safetensors`` + ``model.safetensors.index.json``; the ``pytorch_model.bin``
equivalents; or simply a directory of ``*.safetensors`` files), a single ``.safetensors`` file,
or a ``.pt``/``.bin``/``.pth`` state_dict (read with torch, only when it is installed; a
``{"state_dict": ...}`` wrapper is unwrapped). :class:`ReferenceCheckpoint` reads tensors one at
a time, exactly (bfloat16 stays bfloat16, as an ``ml_dtypes`` array), can restrict itself to key
prefixes (picking the audio tokenizer out of a 20 GB checkpoint reads only its tensors) and
strips wrapper-module prefixes (``hifigan_generator.`` of the reference's vocoder wrapper);
listing names, shapes and dtypes of safetensors files reads only their headers.
:func:`read_tensors` loads a (filtered) checkpoint into memory as float32 for running a model. A
``name -> shape`` JSON listing (the format of ``real_config_shapes.json``, or a flat mapping) is
read by :func:`read_shape_listing`.

Writing: :class:`HFCheckpointWriter` writes a Hugging Face style sharded safetensors directory one
tensor at a time (:class:`SafetensorsWriter` a single file; :class:`TorchStateDictWriter` a
``.pt`` state_dict with torch, which holds the whole state in memory as ``torch.save`` needs).
The ``safetensors`` package serialises a whole file from memory; here the header is written first
from the declared names, shapes and dtypes, then each tensor's bytes are appended as it is
produced, so memory stays at one tensor whatever the file size. The result is an ordinary
safetensors file (tests read it back with ``safetensors`` and torch).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import struct
from typing import Any, Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
TORCH_SUFFIXES = (".pt", ".bin", ".pth")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # the Hugging Face default shard size

_ST_TO_NUMPY = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "I16": np.dtype(np.int16), "U16": np.dtype(np.uint16), "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32), "I64": np.dtype(np.int64), "U64": np.dtype(np.uint64),
    "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16), "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NUMPY_TO_ST = {v: k for k, v in _ST_TO_NUMPY.items()}


class CheckpointError(ValueError):
    """A reference checkpoint that cannot be read as given (the message names the file and key)."""


def dtype_from_name(name: str | np.dtype) -> np.dtype:
    """``"bfloat16"``, ``"torch.float32"``, ``"BF16"``, a numpy dtype ... -> numpy dtype."""
    if isinstance(name, np.dtype):
        return name
    s = str(name)
    if s.startswith("torch."):
        s = s[len("torch."):]
    if s in _ST_TO_NUMPY:
        return _ST_TO_NUMPY[s]
    aliases = {"bfloat16": ml_dtypes.bfloat16, "half": np.float16, "float": np.float32, "double": np.float64,
               "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2, "bool": np.bool_}
    try:
        return np.dtype(aliases.get(s, s))
    except TypeError as e:
        raise CheckpointError(f"unknown dtype {name!r}") from e


def is_float_dtype(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32),
                               np.dtype(np.float64))


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    shape: tuple
    dtype: np.dtype
    file: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


# ----------------------------------------------------------------------------- reading

class _SafetensorsFile:
    def __init__(self, path: str):
        self.path = path
        try:
            with safe_open(path, framework="numpy") as f:
                self.infos: dict[str, TensorInfo] = {}
                for k in f.keys():
                    s = f.get_slice(k)
                    code = s.get_dtype()
                    if code not in _ST_TO_NUMPY:
                        raise CheckpointError(f"{path}: tensor {k} has dtype {code}, which this converter does not "
                                              "read")
                    self.infos[k] = TensorInfo(tuple(int(d) for d in s.get_shape()), _ST_TO_NUMPY[code], path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e

    def get(self, name: str) -> np.ndarray:
        # A handle of its own per tensor: safetensors memory-maps the whole file, and the pages a
        # read touches stay resident (and counted) until the mapping goes away.
        with safe_open(self.path, framework="numpy") as f:
            return f.get_tensor(name)


def _torch_to_numpy(t) -> np.ndarray:
    import torch  # lazy: optional `torch` extra
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.dtype in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)):
        target = ml_dtypes.float8_e4m3fn if t.dtype == torch.float8_e4m3fn else ml_dtypes.float8_e5m2
        return t.view(torch.uint8).numpy().view(target)
    return t.numpy()


class _TorchFile:
    """A pickled state_dict read with torch (memory-mapped when the file format allows)."""

    def __init__(self, path: str):
        try:
            import torch  # lazy: optional `torch` extra
        except ImportError as e:
            raise CheckpointError(f"{path}: reading .pt/.bin files needs PyTorch, which is not installed "
                                  "(install the `torch` extra, or convert the file to safetensors)") from e
        try:
            try:
                sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
        except Exception as e:  # torch raises many types for a bad file
            raise CheckpointError(f"{path}: cannot be read as a PyTorch state_dict ({type(e).__name__}: {e})") from e
        if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
            sd = sd["state_dict"]  # a training checkpoint wrapping the state_dict
        if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            top = list(sd)[:8] if isinstance(sd, Mapping) else type(sd).__name__
            raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), found {top}")
        self.path = path
        self._sd = sd
        self.infos = {k: TensorInfo(tuple(v.shape), _torch_dtype_to_numpy(v.dtype, path, k), path)
                      for k, v in sd.items()}

    def get(self, name: str) -> np.ndarray:
        return _torch_to_numpy(self._sd[name])


def _torch_dtype_to_numpy(dt, path: str, key: str) -> np.dtype:
    try:
        return dtype_from_name(str(dt))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: tensor {key} has dtype {dt}, which this converter does not read") from e


def _open_file(path: str):
    if path.endswith(".safetensors"):
        return _SafetensorsFile(path)
    if path.endswith(TORCH_SUFFIXES):
        return _TorchFile(path)
    raise CheckpointError(f"{path}: unsupported file type (expected .safetensors, .pt, .bin or .pth)")


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def _directory_files(d: str) -> list[tuple[str, list[str] | None]]:
    """(file, keys the index assigns to it or None) for a Hugging Face style directory."""
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = os.path.join(d, index_name)
        if os.path.exists(index):
            data = _read_json(index)
            wm = data.get("weight_map") if isinstance(data, Mapping) else None
            if not isinstance(wm, Mapping) or not wm:
                raise CheckpointError(f"{index}: no 'weight_map' (name -> file) in the index")
            files: dict[str, list[str]] = {}
            for k, fname in wm.items():
                files.setdefault(fname, []).append(k)
            out = []
            for fname, keys in files.items():
                path = os.path.join(d, fname)
                if not os.path.exists(path):
                    raise CheckpointError(f"{index} maps {len(keys)} tensor(s) (e.g. {keys[0]}) to {fname}, "
                                          f"which does not exist in {d}")
                out.append((path, keys))
            return out
    for single in (SAFETENSORS_SINGLE, BIN_SINGLE):
        if os.path.exists(os.path.join(d, single)):
            return [(os.path.join(d, single), None)]
    plain = sorted(f for f in os.listdir(d) if f.endswith(".safetensors") and not f.startswith("."))
    if plain:  # a directory of safetensors files without an index: their union
        return [(os.path.join(d, f), None) for f in plain]
    raise CheckpointError(f"{d}: no {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, {BIN_SINGLE}, {BIN_INDEX} or other "
                          "*.safetensors files; is this a Hugging Face model directory?")


class ReferenceCheckpoint:
    """The tensors of one or more reference checkpoint paths (their union), read one at a time.

    Each path is a Hugging Face style directory or a single file. A name present in several
    files must hold identical data there (the parity fixtures repeat the audio embeddings);
    anything else is an error naming the key and both files. ``config`` is the directory's
    ``config.json`` (the first one found), if any.

    ``prefixes``: only tensors whose (presented) name starts with one of them are visible (the
    others' bytes are never read). ``wrapper_prefixes``: when every key of a file starts with one
    of these, the file's keys are presented without it (e.g. ``hifigan_generator.`` of a vocoder
    saved through its wrapper module); :attr:`stripped` records what was removed per file.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                 prefixes: Sequence[str] | None = None, wrapper_prefixes: Sequence[str] = ()):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise CheckpointError("no checkpoint path given")
        prefixes = tuple(prefixes) if prefixes is not None else None
        self.config: dict | None = None
        self.config_path: str | None = None
        self.directories: list[str] = []
        self.infos: dict[str, TensorInfo] = {}
        self.stripped: dict[str, str] = {}  # file -> wrapper prefix removed from its keys
        self._stored: dict[tuple[str, str], str] = {}  # (file, presented name) -> name in the file
        self._files: dict[str, Any] = {}
        duplicates: list[tuple[str, str, str]] = []
        for path in self.paths:
            if not os.path.exists(path):
                raise CheckpointError(f"{path}: no such file or directory")
            if os.path.isdir(path):
                self.directories.append(path)
                cfg_path = os.path.join(path, "config.json")
                if self.config is None and os.path.exists(cfg_path):
                    self.config, self.config_path = _read_json(cfg_path), cfg_path
                entries = _directory_files(path)
            else:
                entries = [(path, None)]
            for fpath, index_keys in entries:
                f = _open_file(fpath)
                self._files[fpath] = f
                if index_keys is not None:
                    missing = [k for k in index_keys if k not in f.infos]
                    if missing:
                        raise CheckpointError(f"{fpath}: tensor {missing[0]} is listed in the index but not in "
                                              f"the file ({len(missing)} missing)")
                    extra = [k for k in f.infos if k not in set(index_keys)]
                    if extra:
                        raise CheckpointError(f"{fpath}: tensor {extra[0]} is in the file but the index does not "
                                              f"list it there ({len(extra)} such)")
                wrapper = next((w for w in wrapper_prefixes if f.infos and all(k.startswith(w) for k in f.infos)), "")
                if wrapper:
                    self.stripped[fpath] = wrapper
                for stored, info in f.infos.items():
                    k = stored[len(wrapper):]
                    if prefixes is not None and not k.startswith(prefixes):
                        continue
                    self._stored[(fpath, k)] = stored
                    if k in self.infos:
                        duplicates.append((k, self.infos[k].file, fpath))
                    else:
                        self.infos[k] = info
        for k, first, second in duplicates:
            a_info, b_info = self.infos[k], self._files[second].infos[self._stored[(second, k)]]
            if (a_info.shape, a_info.dtype) != (b_info.shape, b_info.dtype):
                raise CheckpointError(f"tensor {k} is {a_info.shape} {a_info.dtype} in {first} but "
                                      f"{b_info.shape} {b_info.dtype} in {second}")
            if not np.array_equal(self._read(first, k).view(np.uint8), self._read(second, k).view(np.uint8)):
                raise CheckpointError(f"tensor {k} holds different values in {first} and {second}")

    def __repr__(self) -> str:
        return f"ReferenceCheckpoint({', '.join(self.paths)})"

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def __len__(self) -> int:
        return len(self.infos)

    def keys(self) -> list[str]:
        return list(self.infos)

    def listing(self) -> dict[str, tuple[tuple, np.dtype]]:
        """name -> (shape, dtype), from the headers only."""
        return {k: (i.shape, i.dtype) for k, i in self.infos.items()}

    def _read(self, file: str, name: str) -> np.ndarray:
        return self._files[file].get(self._stored[(file, name)])

    def get(self, name: str) -> np.ndarray:
        """One tensor, exactly as stored."""
        info = self.infos.get(name)
        if info is None:
            raise CheckpointError(f"tensor {name} is not in {', '.join(self.paths)}")
        a = self._read(info.file, name)
        if tuple(a.shape) != info.shape or a.dtype != info.dtype:
            raise CheckpointError(f"{info.file}: tensor {name} reads as {a.shape} {a.dtype}, "
                                  f"header says {info.shape} {info.dtype}")
        return a

    __getitem__ = get

    def largest_tensor_bytes(self) -> int:
        return max((i.nbytes for i in self.infos.values()), default=0)


def as_float32(a: np.ndarray) -> np.ndarray:
    """Floating-point arrays as float32 (bfloat16 and float16 up-cast exactly); others unchanged."""
    return a.astype(np.float32) if is_float_dtype(a.dtype) and a.dtype != np.float32 else a


def read_tensors(source: str | os.PathLike | Sequence[str | os.PathLike] | ReferenceCheckpoint, *,
                 prefixes: Sequence[str] | None = None, wrapper_prefixes: Sequence[str] = (),
                 float32: bool = True) -> dict[str, np.ndarray]:
    """Every (prefix-selected) tensor of a reference checkpoint in memory, by name; with
    ``float32``, floating-point tensors up-cast to float32 (exact), as a float32 model loads them."""
    ckpt = source if isinstance(source, ReferenceCheckpoint) else ReferenceCheckpoint(
        source, prefixes=prefixes, wrapper_prefixes=wrapper_prefixes)
    keys = [k for k in ckpt.keys() if prefixes is None or k.startswith(tuple(prefixes))]
    return {k: as_float32(ckpt.get(k)) if float32 else ckpt.get(k) for k in keys}


# ----------------------------------------------------------------------------- listings

@dataclasses.dataclass
class ShapeListing:
    """Name -> (shape, dtype or None) of a model checkpoint and, optionally, of the vocoder file."""

    model: dict[str, tuple[tuple, np.dtype | None]]
    vocoder: dict[str, tuple[tuple, np.dtype | None]] | None = None
    reference_config: dict | None = None


def _parse_entries(entries: Mapping[str, Any], where: str) -> dict[str, tuple[tuple, np.dtype | None]]:
    out = {}
    for k, v in entries.items():
        if isinstance(v, Mapping):
            if "shape" not in v:
                raise CheckpointError(f"{where}: entry {k} has no 'shape'")
            shape, dtype = v["shape"], v.get("dtype")
        else:
            shape, dtype = v, None
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) for d in shape):
            raise CheckpointError(f"{where}: entry {k} has shape {shape!r}, expected a list of integers")
        out[k] = (tuple(shape), dtype_from_name(dtype) if dtype is not None else None)
    return out


def read_shape_listing(path: str | os.PathLike) -> ShapeListing:
    """Reads a name -> shape listing without weights.

    Accepted: the ``real_config_shapes.json`` layout (``omni_state_dict`` and optionally
    ``vocoder_state_dict``, entries ``{"shape": [...], "dtype": "bfloat16"}``, plus the reference
    ``omni_config``) or a flat mapping of names to shapes (or to such entries).
    """
    path = os.fspath(path)
    data = _read_json(path)
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a JSON object")
    if "omni_state_dict" in data:
        return ShapeListing(
            model=_parse_entries(data["omni_state_dict"], f"{path}:omni_state_dict"),
            vocoder=(_parse_entries(data["vocoder_state_dict"], f"{path}:vocoder_state_dict")
                     if "vocoder_state_dict" in data else None),
            reference_config=data.get("omni_config"))
    return ShapeListing(model=_parse_entries(data, path))


# ----------------------------------------------------------------------------- writing

@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def _st_code(dtype: np.dtype, name: str) -> str:
    code = _NUMPY_TO_ST.get(np.dtype(dtype))
    if code is None:
        raise CheckpointError(f"tensor {name}: dtype {dtype} cannot be stored in safetensors")
    return code


class SafetensorsWriter:
    """One safetensors file, written tensor by tensor in the declared order."""

    def __init__(self, path: str, specs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None):
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for s in specs:
            if s.name in header:
                raise CheckpointError(f"{path}: tensor {s.name} declared twice")
            header[s.name] = {"dtype": _st_code(s.dtype, s.name), "shape": list(s.shape),
                              "data_offsets": [offset, offset + s.nbytes]}
            offset += s.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
        self.path = path
        self._specs = list(specs)
        self._next = 0
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(blob)))
        self._f.write(blob)

    def write(self, name: str, array: np.ndarray) -> None:
        if self._next >= len(self._specs):
            raise CheckpointError(f"{self.path}: tensor {name} is not declared for this file")
        s = self._specs[self._next]
        if name != s.name:
            raise CheckpointError(f"{self.path}: expected tensor {s.name} next, got {name}")
        if tuple(array.shape) != tuple(s.shape) or array.dtype != np.dtype(s.dtype):
            raise CheckpointError(f"{self.path}: tensor {name} is {tuple(array.shape)} {array.dtype}, "
                                  f"declared {tuple(s.shape)} {np.dtype(s.dtype)}")
        self._f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        self._next += 1

    @property
    def done(self) -> bool:
        return self._next == len(self._specs)

    def close(self) -> None:
        self._f.close()
        if not self.done:
            raise CheckpointError(f"{self.path}: only {self._next} of {len(self._specs)} tensors were written "
                                  f"(next: {self._specs[self._next].name})")

    def abort(self) -> None:
        self._f.close()


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive groups of at most ``max_shard_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def shard_file_names(n: int) -> list[str]:
    if n == 1:
        return [SAFETENSORS_SINGLE]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


class HFCheckpointWriter:
    """A Hugging Face style safetensors checkpoint in ``directory``, written one tensor at a time.

    ``specs`` declares every tensor (name, shape, dtype) in the order they will be written. One
    shard gives ``model.safetensors``; more give ``model-XXXXX-of-YYYYY.safetensors`` and
    ``model.safetensors.index.json`` (``metadata.total_size``, ``weight_map``).
    """

    def __init__(self, directory: str, specs: Sequence[TensorSpec], *,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, metadata: Mapping[str, str] | None = None):
        self.directory = directory
        self.specs = list(specs)
        self._metadata = dict(metadata or {"format": "pt"})
        self.shards = plan_shards(self.specs, max_shard_bytes) if self.specs else []
        self.file_names = shard_file_names(len(self.shards)) if self.shards else []
        self._shard = -1
        self._writer: SafetensorsWriter | None = None
        os.makedirs(directory, exist_ok=True)

    def write(self, name: str, array: np.ndarray) -> None:
        if self._writer is None or self._writer.done:
            if self._writer is not None:
                self._writer.close()
            self._shard += 1
            if self._shard >= len(self.shards):
                raise CheckpointError(f"{self.directory}: tensor {name} was not declared")
            self._writer = SafetensorsWriter(os.path.join(self.directory, self.file_names[self._shard]),
                                             self.shards[self._shard], self._metadata)
        self._writer.write(name, array)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        written = self._shard + 1
        if written != len(self.shards):
            nxt = self.shards[written][0].name if written < len(self.shards) else "?"
            raise CheckpointError(f"{self.directory}: {written} of {len(self.shards)} shard(s) written (next: {nxt})")
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in self.specs)},
                     "weight_map": {s.name: f for f, shard in zip(self.file_names, self.shards) for s in shard}}
            with open(os.path.join(self.directory, SAFETENSORS_INDEX), "w") as f:
                json.dump(index, f, indent=2)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


def total_bytes(specs: Iterable[TensorSpec]) -> int:
    return sum(s.nbytes for s in specs)


def _numpy_to_torch(a: np.ndarray):
    import torch  # lazy: optional `torch` extra
    a = np.ascontiguousarray(a)
    if a.dtype == np.dtype(ml_dtypes.bfloat16):
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    if a.dtype in (np.dtype(ml_dtypes.float8_e4m3fn), np.dtype(ml_dtypes.float8_e5m2)):
        target = torch.float8_e4m3fn if a.dtype == np.dtype(ml_dtypes.float8_e4m3fn) else torch.float8_e5m2
        return torch.from_numpy(a.view(np.uint8).copy()).view(target)
    return torch.from_numpy(a.copy())


class TorchStateDictWriter:
    """A PyTorch ``.pt`` state_dict (``torch.save`` of an ordered name -> tensor mapping), written
    in the declared order. ``torch.save`` serialises the whole mapping at once, so the tensors are
    held in memory until :meth:`close`; prefer safetensors for large checkpoints."""

    def __init__(self, path: str, specs: Sequence[TensorSpec]):
        try:
            import torch  # noqa: F401  # lazy: optional `torch` extra
        except ImportError as e:
            raise CheckpointError(f"{path}: writing a .pt file needs PyTorch, which is not installed (install the "
                                  "`torch` extra, or write .safetensors)") from e
        self.path = path
        self._specs = list(specs)
        self._tensors: dict[str, Any] = {}

    def write(self, name: str, array: np.ndarray) -> None:
        n = len(self._tensors)
        if n >= len(self._specs) or self._specs[n].name != name:
            raise CheckpointError(f"{self.path}: tensor {name} is not the next declared tensor")
        s = self._specs[n]
        if tuple(array.shape) != tuple(s.shape) or array.dtype != np.dtype(s.dtype):
            raise CheckpointError(f"{self.path}: tensor {name} is {tuple(array.shape)} {array.dtype}, "
                                  f"declared {tuple(s.shape)} {np.dtype(s.dtype)}")
        self._tensors[name] = _numpy_to_torch(array)

    def close(self) -> None:
        import torch  # lazy: optional `torch` extra
        if len(self._tensors) != len(self._specs):
            raise CheckpointError(f"{self.path}: only {len(self._tensors)} of {len(self._specs)} tensors were written")
        torch.save(collections.OrderedDict(self._tensors), self.path)
        self._tensors.clear()

    def abort(self) -> None:
        self._tensors.clear()


def is_checkpoint_file_name(name: str) -> bool:
    return name.endswith((".safetensors",) + TORCH_SUFFIXES)


def file_writer(path: str, specs: Sequence[TensorSpec], *, name: str | None = None):
    """A single-file writer at ``path`` chosen by the file name ``name`` (default: ``path``):
    ``.safetensors`` (streamed) or ``.pt``/``.bin``/``.pth`` (torch)."""
    name = name or path
    if name.endswith(".safetensors"):
        return SafetensorsWriter(path, specs, {"format": "pt"})
    if name.endswith(TORCH_SUFFIXES):
        return TorchStateDictWriter(path, specs)
    raise CheckpointError(f"{name}: unsupported file type (expected .safetensors, .pt, .bin or .pth)")
