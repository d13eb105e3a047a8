"""Ahead-of-time compilation of the real train step for a TPU slice, from any machine.

``jax.experimental.topologies`` describes a TPU slice (e.g. ``v5p:4x4x4``) without the hardware
when libtpu is installed (the ``tpu`` extra); the train step of :mod:`train_step` is lowered
with abstract inputs carrying that slice's shardings and compiled by the TPU compiler. The
compiled program's memory analysis says whether the job fits each chip's HBM before a pod is
paid for; its cost analysis gives the FLOPs XLA will execute (rematerialisation included),
next to the model FLOPs used for utilisation.
"""
from __future__ import annotations

import dataclasses
import time

from jax.experimental import topologies

from baichuan_audio_jax.training.mesh import describe, mesh_from_config
from baichuan_audio_jax.training.train_step import build_program

GIB = 1024 ** 3
# HBM per chip (one JAX device per chip on these generations), by topology prefix.
HBM_BYTES = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5litepod": 16 * GIB, "v5p": 95 * GIB, "v6e": 32 * GIB}


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

    @property
    def total_bytes(self) -> int:
        """Peak per-device footprint: arguments + outputs not aliased to (donated) arguments +
        temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def lines(self) -> list[str]:
        gib = lambda b: f"{b / GIB:8.2f} GiB"
        hbm = "unknown" if self.hbm_bytes is None else gib(self.hbm_bytes).strip()
        verdict = {True: "fits", False: "DOES NOT FIT", None: "HBM size unknown"}[self.fits]
        out = [
            f"topology {self.topology}: {self.devices} devices, mesh {self.mesh}",
            "per-device memory:",
            f"  arguments    {gib(self.argument_bytes)}   (state + batch)",
            f"  outputs      {gib(self.output_bytes)}   ({gib(self.alias_bytes).strip()} aliased to donated arguments)",
            f"  temporaries  {gib(self.temp_bytes)}",
            f"  code         {gib(self.code_bytes)}",
            f"  total        {gib(self.total_bytes)}   of {hbm} HBM: {verdict}"
            + ("" if self.hbm_bytes is None else f" ({100 * self.total_bytes / self.hbm_bytes:.0f}%)"),
            f"step FLOPs: {self.model_flops_per_step:.3e} model FLOPs (all devices, "
            f"{self.model_flops_per_step / self.devices:.3e} per device)",
            f"XLA cost analysis: {self.xla_flops_per_device:.3e} FLOPs per device (loop bodies — the "
            "scanned layers and microbatches — counted once)",
            f"compile time: {self.compile_seconds:.1f} s",
        ]
        return out


def hbm_for(topology: str) -> int | None:
    return HBM_BYTES.get(topology.split(":")[0].lower())


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
    return plan_for_devices(config, tpu_devices(topology), topology, hbm_for(topology))


def plan_for_devices(config, devices: list, name: str, hbm_bytes: int | None = None) -> Plan:
    """Compiles the train step of ``config`` on a mesh over ``devices`` (abstract TPU devices or
    real ones) without running it; raises if it does not compile (e.g. out of HBM)."""
    mesh = mesh_from_config(config.mesh, devices=devices)
    program = build_program(config, mesh)
    t0 = time.perf_counter()
    compiled = program.step.lower(program.abstract_state, program.abstract_batch()).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return Plan(
        topology=name, devices=len(devices), mesh=describe(mesh),
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), hbm_bytes=hbm_bytes,
        xla_flops_per_device=float((cost or {}).get("flops", 0.0)),
        model_flops_per_step=program.flops_per_step, compile_seconds=seconds,
        trainable_report=program.report())
