"""Comparing our arrays with reference arrays under the manifest's tolerances."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass
class Masked:
    """An output to compare only where ``mask`` is True (e.g. valid positions of a padded batch)."""

    value: Any
    mask: Any


@dataclasses.dataclass
class Result:
    component: str
    array: str
    passed: bool
    max_abs_err: float | None
    tolerance: str
    detail: str = ""

    def line(self) -> str:
        err = "-" if self.max_abs_err is None else f"{self.max_abs_err:.3e}"
        status = "PASS" if self.passed else "FAIL"
        extra = f"  ({self.detail})" if self.detail else ""
        return (f"{self.component:16s} {self.array:44s} max_abs_err={err:>10s}  "
                f"tol: {self.tolerance:24s} {status}{extra}")


def is_exact(spec: Mapping[str, Any], ref: np.ndarray) -> bool:
    return ref.dtype.kind in "iub" or spec.get("suggested_tolerance") == "exact"


def compare(component: str, name: str, ours: Any, ref: np.ndarray, spec: Mapping[str, Any]) -> Result:
    mask = None
    if isinstance(ours, Masked):
        ours, mask = ours.value, np.asarray(ours.mask, bool)
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    if ours.shape != ref.shape:
        return Result(component, name, False, None, "shape", f"shape {ours.shape} vs reference {ref.shape}")
    if mask is not None:
        mask = np.broadcast_to(mask.reshape(mask.shape + (1,) * (ref.ndim - mask.ndim)), ref.shape)
        ours, ref = ours[mask], ref[mask]
    if is_exact(spec, ref):
        diff = int(np.sum(ours.astype(np.int64) != ref.astype(np.int64))) if ref.size else 0
        err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        return Result(component, name, diff == 0, err, "exact", f"{diff} mismatching" if diff else "")
    atol = spec.get("suggested_atol")
    rtol = spec.get("suggested_rtol", 1e-4)
    if atol is None:
        return Result(component, name, False, None, "none", "manifest gives no tolerance for this array")
    o64, r64 = ours.astype(np.float64), ref.astype(np.float64)
    if not np.all(np.isfinite(o64)):
        return Result(component, name, False, None, f"atol {atol:g} rtol {rtol:g}", "non-finite values")
    err = np.abs(o64 - r64)
    ok = bool(np.all(err <= atol + rtol * np.abs(r64)))
    return Result(component, name, ok, float(err.max()) if err.size else 0.0, f"atol {atol:g} rtol {rtol:g}")
