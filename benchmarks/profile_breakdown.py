"""Per-component time of a compiled JAX program from a ``jax.profiler`` trace.

``jax.profiler.trace(dir, create_perfetto_trace=True)`` records one event per executed HLO
instruction (``args.hlo_op``, ``args.hlo_module``). The compiled module's text
(``jitted.lower(...).compile().as_text()``) gives each instruction's Python stack (its
``stack_frame_id`` into the ``StackFrames``/``FileLocations`` tables). :func:`breakdown` joins the
two and assigns every instruction to a component by its stack — named scopes
(``jax.named_scope``) first, then the project's modules (``audio_head.py`` → audio head,
``dot_product_attention`` → attention core, ...). Backward ops carry the stack of their forward
op, so each component is its forward + backward time.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

_FILE = re.compile(r'^(\d+) "(.*)"$')
_LOC = re.compile(r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)")
_FRAME = re.compile(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)\}")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?(?: calls=%([\w.\-]+))?.*?metadata=\{([^}]*)\}")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")

# (component, predicate over the stack as "file:function" strings, outermost first)
RULES = [
    ("optimizer (clip + AdamW + apply)", lambda st: any("optax" in f or "optimizer.py" in f for f in st)),
    ("audio head (depth transformer + classifiers)", lambda st: any("audio_head.py" in f for f in st)),
    ("audio CE + position gather", lambda st: any(":audio_ce_sum" in f or ":gather_audio" in f for f in st)),
    ("LM head + text CE", lambda st: any(":text_ce_sum" in f for f in st)),
    ("embeddings (text + audio)", lambda st: any(":embed" in f or ":audio_frame_embedding" in f for f in st)),
    ("attention core (scores, softmax, PV)", lambda st: any(":dot_product_attention" in f for f in st)),
    ("attention projections + RoPE", lambda st: any("attention.py" in f for f in st)),
    ("MLP (SwiGLU)", lambda st: any("mlp.py" in f for f in st)),
    ("norms", lambda st: any("norms.py" in f for f in st)),
    ("decoder stack: layout copies, loop, masks", lambda st: any(":AudioLLM.__call__" in f for f in st)),
]


def _tables(text: str):
    files, funcs, locs, frames = {}, {}, {}, {}
    section = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            section = line
            continue
        if line.startswith("%") or line.startswith("ENTRY") or line.startswith("HloModule"):
            section = None
            continue
        if section == "FileNames" and (m := _FILE.match(line)):
            files[int(m[1])] = m[2]
        elif section == "FunctionNames" and (m := _FILE.match(line)):
            funcs[int(m[1])] = m[2]
        elif section == "FileLocations" and (m := _LOC.match(line)):
            locs[int(m[1])] = (int(m[2]), int(m[3]))
        elif section == "StackFrames" and (m := _FRAME.match(line)):
            frames[int(m[1])] = (int(m[2]), int(m[3]))
    return files, funcs, locs, frames


def _stack(frame_id: int, files, funcs, locs, frames) -> list[str]:
    # The text form numbers frames from 1 and writes a parent as its number + 1 (1: no parent).
    out, seen = [], set()
    while frame_id in frames and frame_id not in seen:
        seen.add(frame_id)
        loc, parent = frames[frame_id]
        f, fn = locs.get(loc, (0, 0))
        out.append(f"{os.path.basename(files.get(f, '?'))}:{funcs.get(fn, '?')}")
        frame_id = parent - 1
    return out[::-1]


def instruction_stacks(hlo_text: str) -> dict[str, tuple[str, list[str]]]:
    """{instruction name: (op_name metadata, stack outermost first)}; a fusion takes the stack of
    the heaviest op it calls (a dot if any)."""
    files, funcs, locs, frames = _tables(hlo_text)
    comp = None
    info: dict[str, tuple[str, int, str | None]] = {}
    comp_ops: dict[str, list[tuple[str, int, bool]]] = collections.defaultdict(list)
    for line in hlo_text.splitlines():
        if m := _COMP.match(line):
            comp = m[1]
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        meta = m[3]
        op_name = re.search(r'op_name="([^"]*)"', meta)
        frame = re.search(r"stack_frame_id=(\d+)", meta)
        entry = (op_name[1] if op_name else "", int(frame[1]) if frame else 0, m[2])
        info[m[1]] = entry
        is_dot = " dot(" in line or " convolution(" in line
        comp_ops[comp].append((entry[0], entry[1], is_dot))
    out = {}
    for name, (op_name, frame, called) in info.items():
        if called and comp_ops.get(called):
            ops = comp_ops[called]
            dots = [o for o in ops if o[2] and o[1]]
            pick = dots[0] if dots else next((o for o in ops[::-1] if o[1]), (op_name, frame, False))
            op_name, frame = pick[0], pick[1]
        out[name] = (op_name, _stack(frame, files, funcs, locs, frames))
    return out


def component_of(op_name: str, stack: list[str]) -> str:
    scopes = [p for p in op_name.split("/")[1:-1] if not re.match(r"^(jvp|transpose|vmap|while|body|cond|"
                                                                 r"checkpoint|remat|pjit|jit)\b", p)]
    for name, rule in RULES:
        if rule(stack):
            return name
    if not stack and not op_name:
        return "XLA-inserted copies/broadcasts (no source)"
    if scopes:
        return f"other (scope {scopes[-1]})"
    return f"other ({stack[-1] if stack else op_name.split('/')[-1] or '?'})"


def load_events(trace_dir: str) -> list[dict]:
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    with gzip.open(paths[-1]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def breakdown(trace_dir: str, hlo_text: str) -> tuple[dict[str, float], float]:
    """({component: seconds summed over the trace}, total op seconds) of the module in ``hlo_text``."""
    module = re.match(r"HloModule ([\w.\-]+)", hlo_text)[1]
    stacks = instruction_stacks(hlo_text)
    times: dict[str, float] = collections.Counter()
    for e in load_events(trace_dir):
        args = e.get("args") or {}
        if e.get("ph") != "X" or args.get("hlo_module") != module or "hlo_op" not in args:
            continue
        op = args["hlo_op"]
        op_name, stack = stacks.get(op, ("", []))
        times[component_of(op_name, stack)] += float(e.get("dur", 0.0)) * 1e-6
    return dict(times), sum(times.values())
