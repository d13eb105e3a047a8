"""Runs registered components on a fixture set and reports every compared array."""
from __future__ import annotations

import time
import traceback
from typing import Callable, Sequence

import jax

from baichuan_audio_jax.parity.compare import Result, compare
from baichuan_audio_jax.parity.fixtures import FixtureSet
from baichuan_audio_jax.parity.registry import runners


def run_component(fixtures: FixtureSet, name: str) -> list[Result]:
    available = runners()
    if name not in available:
        return [Result(name, "-", False, None, "-", "not yet supported by this version")]
    comp = fixtures.component(name)
    try:
        with jax.default_matmul_precision("highest"):
            ours = available[name](comp)
    except Exception as e:  # report the failure as a result, keep checking other components
        tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return [Result(name, "-", False, None, "-", f"error: {type(e).__name__}: {e} [{tb}]")]
    results = []
    ref_arrays = comp.arrays
    for key in comp.outputs():
        if key not in ours:
            results.append(Result(name, key, False, None, "-", "output not produced"))
            continue
        results.append(compare(name, key, ours[key], ref_arrays[key], comp.array_spec(key)))
    for key, value in ours.items():
        spec = comp.array_spec(key)
        if key in comp.outputs() or not spec or key not in ref_arrays:
            continue
        if spec.get("suggested_atol") is None and spec.get("suggested_tolerance") != "exact":
            continue
        results.append(compare(name, key, value, ref_arrays[key], spec))
    return results


def run(fixture_dir: str, components: Sequence[str] | None = None,
        emit: Callable[[str], None] = print) -> tuple[int, int]:
    fixtures = FixtureSet(fixture_dir)
    names = list(components) if components else fixtures.component_names
    passed = failed = 0
    for name in names:
        t0 = time.perf_counter()
        if name not in fixtures.component_names:
            emit(f"{name:16s} {'-':44s} not in this fixture set (it has {', '.join(fixtures.component_names)})  FAIL")
            failed += 1
            continue
        for r in run_component(fixtures, name):
            emit(r.line())
            passed += r.passed
            failed += not r.passed
        emit(f"{name:16s} ({time.perf_counter() - t0:.1f}s)")
    emit(f"parity: {passed} passed, {failed} failed")
    return passed, failed
