"""Ahead-of-time compilation of the real train step for a TPU slice, from any machine.

``jax.experimental.topologies`` describes a TPU slice (e.g. ``v5p:4x4x4``) without the hardware
when libtpu is installed (the ``tpu`` extra); the train step of :mod:`train_step` is lowered
with abstract inputs carrying that slice's shardings and compiled by the TPU compiler. The
compiled program then explains the job before a pod is paid for:

* memory per device: XLA's totals (arguments, outputs, temporaries, code) and a breakdown of
  the state (parameters, optimizer state, gradients of the trainable parameters, batch), and
  the largest temporary buffers with shape, dtype and the model code (``jax.named_scope`` path)
  that made them, read from XLA's buffer assignment;
* collectives per step (:mod:`hlo_stats`): bytes by kind and by component, with loop bodies
  (scanned layers, microbatches, loss chunks) counted as many times as they run;
* a roofline **estimate** of the step time and MFU from the model FLOPs, the collective
  traffic and the chip's published peak FLOP/s and interconnect bandwidth.
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import importlib.metadata
import json
import os
import re
import tempfile
import time

import jax
import numpy as np
from jax.experimental import topologies
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from baichuan_audio_jax.training import hlo_stats
from baichuan_audio_jax.training.mesh import describe, mesh_from_config
from baichuan_audio_jax.training.optimizer import TRAIN
from baichuan_audio_jax.training.train_step import build_program

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_bytes: int  # HBM per chip (one JAX device per chip on these generations)
    peak_flops: float  # bf16 dense FLOP/s per chip (published)
    hbm_bandwidth: float  # bytes/s (published)
    ici_bandwidth: float  # bytes/s per chip, all links (published Gbps / 8)


# Google Cloud's published per-chip figures.
CHIPS = {
    "v4": Chip(32 * GIB, 275e12, 1228e9, 300e9),
    "v5e": Chip(16 * GIB, 197e12, 819e9, 200e9),
    "v5litepod": Chip(16 * GIB, 197e12, 819e9, 200e9),
    "v5p": Chip(95 * GIB, 459e12, 2765e9, 600e9),
    "v6e": Chip(32 * GIB, 918e12, 1640e9, 448e9),
}
HBM_BYTES = {k: c.hbm_bytes for k, c in CHIPS.items()}


@dataclasses.dataclass
class Buffer:
    bytes: int
    shape: str
    source: str  # op_name (named-scope path) of the instruction that defines it


@dataclasses.dataclass
class Plan:
    topology: str
    devices: int
    mesh: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int | None
    xla_flops_per_device: float
    model_flops_per_step: float
    compile_seconds: float
    trainable_report: str
    params_bytes: int = 0
    opt_state_bytes: int = 0
    grad_bytes: int = 0
    batch_bytes: int = 0
    top_buffers: list[Buffer] = dataclasses.field(default_factory=list)
    collective_bytes: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    chip: Chip | None = None
    microbatches: int = 1
    lower_seconds: float = 0.0  # tracing + lowering to StableHLO
    cached: bool = False  # compiler results read from the plan cache (the program is unchanged)

    @property
    def total_bytes(self) -> int:
        """Peak per-device footprint: arguments + outputs not aliased to (donated) arguments +
        temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def roofline(self) -> dict[str, float] | None:
        """Estimated seconds per step: compute at peak, collectives at ICI bandwidth; the step
        takes at least the larger (perfect overlap) and at most the sum (none)."""
        if self.chip is None:
            return None
        compute = self.model_flops_per_step / self.devices / self.chip.peak_flops
        traffic = sum(self.collective_bytes.get("traffic_by_kind", {}).values())
        comm = traffic / self.chip.ici_bandwidth
        best, worst = max(compute, comm), compute + comm
        return {"compute_s": compute, "comm_s": comm, "step_s_best": best, "step_s_worst": worst,
                "mfu_best": compute / best if best else 0.0, "mfu_worst": compute / worst if worst else 0.0}

    def lines(self) -> list[str]:
        gib = lambda b: f"{b / GIB:8.2f} GiB"
        hbm = "unknown" if self.hbm_bytes is None else gib(self.hbm_bytes).strip()
        verdict = {True: "fits", False: "DOES NOT FIT", None: "HBM size unknown"}[self.fits]
        out = [
            f"topology {self.topology}: {self.devices} devices, mesh {self.mesh}, {self.microbatches} microbatch(es)",
            "per-device memory:",
            f"  arguments    {gib(self.argument_bytes)}   (state + batch)",
            f"    parameters       {gib(self.params_bytes)}",
            f"    optimizer state  {gib(self.opt_state_bytes)}",
            f"    batch            {gib(self.batch_bytes)}",
            f"  outputs      {gib(self.output_bytes)}   ({gib(self.alias_bytes).strip()} aliased to donated arguments)",
            f"  temporaries  {gib(self.temp_bytes)}   (gradients of trainable parameters "
            f"{gib(self.grad_bytes).strip()}; the rest saved activations and working buffers)",
            f"  code         {gib(self.code_bytes)}",
            f"  total        {gib(self.total_bytes)}   of {hbm} HBM: {verdict}"
            + ("" if self.hbm_bytes is None else f" ({100 * self.total_bytes / self.hbm_bytes:.0f}%)"),
        ]
        if self.top_buffers:
            out.append("largest temporary buffers (XLA buffer assignment):")
            for b in self.top_buffers:
                out.append(f"  {gib(b.bytes)}  {b.shape:<34} {b.source.replace('jit(train_step)/', '')[-100:]}")
        if self.collective_bytes:
            out.append("collectives per step, per device (result bytes x executions):")
            for kind, v in sorted(self.collective_bytes["by_kind"].items(), key=lambda kv: -kv[1]):
                out.append(f"  {kind:<20} {gib(v)}")
            out.append("  by component:")
            for comp, v in sorted(self.collective_bytes["by_component"].items(), key=lambda kv: -kv[1]):
                out.append(f"    {comp:<18} {gib(v)}")
        out += [
            f"step FLOPs: {self.model_flops_per_step:.3e} model FLOPs (all devices, "
            f"{self.model_flops_per_step / self.devices:.3e} per device)",
            f"XLA cost analysis: {self.xla_flops_per_device:.3e} FLOPs per device (loop bodies — the "
            "scanned layers and microbatches — counted once)",
        ]
        r = self.roofline()
        if r is not None:
            out.append(f"roofline ESTIMATE (published chip peak, ring collectives at full ICI bandwidth): compute "
                       f"{r['compute_s']:.2f} s, collectives {r['comm_s']:.2f} s -> step {r['step_s_best']:.2f}-"
                       f"{r['step_s_worst']:.2f} s, MFU {100 * r['mfu_worst']:.0f}-{100 * r['mfu_best']:.0f}%")
        lowering = f"{self.lower_seconds:.1f} s of tracing and lowering"
        out.append(f"compile time: {self.compile_seconds:.1f} s" + (
            f" (when compiled; this run read the result from the plan cache after {lowering})" if self.cached
            else f" (+ {lowering})"))
        return out


def chip_for(topology: str) -> Chip | None:
    return CHIPS.get(topology.split(":")[0].lower())


def hbm_for(topology: str) -> int | None:
    chip = chip_for(topology)
    return None if chip is None else chip.hbm_bytes


def tpu_devices(topology: str) -> list:
    """Abstract devices of a TPU slice, e.g. ``v5p:4x4x4`` (needs libtpu, no TPU)."""

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as e:  # noqa: BLE001 - libtpu raises several types; the message is what matters
        raise RuntimeError(f"cannot describe TPU topology {topology!r} (is the `tpu` extra installed? "
                           f"`make plan` sets it up): {e}") from e
    return list(desc.devices)


def plan(config, topology: str) -> Plan:
    """Compiles the train step of ``config`` for the TPU slice ``topology``."""
    return plan_for_devices(config, tpu_devices(topology), topology, hbm_for(topology), chip=chip_for(topology))


def _shard_bytes(tree) -> int:
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


_VALUE = re.compile(r"value: <\d+ ([\w.\-]+) @[\d{},]*> \(size=(\d+),offset=(\d+)\): (\S+)")


def _top_buffers(dump_dir: str, hlo_text: str, n: int = 10) -> list[Buffer]:
    """The ``n`` largest values in temporary allocations of XLA's buffer assignment, with the
    op_name of the instruction that defines each."""
    files = sorted(glob.glob(os.path.join(dump_dir, "*train_step*buffer-assignment.txt")),
                   key=os.path.getsize)
    if not files:
        return []
    names = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name=\"([^\"]*)\"", line)
        if m:
            names[m.group(1)] = m.group(2)
    seen, out = set(), []
    temp = False
    with open(files[-1]) as f:
        for line in f:
            if line.startswith("allocation"):
                temp = not any(w in line for w in ("parameter", "output shape", "constant", "thread-local"))
                continue
            m = _VALUE.search(line)
            if not m or not temp:
                continue
            name, size, shape = m.group(1), int(m.group(2)), m.group(4)
            base = name.split(".")[0]
            if name in seen:
                continue
            seen.add(name)
            out.append(Buffer(size, shape.split("{")[0], names.get(name) or names.get(base) or name))
    out.sort(key=lambda b: -b.bytes)
    return out[:n]


def _program_dir(lowered, name: str, buffers: bool, cache: str | None) -> str | None:
    """With the compilation cache on, a directory keyed by the lowered program (its StableHLO,
    which carries the shardings of the slice), the slice and the compiler's versions: XLA's dump,
    the optimised HLO and the compiler's totals are kept there, so a second ``plan`` of an
    unchanged program reads them instead of compiling. (JAX's own cache cannot serve this: an
    executable compiled for a TPU slice cannot be loaded back on a machine without that TPU.)"""
    if not cache:
        return None
    h = hashlib.sha256()
    for part in (name, str(buffers), *map(_version, ("jax", "jaxlib", "libtpu")), lowered.as_text()):
        h.update(part.encode())
        h.update(b"\0")
    path = os.path.join(cache, "plan", h.hexdigest()[:24])
    os.makedirs(path, exist_ok=True)
    return path


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # libtpu on CPU-only installs
        return ""


_RESULT, _HLO = "compiled.json", "optimized_hlo.txt.gz"


def _compile_or_load(lowered, program_dir: str | None, buffers: bool) -> tuple[dict, str, bool]:
    """({memory totals, flops, compile seconds}, optimised HLO text, loaded from the plan cache)."""
    if program_dir and os.path.exists(os.path.join(program_dir, _RESULT)):
        with open(os.path.join(program_dir, _RESULT)) as f, gzip.open(os.path.join(program_dir, _HLO), "rt") as g:
            return json.load(f), g.read(), True
    options = {"xla_dump_to": program_dir, "xla_dump_hlo_as_text": True,
               "xla_dump_hlo_module_re": "train_step"} if buffers and program_dir else None
    # A hit in JAX's persistent cache (possible when planning for this machine's own devices)
    # would skip XLA and with it the buffer dump: compile for real. The plan cache is the cache here.
    # JAX decides once per process whether it uses the cache: switching it off only holds after a
    # reset, and a second reset after it lets the next compile set the cache up as configured.
    cache_was_on = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    jax_compilation_cache.reset_cache()
    try:
        t0 = time.perf_counter()
        compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
        seconds = time.perf_counter() - t0
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_was_on)
        jax_compilation_cache.reset_cache()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    result = {"argument_bytes": int(mem.argument_size_in_bytes), "output_bytes": int(mem.output_size_in_bytes),
              "alias_bytes": int(mem.alias_size_in_bytes), "temp_bytes": int(mem.temp_size_in_bytes),
              "code_bytes": int(mem.generated_code_size_in_bytes),
              "xla_flops_per_device": float((cost or {}).get("flops", 0.0)), "compile_seconds": seconds}
    hlo = compiled.as_text()
    if program_dir:  # HLO first, the result last: a result file means a complete entry
        with gzip.open(os.path.join(program_dir, _HLO), "wt") as g:
            g.write(hlo)
        tmp = os.path.join(program_dir, _RESULT + f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, os.path.join(program_dir, _RESULT))
    return result, hlo, False


def plan_for_devices(config, devices: list, name: str, hbm_bytes: int | None = None, *,
                     chip: Chip | None = None, buffers: bool = True, dump_dir: str | None = None,
                     cache_dir: str | None = None) -> Plan:
    """Compiles the train step of ``config`` on a mesh over ``devices`` (abstract TPU devices or
    real ones) without running it; raises if it does not compile (e.g. out of HBM). Compiler
    results are kept under ``cache_dir`` (default: JAX's compilation cache directory, when on)."""
    mesh = mesh_from_config(config.mesh, devices=devices)
    t0 = time.perf_counter()
    program = build_program(config, mesh)
    lowered = program.step.lower(program.abstract_state, program.abstract_batch())
    lower_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="plan_dump_") as tmp:
        where = dump_dir or _program_dir(lowered, name, buffers, cache_dir or jax.config.jax_compilation_cache_dir)
        result, hlo, cached = _compile_or_load(lowered, where or tmp, buffers)
        top = _top_buffers(where or tmp, hlo) if buffers else []
    state = program.abstract_state
    trainable = [a for a, lab in zip(jax.tree.leaves(state.params), jax.tree.leaves(program.labels)) if lab == TRAIN]
    return Plan(
        topology=name, devices=len(devices), mesh=describe(mesh), hbm_bytes=hbm_bytes,
        model_flops_per_step=program.flops_per_step, trainable_report=program.report(),
        params_bytes=_shard_bytes(state.params), opt_state_bytes=_shard_bytes(state.opt_state),
        grad_bytes=_shard_bytes(trainable), batch_bytes=_shard_bytes(program.abstract_batch()),
        top_buffers=top, collective_bytes=hlo_stats.summarize(hlo_stats.collectives(hlo)), chip=chip,
        microbatches=int(config.train.grad_accum_steps), lower_seconds=lower_seconds, cached=cached, **result)


def table(plans: list[Plan]) -> list[str]:
    """One line per topology: memory, collectives and the roofline estimate."""
    gib = lambda b: f"{b / GIB:.2f}"
    head = (f"{'topology':<12} {'chips':>5} {'mb':>3} {'temp GiB':>9} {'total GiB':>9} {'HBM %':>6} "
            f"{'coll GiB':>9} {'audio-head coll GiB':>19} {'step s (est.)':>13} {'MFU % (est.)':>12} {'compile s':>9}")
    out = [head]
    for p in plans:
        r = p.roofline()
        coll = sum(p.collective_bytes.get("by_kind", {}).values())
        head_coll = p.collective_bytes.get("by_component", {}).get("audio_head", 0.0)
        pct = "-" if p.hbm_bytes is None else f"{100 * p.total_bytes / p.hbm_bytes:.0f}"
        step = "-" if r is None else f"{r['step_s_best']:.2f}-{r['step_s_worst']:.2f}"
        mfu = "-" if r is None else f"{100 * r['mfu_worst']:.0f}-{100 * r['mfu_best']:.0f}"
        out.append(f"{p.topology:<12} {p.devices:>5} {p.microbatches:>3} {gib(p.temp_bytes):>9} "
                   f"{gib(p.total_bytes):>9} {pct:>6} {gib(coll):>9} {gib(head_coll):>19} {step:>13} {mfu:>12} "
                   f"{p.compile_seconds:>8.1f}{'*' if p.cached else ' '}")
    if any(p.cached for p in plans):
        out.append("* compiler results read from the plan cache (program unchanged since it was compiled)")
    return out
