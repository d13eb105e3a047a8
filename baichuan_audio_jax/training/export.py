"""Trained runs → the reference PyTorch layout.

A checkpoint of the ``audio_tokenizer`` or ``flow_matching`` task holds the reference modules
under known attributes (``tokenizer``: encoder, VQ bridge with codebooks and EMA statistics,
audio decoder; ``flow``: prenet and U-Net). :func:`reference_tensors` maps them through the
conversion tables (:mod:`baichuan_audio_jax.conversion.tables`) to reference names
(``audio_tokenizer.audio_model.*``, ``.audio_bridge_model.*``, ``.audio_decoder.*``,
``.audio_flow_matching_decoder.*``) in the reference layouts (Linear ``[out, in]``, Conv1d
``[out, in, k]``, ConvTranspose1d ``[in, out, k]``). Training-only parts (the alignment LLM, its
adapter, code-usage counters, the vocoder's discriminators) are not part of the reference model
and are left out.

A ``vocoder`` run's generator is the reference ``HiFTGenerator``: :func:`export_run` writes it as
one file in the ``hift.pt`` layout (``HiFTGenerator.state_dict()`` names, weight norm as
``weight_g``/``weight_v``), ``hift.safetensors`` or, with the torch extra, ``hift.pt``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_dtypes  # noqa: F401  (registers the bfloat16 numpy dtype)
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from baichuan_audio_jax.config import ModelConfig, reference_config_from_model
from baichuan_audio_jax.conversion.mapping import combine_tables, export_tensors
from baichuan_audio_jax.conversion.tables.audio_tokenizer import audio_tokenizer_tables
from baichuan_audio_jax.conversion.tables.flow_matching import flow_matching_table
from baichuan_audio_jax.conversion.tables.vocoder import vocoder_table
from baichuan_audio_jax.conversion.torch_io import TensorSpec, file_writer
from baichuan_audio_jax.sharding import make_mesh
from baichuan_audio_jax.training.initial_weights import run_state

# task -> (attribute of the trained model, table functions of the part)
_PARTS = {
    "audio_tokenizer": [("tokenizer", "audio_tokenizer")],
    "flow_matching": [("tokenizer", "audio_tokenizer"), ("flow", "flow_matching")],
    "vocoder": [("generator", "vocoder")],
}
VOCODER_FILE = "hift.safetensors"


def _tables(kind: str, cfg: ModelConfig):

    if kind == "vocoder":
        return [vocoder_table(cfg.vocoder)]
    return list(audio_tokenizer_tables(cfg)) if kind == "audio_tokenizer" else [flow_matching_table(cfg)]


def trained_model(workdir: str, step: int | None = None) -> tuple[nnx.Module, Any, int]:
    """(model with the checkpoint's weights, run config, step) of a training run, on one device."""

    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state, program = run_state(workdir, mesh, step)
    model = nnx.merge(program.graphdef, nnx.State(state.params), nnx.State(state.model_state))
    return model, program.config, int(state.step)


def reference_tensors(model: nnx.Module, task: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Reference name -> float32 numpy tensor for every reference tensor of the trained parts."""

    if task not in _PARTS:
        raise ValueError(f"runs of task {task!r} cannot be exported here (tasks: {sorted(_PARTS)})")
    out: dict[str, np.ndarray] = {}
    for attr, kind in _PARTS[task]:
        state = nnx.state(getattr(model, attr))
        for name, t in export_tensors(state, combine_tables(*_tables(kind, cfg))):
            out[name] = np.ascontiguousarray(np.asarray(t, np.float32))
    return out


def write_vocoder_file(tensors: dict[str, np.ndarray], path: str) -> None:
    """One ``hift.pt``-layout file: ``.safetensors``, or ``.pt``/``.bin``/``.pth`` (needs torch)."""
    writer = file_writer(path, [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in tensors.items()])
    try:
        for k, v in tensors.items():
            writer.write(k, v)
    except BaseException:
        writer.abort()
        raise
    writer.close()


def export_run(workdir: str, out_dir: str, step: int | None = None, dtype: str = "float32",
               vocoder_file: str = VOCODER_FILE) -> dict:
    """Writes ``out_dir/model.safetensors`` (reference names and layouts) and ``out_dir/config.json``
    (reference format) for a training run — for a ``vocoder`` run ``out_dir/<vocoder_file>``
    (``hift.safetensors`` or ``hift.pt``) instead; returns a summary."""

    model, config, at = trained_model(workdir, step)
    cfg = ModelConfig.from_config(config.model)
    tensors = reference_tensors(model, str(config.task), cfg)
    if dtype != "float32":
        tensors = {k: v.astype(np.dtype(dtype)) for k, v in tensors.items()}
    os.makedirs(out_dir, exist_ok=True)
    if str(config.task) == "vocoder":
        path = os.path.join(out_dir, vocoder_file)
        write_vocoder_file(tensors, path)
        return dict(task="vocoder", step=at, tensors=len(tensors),
                    elements=int(sum(v.size for v in tensors.values())), out=path)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(reference_config_from_model(cfg, torch_dtype=dtype), f, indent=1)
    return dict(task=str(config.task), step=at, tensors=len(tensors),
                elements=int(sum(v.size for v in tensors.values())), out=out_dir)
