"""Checkpoint file I/O: reference-side safetensors/.pt reading and streaming writing, Orbax
checkpoints written one slice at a time and read back one slice at a time, atomic outputs.

Every comparison here is exact (bytes and dtypes): these layers only move data.
"""
import json
import os
import resource

import ml_dtypes
import numpy as np
import pytest
from conftest import requires_torch

from baichuan_audio_jax.conversion.orbax_io import OrbaxParams, StreamedArray, StreamError, save_tree
from baichuan_audio_jax.conversion.torch_io import (
    SAFETENSORS_INDEX,
    CheckpointError,
    HFCheckpointWriter,
    ReferenceCheckpoint,
    SafetensorsWriter,
    TensorSpec,
    read_shape_listing,
)
from baichuan_audio_jax.staging import staged_directory

BF16 = np.dtype(ml_dtypes.bfloat16)


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "a.weight": rng.normal(size=(7, 5)).astype(BF16),
        "a.bias": rng.normal(size=(7,)).astype(np.float32),
        "b.half": rng.normal(size=(3, 2, 2)).astype(np.float16),
        "c.ids": rng.integers(0, 9, size=(4,)).astype(np.int64),
        "d.scalar": np.array(1.5, np.float32),
        "e.empty": np.zeros((0, 3), BF16),
    }


def _write_dir(path, tensors, max_shard_bytes):
    specs = [TensorSpec(k, v.shape, v.dtype) for k, v in tensors.items()]
    w = HFCheckpointWriter(str(path), specs, max_shard_bytes=max_shard_bytes)
    for k, v in tensors.items():
        w.write(k, v)
    w.close()
    return w


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_sharded_writer_round_trips_every_dtype(tmp_path):
    """Sharded safetensors + index written tensor by tensor read back bit-exactly, by this
    package and by the safetensors library."""
    from safetensors.numpy import load_file

    tensors = _tensors()
    w = _write_dir(tmp_path / "ck", tensors, max_shard_bytes=64)
    assert len(w.file_names) > 2 and os.path.exists(tmp_path / "ck" / SAFETENSORS_INDEX)
    index = json.loads((tmp_path / "ck" / SAFETENSORS_INDEX).read_text())
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())
    ck = ReferenceCheckpoint(tmp_path / "ck")
    assert ck.keys() == list(tensors)
    for k, v in tensors.items():
        assert _same(ck.get(k), v), k
    from_library = {}
    for f in w.file_names:
        from_library.update(load_file(str(tmp_path / "ck" / f)))
    for k, v in tensors.items():
        assert _same(from_library[k], v), k


def test_single_shard_is_model_safetensors_and_torch_reads_it(tmp_path):
    torch = requires_torch()
    from safetensors.torch import load_file

    tensors = _tensors()
    _write_dir(tmp_path / "ck", tensors, max_shard_bytes=10**9)
    assert sorted(os.listdir(tmp_path / "ck")) == ["model.safetensors"]
    loaded = load_file(str(tmp_path / "ck" / "model.safetensors"))
    assert loaded["a.weight"].dtype == torch.bfloat16
    np.testing.assert_array_equal(loaded["a.weight"].view(torch.int16).numpy(), tensors["a.weight"].view(np.int16))
    np.testing.assert_array_equal(loaded["c.ids"].numpy(), tensors["c.ids"])


def test_pt_state_dict_is_read_exactly(tmp_path):
    torch = requires_torch()
    sd = {"w": torch.randn(4, 3).to(torch.bfloat16), "b": torch.randn(3), "n": torch.arange(5)}
    torch.save(sd, tmp_path / "m.pt")
    ck = ReferenceCheckpoint(tmp_path / "m.pt")
    assert ck.listing()["w"] == ((4, 3), BF16)
    np.testing.assert_array_equal(ck.get("w").view(np.int16), sd["w"].view(torch.int16).numpy())
    np.testing.assert_array_equal(ck.get("b"), sd["b"].numpy())
    torch.save({"model": sd}, tmp_path / "nested.pt")
    with pytest.raises(CheckpointError, match="nested.pt: expected a state_dict"):
        ReferenceCheckpoint(tmp_path / "nested.pt")


def test_listing_reads_only_headers(tmp_path):
    """A declared 4 GB tensor whose data were never written (sparse file) lists instantly and
    without memory: only the header is read."""
    path = str(tmp_path / "big.safetensors")
    spec = TensorSpec("huge", (2**30,), np.dtype(np.float32))
    w = SafetensorsWriter(path, [spec])
    w.abort()
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) + spec.nbytes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ck = ReferenceCheckpoint(path)
    assert ck.listing() == {"huge": ((2**30,), np.dtype(np.float32))}
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_union_of_files_rejects_conflicting_duplicates(tmp_path):
    t = _tensors()
    _write_dir(tmp_path / "x", {"a.weight": t["a.weight"]}, 10**9)
    _write_dir(tmp_path / "y", {"a.weight": t["a.weight"]}, 10**9)
    _write_dir(tmp_path / "z", {"a.weight": t["a.weight"] * 2}, 10**9)
    assert ReferenceCheckpoint([tmp_path / "x", tmp_path / "y"]).keys() == ["a.weight"]
    with pytest.raises(CheckpointError, match="a.weight holds different values in .*x.* and .*z"):
        ReferenceCheckpoint([tmp_path / "x", tmp_path / "z"])


def test_broken_directories_name_the_file_and_key(tmp_path):
    t = _tensors()
    w = _write_dir(tmp_path / "ck", t, max_shard_bytes=64)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        ReferenceCheckpoint(tmp_path)
    index_path = tmp_path / "ck" / SAFETENSORS_INDEX
    index = json.loads(index_path.read_text())
    index["weight_map"]["ghost.weight"] = w.file_names[0]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"{w.file_names[0]}: tensor ghost.weight is listed in the index"):
        ReferenceCheckpoint(tmp_path / "ck")
    del index["weight_map"]["ghost.weight"]
    os.remove(tmp_path / "ck" / w.file_names[-1])
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"to {w.file_names[-1]}, which does not exist"):
        ReferenceCheckpoint(tmp_path / "ck")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="bad.safetensors: not a readable safetensors file"):
        ReferenceCheckpoint(tmp_path / "bad.safetensors")


def test_writer_enforces_declared_order_shapes_and_dtypes(tmp_path):
    specs = [TensorSpec("x", (2,), np.dtype(np.float32)), TensorSpec("y", (3,), BF16)]
    w = SafetensorsWriter(str(tmp_path / "f.safetensors"), specs)
    with pytest.raises(CheckpointError, match="expected tensor x next, got y"):
        w.write("y", np.zeros(3, BF16))
    with pytest.raises(CheckpointError, match=r"tensor x is \(2,\) bfloat16, declared \(2,\) float32"):
        w.write("x", np.zeros(2, BF16))
    w.write("x", np.zeros(2, np.float32))
    with pytest.raises(CheckpointError, match="only 1 of 2 tensors were written"):
        w.close()


def test_shape_listing_formats(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"a": [2, 3], "b": {"shape": [4], "dtype": "bfloat16"}}))
    listing = read_shape_listing(flat)
    assert listing.model == {"a": ((2, 3), None), "b": ((4,), BF16)} and listing.vocoder is None
    flat.write_text(json.dumps({"a": "2x3"}))
    with pytest.raises(CheckpointError, match="entry a has shape '2x3'"):
        read_shape_listing(flat)


def test_streamed_orbax_checkpoint_slices_and_restore(tmp_path):
    """Layer slices written in any order by a producer form an ordinary Orbax checkpoint:
    Orbax restores it (with a dtype cast) and single slices read back exactly."""
    import jax
    import orbax.checkpoint as ocp

    rng = np.random.default_rng(1)
    stack = rng.normal(size=(3, 4, 5)).astype(BF16)
    whole = rng.normal(size=(6, 2)).astype(np.float32)
    tree = {"m": {"layers": {"w": StreamedArray(("m", "layers", "w"), (3, 4, 5), BF16, stacked=True)},
                  "list": {0: {"e": StreamedArray(("m", "list", 0, "e"), (6, 2), np.dtype(np.float32))}}},
            "plain": np.arange(4, dtype=np.int32)}

    async def produce(target):
        for i in (2, 0, 1):
            await target.write(("m", "layers", "w"), stack[i], i)
        await target.write(("m", "list", 0, "e"), whole)

    save_tree(tmp_path / "ck", tree, produce, max_inflight_bytes=1)
    params = OrbaxParams(tmp_path / "ck")
    assert params.shape(("m", "layers", "w")) == (3, 4, 5) and params.dtype(("m", "layers", "w")) == BF16
    assert _same(params.read(("m", "layers", "w"), 1), stack[1])
    assert _same(params.read(("m", "list", 0, "e")), whole)
    target = {"m": {"layers": {"w": jax.ShapeDtypeStruct((3, 4, 5), np.float32)},
                    "list": {0: {"e": jax.ShapeDtypeStruct((6, 2), np.float32)}}},
              "plain": jax.ShapeDtypeStruct((4,), np.int32)}
    restored = ocp.StandardCheckpointer().restore(str(tmp_path / "ck"), target)
    np.testing.assert_array_equal(np.asarray(restored["m"]["layers"]["w"]), stack.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(restored["plain"]), np.arange(4))


def test_streamed_checkpoint_with_a_missing_slice_fails(tmp_path):
    tree = {"w": StreamedArray(("w",), (2, 3), np.dtype(np.float32), stacked=True)}

    async def produce(target):
        await target.write(("w",), np.zeros(3, np.float32), 0)

    with pytest.raises(StreamError, match=r"w: layer slot\(s\) \[1\] never written"):
        with staged_directory(tmp_path / "out") as staging:
            save_tree(os.path.join(staging, "params"), tree, produce)
    assert os.listdir(tmp_path) == []  # nothing left behind, not even the staging directory


def test_staged_directory_never_replaces_silently(tmp_path):
    out = tmp_path / "out"
    with staged_directory(out) as d:
        open(os.path.join(d, "a"), "w").close()
    assert os.listdir(out) == ["a"]
    with pytest.raises(FileExistsError, match="already exists"):
        with staged_directory(out):
            pass
    with staged_directory(out, overwrite=True) as d:
        open(os.path.join(d, "b"), "w").close()
    assert os.listdir(out) == ["b"] and sorted(os.listdir(tmp_path)) == ["out"]
