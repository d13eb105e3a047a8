"""Rematerialisation policies by name (a config choice: ``model.remat_policy``)."""
from __future__ import annotations

from typing import Callable

import jax

_cp = jax.checkpoint_policies

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no rematerialisation: keep every activation
    "full": _cp.nothing_saveable,  # recompute the whole layer in the backward pass
    "dots": _cp.checkpoint_dots,  # keep matmul outputs
    "dots_no_batch": _cp.dots_with_no_batch_dims_saveable,  # keep weight matmuls only
    "offload_dots": _cp.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def remat(fn: Callable, policy: str) -> Callable:
    """Wraps ``fn`` in ``jax.checkpoint`` with the named policy (identity for ``none``)."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {policy!r}; choose from {sorted(REMAT_POLICIES)}")
    if policy == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[policy], prevent_cse=False)
