"""Peak memory and throughput of checkpoint conversion, streaming vs. load-everything.

Builds a synthetic reference checkpoint with the real 7B tensor sizes (bf16): the full
152064-row embedding and LM head, ``--layers`` LLM layers, the 8 audio embeddings and an audio
head of ``--head-layers`` layers (linear1/linear2 at their real 7168x28672 / 3584x57344 sizes),
sharded like a Hugging Face checkpoint. Then, each in a fresh process whose peak RSS is read
from the kernel (``wait4``):

* streaming torch -> bundle and bundle -> torch (what ``baichuan-audio convert`` runs);
* the naive baseline: load every tensor, build the whole converted state, save it with Orbax;
  restore the whole state, build every reference tensor, save with ``safetensors``;
* an import-only process (the constant every run pays).

Prints peak RSS against the largest single tensor, GB/s, the streaming/naive ratios, and README
table rows. Run from the repository root::

    python benchmarks/convert_memory.py [--layers 1] [--head-layers 1] [--workdir DIR]

Needs about 3x the checkpoint size on disk and, for the baseline, about 4x in memory (about
12 GB and 15 GB with the defaults).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The LLM component (the largest tensors: the 152064-row embedding and LM head, the audio head's FFN).
COMPONENTS = ["llm"]
IMPORTS = ("import jax, numpy, orbax.checkpoint, tensorstore, safetensors, flax.nnx; "
           "import baichuan_audio_jax.conversion.convert")


def model_config(layers: int, head_layers: int):
    from baichuan_audio_jax.config import apply_overrides, load_config

    cfg = load_config(os.path.join(REPO, "configs", "baichuan_audio_7b.py"))
    apply_overrides(cfg, [f"model.llm.num_layers={layers}", f"model.audio_head.num_layers={head_layers}"])
    return cfg.model


def build_checkpoint(path: str, layers: int, head_layers: int) -> dict:
    """Writes the synthetic checkpoint (random finite bf16 values) and its reference config.json."""
    import ml_dtypes
    import numpy as np

    from baichuan_audio_jax.config import ModelConfig, reference_config_from_model
    from baichuan_audio_jax.conversion.components import components_of
    from baichuan_audio_jax.conversion.convert import abstract_state, flat_abstract
    from baichuan_audio_jax.conversion.mapping import combine_tables, expected_torch_shapes
    from baichuan_audio_jax.conversion.torch_io import HFCheckpointWriter, TensorSpec

    cfg = ModelConfig.from_config(model_config(layers, head_layers))
    concrete = combine_tables(*[t for c in components_of("model", COMPONENTS) for t in c.mapping_tables(cfg)])
    _, state = abstract_state("model", cfg, COMPONENTS)
    shapes = expected_torch_shapes(concrete, {p: tuple(v.shape) for p, v in flat_abstract(state).items()})
    bf16 = np.dtype(ml_dtypes.bfloat16)
    specs = [TensorSpec(c.torch, tuple(shapes[c.torch]), bf16) for c in concrete]
    writer = HFCheckpointWriter(path, specs)
    rng = np.random.default_rng(0)
    for s in specs:
        # sign, exponent 2^-8..2^-1 and mantissa at random: finite, weight-like magnitudes
        bits = rng.integers(0x3B80, 0x3F80, size=s.shape, dtype=np.uint16) | (rng.integers(
            0, 2, size=s.shape, dtype=np.uint16) << 15)
        writer.write(s.name, bits.view(bf16))
        del bits
    writer.close()
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(reference_config_from_model(cfg), f)
    return {"tensors": len(specs), "bytes": sum(s.nbytes for s in specs),
            "largest": max(s.nbytes for s in specs), "largest_name": max(specs, key=lambda s: s.nbytes).name}


# ----------------------------------------------------------------------------- measured runs

def run_streaming_to_bundle(src, dst, layers, head_layers):
    from baichuan_audio_jax.conversion.convert import torch_to_bundle
    from baichuan_audio_jax.conversion.torch_io import ReferenceCheckpoint

    t0 = time.perf_counter()
    torch_to_bundle(ReferenceCheckpoint(src), dst, model_config(layers, head_layers), components=COMPONENTS)
    return time.perf_counter() - t0


def run_streaming_to_torch(src, dst, layers, head_layers):
    from baichuan_audio_jax.conversion.convert import bundle_to_torch

    t0 = time.perf_counter()
    bundle_to_torch(src, dst)
    return time.perf_counter() - t0


def run_naive_to_bundle(src, dst, layers, head_layers):
    import orbax.checkpoint as ocp
    from flax import nnx
    from safetensors.numpy import load_file

    from baichuan_audio_jax.config import ModelConfig
    from baichuan_audio_jax.conversion.components import components_of
    from baichuan_audio_jax.conversion.convert import abstract_state
    from baichuan_audio_jax.conversion.mapping import combine_tables, load_tensors

    t0 = time.perf_counter()
    tensors = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(src, f)))
    cfg = ModelConfig.from_config(model_config(layers, head_layers))
    concrete = combine_tables(*[t for c in components_of("model", COMPONENTS) for t in c.mapping_tables(cfg)])
    _, state = abstract_state("model", cfg, COMPONENTS)
    state, _ = load_tensors(state, concrete, tensors.__getitem__, available=tensors.keys(),
                            dtype=tensors["model.norm.weight"].dtype)
    ocp.PyTreeCheckpointer().save(os.path.abspath(dst), nnx.to_pure_dict(state))
    return time.perf_counter() - t0


def run_naive_to_torch(src, dst, layers, head_layers):
    import orbax.checkpoint as ocp
    from safetensors.numpy import save_file

    from baichuan_audio_jax.config import ModelConfig
    from baichuan_audio_jax.conversion.components import components_of
    from baichuan_audio_jax.conversion.convert import abstract_state
    from baichuan_audio_jax.conversion.mapping import combine_tables, export_tensors

    t0 = time.perf_counter()
    cfg = ModelConfig.from_config(model_config(layers, head_layers))
    concrete = combine_tables(*[t for c in components_of("model", COMPONENTS) for t in c.mapping_tables(cfg)])
    restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(src))
    _, state = abstract_state("model", cfg, COMPONENTS)
    from flax import nnx

    nnx.replace_by_pure_dict(state, restored)
    os.makedirs(dst, exist_ok=True)
    save_file(dict(export_tensors(state, concrete)), os.path.join(dst, "model.safetensors"))
    return time.perf_counter() - t0


def run_build(src, dst, layers, head_layers):
    print(json.dumps(build_checkpoint(dst, layers, head_layers)))
    return 0.0


def run_verify(src, dst, layers, head_layers):
    """Bit-exact comparison of two reference checkpoints, one tensor at a time."""
    from baichuan_audio_jax.conversion.torch_io import ReferenceCheckpoint

    a, b = ReferenceCheckpoint(src), ReferenceCheckpoint(dst)
    exact = set(a.keys()) == set(b.keys()) and all(
        (a.get(k).dtype, a.get(k).tobytes()) == (b.get(k).dtype, b.get(k).tobytes()) for k in a.keys())
    print(json.dumps({"exact": exact}))
    return 0.0


def run_copy(src, dst, layers, head_layers):
    """The I/O ceiling: copying the checkpoint's files (read + write of the same bytes)."""
    t0 = time.perf_counter()
    shutil.copytree(src, dst)
    return time.perf_counter() - t0


MODES = {"stream_to_bundle": run_streaming_to_bundle, "stream_to_torch": run_streaming_to_torch,
         "naive_to_bundle": run_naive_to_bundle, "naive_to_torch": run_naive_to_torch,
         "build": run_build, "verify": run_verify, "copy": run_copy}


def measure(args: list[str], log: str) -> tuple[float, float, list[dict]]:
    """Runs this script in a fresh process; returns (peak RSS in bytes, seconds it reported, its
    JSON lines). The peak comes from ``wait4``; a child starts from its parent's high-water mark,
    which is why this driver itself imports nothing heavy."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        with open(log) as f:
            raise SystemExit(f"{' '.join(args)} failed:\n{f.read()[-3000:]}")
    with open(log) as f:
        records = [json.loads(line) for line in f if line.startswith("{")]
    seconds = [r["seconds"] for r in records if "seconds" in r]
    return usage.ru_maxrss * 1024.0, seconds[0] if seconds else 0.0, records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=1, help="LLM layers at the 7B widths")
    p.add_argument("--head-layers", type=int, default=1, help="audio-head layers at the 7B widths")
    p.add_argument("--workdir", default=None, help="where to create the scratch directory (default: the system temp)")
    p.add_argument("--keep", action="store_true", help="keep the scratch files")
    p.add_argument("--mode", choices=sorted(MODES), help=argparse.SUPPRESS)
    p.add_argument("--src", help=argparse.SUPPRESS)
    p.add_argument("--dst", help=argparse.SUPPRESS)
    p.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.imports_only:
        exec(IMPORTS)
        return
    if a.mode:
        seconds = MODES[a.mode](a.src, a.dst, a.layers, a.head_layers)
        print(json.dumps({"seconds": seconds}))
        return

    if a.workdir:
        os.makedirs(a.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="convert_memory_", dir=a.workdir)
    common = ["--layers", str(a.layers), "--head-layers", str(a.head_layers)]

    def path(name):
        return os.path.join(work, name)

    def run(mode, src, dst):
        if mode != "verify":
            shutil.rmtree(path(dst), ignore_errors=True)
        return measure(["--mode", mode, "--src", path(src), "--dst", path(dst), *common], path(f"{mode}.log"))

    try:
        t0 = time.perf_counter()
        ck = [r for r in run("build", "none", "reference")[2] if "tensors" in r][0]
        gb = ck["bytes"] / 1e9
        print(f"synthetic checkpoint: {ck['tensors']} tensors, {gb:.2f} GB bf16 ({a.layers} LLM layer(s) + "
              f"{a.head_layers} audio-head layer(s) at 7B widths, full vocabulary), largest tensor "
              f"{ck['largest_name']} {ck['largest'] / 1e9:.2f} GB; built in {time.perf_counter() - t0:.0f}s")
        base_rss, _, _ = measure(["--imports-only"], path("imports.log"))
        _, copy_s, _ = run("copy", "reference", "copy")
        shutil.rmtree(path("copy"))
        print(f"imports alone: peak RSS {base_rss / 1e9:.2f} GB; copying the files: {gb / copy_s:.2f} GB/s")
        results = {}
        for name, src, dst in (("stream_to_bundle", "reference", "bundle"), ("stream_to_torch", "bundle", "back"),
                               ("naive_to_bundle", "reference", "naive_bundle"),
                               ("naive_to_torch", "naive_bundle", "naive_back")):
            rss, sec, _ = run(name, src, dst)
            results[name] = (rss, sec)
            print(f"{name:17s} peak RSS {rss / 1e9:6.2f} GB ({(rss - base_rss) / 1e9:5.2f} GB above imports = "
                  f"{(rss - base_rss) / ck['largest']:4.2f}x the largest tensor)  {sec:6.1f}s  {gb / sec:5.2f} GB/s")
            if name == "stream_to_torch":
                exact = [r for r in run("verify", "reference", "back")[2] if "exact" in r][0]["exact"]
                print(f"streaming round trip bit-exact: {exact}")
                shutil.rmtree(path("back"))
            if name == "naive_to_torch":
                shutil.rmtree(path("naive_back"))
                shutil.rmtree(path("naive_bundle"))
        cmd = f"python benchmarks/convert_memory.py --layers {a.layers} --head-layers {a.head_layers}"
        print("\nREADME rows:")
        for direction, stream, naive in (("torch → bundle", "stream_to_bundle", "naive_to_bundle"),
                                         ("bundle → torch", "stream_to_torch", "naive_to_torch")):
            (sr, ss), (nr, ns) = results[stream], results[naive]
            print(f"| convert {direction}, {gb:.1f} GB bf16 (largest tensor {ck['largest'] / 1e9:.2f} GB) | "
                  f"peak RSS {sr / 1e9:.2f} GB (imports {base_rss / 1e9:.2f} GB + "
                  f"{(sr - base_rss) / ck['largest']:.1f}× largest tensor), {gb / ss:.2f} GB/s | "
                  f"{nr / 1e9:.2f} GB, {gb / ns:.2f} GB/s | memory {sr / nr:.2f}×, speed {ns / ss:.1f}× "
                  f"(file copy: {gb / copy_s:.2f} GB/s) | `{cmd}` |")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
