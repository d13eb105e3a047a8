"""What a compiled program moves between devices, read from its optimised HLO text.

:func:`collectives` lists every collective instruction (all-reduce, all-gather, reduce-scatter,
all-to-all, collective-permute, and their async ``-start`` forms) with its per-device result
shape, the size of its replica groups, how many times it runs per call (the product of the trip
counts of the ``while`` loops around it: scanned layers, microbatches, loss chunks; XLA's
``known_trip_count``, or the bound in the loop's condition where the TPU compiler dropped it) and
the ``op_name`` metadata JAX attached (the ``jax.named_scope`` path of the model code that made
it; for a compiler-made collective without one, the ``op_name`` of the loop that runs it).

:func:`traffic_bytes` turns one collective into the bytes a device sends over the interconnect
with the textbook ring algorithms (all-reduce 2(n−1)/n·size, all-gather (n−1)/n·output,
reduce-scatter (n−1)·output, permute and all-to-all ~size). These are estimates for comparing
programs and for a roofline, not measurements.
"""
from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from typing import Iterable

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
                "s4": 1, "u4": 1}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][a-z0-9\-]*)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")  # computation headers start at column 0
_CALLS = re.compile(r"\b(body|condition|to_apply|calls|true_computation|false_computation|branch_computations)="
                    r"(?:\{([^}]*)\}|%?([\w.\-]+))")
_CONST = re.compile(r"^\s*%?([\w.\-]+)\s*=\s*[su](?:8|16|32|64)\[\](?:\{[^}]*\})?\s+constant\((-?[0-9]+)\)")
_ROOT_LT = re.compile(r"^\s*ROOT\s+%?[\w.\-]+\s*=\s*pred\[\](?:\{[^}]*\})?\s+compare\(%?([\w.\-]+),\s*%?([\w.\-]+)\)"
                      r".*direction=LT")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CONDITION = re.compile(r"\bcondition=%?([\w.\-]+)")
_TRIP = re.compile(r'known_trip_count[^0-9]*"?n"?\s*:\s*"?([0-9]+)')


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str  # one of KINDS
    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype, dims) of the per-device result arrays
    group_size: int  # devices in one replica group (1 if unknown)
    count: int  # executions per call of the program (enclosing loop trip counts)
    op_name: str  # JAX's op_name metadata ('' if none)

    @property
    def bytes(self) -> int:
        """Bytes of the per-device result buffers of one execution."""
        return sum(_DTYPE_BYTES.get(dt, 4) * int(np.prod(dims, dtype=np.int64)) for dt, dims in self.shapes)

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(d for _, dims in self.shapes for d in dims)


def _arrays(shape_text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _ARRAY.findall(shape_text)
            if dt in _DTYPE_BYTES]


def _group_size(rest: str) -> int:
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)  # mesh['a'=2,'b'=2] {'b'}
    if m:
        sizes = dict(re.findall(r"'([^']+)'=([0-9]+)", m.group(1)))
        return int(np.prod([int(sizes.get(a, 1)) for a in re.findall(r"'([^']+)'", m.group(2))] or [1]))
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", rest)
    if m:
        return max(1, len([x for x in m.group(1).split(",") if x]))
    m = re.search(r"replica_groups=\[([0-9,]+)\]<=", rest)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"source_target_pairs=\{(.*?)\}\}", rest)
    if m:
        return 2
    return 1


def _condition_bounds(lines: list[str]) -> dict[str, int]:
    """computation name -> N for loop conditions of the form ``ROOT compare(counter, constant(N)),
    direction=LT`` (how a scan's condition reads once the TPU compiler has dropped the
    ``known_trip_count`` annotation; JAX loop counters start at 0)."""
    bounds: dict[str, int] = {}
    comp, consts = None, {}
    for line in lines:
        m = _COMP.match(line)
        if m:
            comp, consts = m.group(1), {}
            continue
        c = _CONST.match(line)
        if c:
            consts[c.group(1)] = int(c.group(2))
            continue
        r = _ROOT_LT.match(line)
        if r and comp is not None and r.group(2) in consts:
            bounds[comp] = consts[r.group(2)]
    return bounds


def _loop_multipliers(lines: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """(computation name -> executions per program call (1 for ENTRY, × trip count inside
    whiles), computation name -> op_name of the instruction that calls it). The trip count is
    XLA's ``known_trip_count`` when present, else read from the loop's condition."""
    comp = None
    edges: dict[str, list[tuple[str, int]]] = defaultdict(list)
    entry = None
    bounds = _condition_bounds(lines)
    for line in lines:
        m = _COMP.match(line)
        if m:
            comp = m.group(1)
            if line.startswith("ENTRY"):
                entry = comp
            continue
        if comp is None:
            continue
        trip = 1
        if " while(" in line:
            t = _TRIP.search(line)
            cond = _CONDITION.search(line)
            trip = int(t.group(1)) if t else bounds.get(cond.group(1), 1) if cond else 1
        op = _OP_NAME.search(line)
        for cm in _CALLS.finditer(line):
            for callee in re.split(r",\s*", cm.group(2) or cm.group(3)):
                edges[comp].append((callee.strip().lstrip("%"), trip if cm.group(1) == "body" else 1,
                                    op.group(1) if op else ""))
    mult: dict[str, int] = {}
    scope: dict[str, str] = {}

    def visit(name: str, factor: int, caller_op: str, depth: int = 0) -> None:
        if depth > 64:
            return
        mult[name] = max(mult.get(name, 0), factor)
        scope.setdefault(name, caller_op)
        for callee, trip, op_name in edges.get(name, ()):
            visit(callee, factor * trip, op_name or caller_op, depth + 1)

    if entry is not None:
        visit(entry, 1, "")
    return mult, scope


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective of an optimised HLO module (``compiled.as_text()``)."""
    lines = hlo_text.splitlines()
    mult, scope = _loop_multipliers(lines)
    out: list[Collective] = []
    comp = None
    for line in lines:
        m = _COMP.match(line)
        if m:
            comp = m.group(1)
            continue
        im = _INSTR.match(line)
        if not im:
            continue
        shape_text, opcode, rest = im.group(2), im.group(3), im.group(4)
        base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
        if base not in KINDS:
            continue
        arrays = _arrays(shape_text)
        if opcode.endswith("-start") and shape_text.startswith("("):
            if base == "all-gather":  # (operands..., outputs...): keep the outputs
                arrays = arrays[len(arrays) // 2:]
            elif base == "collective-permute":
                arrays = arrays[:1]
        op = _OP_NAME.search(rest)  # none on some compiler-made collectives: use the enclosing loop's
        out.append(Collective(kind=base, shapes=tuple(arrays), group_size=_group_size(rest),
                              count=mult.get(comp, 1), op_name=op.group(1) if op else scope.get(comp, "")))
    return out


def traffic_bytes(c: Collective) -> float:
    """Estimated bytes one device sends for one execution of ``c`` (ring algorithms)."""
    n = max(c.group_size, 1)
    if n == 1:
        return 0.0
    if c.kind == "all-reduce":
        return 2.0 * (n - 1) / n * c.bytes
    if c.kind == "all-gather":
        return (n - 1) / n * c.bytes
    if c.kind == "reduce-scatter":
        return float((n - 1) * c.bytes)
    return float(c.bytes)


COMPONENTS = ("audio_head", "llm_layers", "lm_head_loss", "embeddings", "optimizer")


def component_of(op_name: str) -> str:
    """A coarse component from the ``jax.named_scope`` path in ``op_name``."""
    for scope in ("audio_head", "lm_head_loss", "llm_layers", "embeddings"):
        if scope in op_name:
            return scope
    if "jvp" not in op_name and "transpose" not in op_name and op_name:
        return "optimizer"
    return "other"


def summarize(colls: Iterable[Collective]) -> dict[str, dict[str, float]]:
    """{'by_kind': {kind: bytes per call}, 'by_component': {...}}: result bytes × executions."""
    by_kind: dict[str, float] = defaultdict(float)
    by_comp: dict[str, float] = defaultdict(float)
    traffic: dict[str, float] = defaultdict(float)
    for c in colls:
        by_kind[c.kind] += c.bytes * c.count
        by_comp[component_of(c.op_name)] += c.bytes * c.count
        traffic[c.kind] += traffic_bytes(c) * c.count
    return {"by_kind": dict(by_kind), "by_component": dict(by_comp), "traffic_by_kind": dict(traffic)}
