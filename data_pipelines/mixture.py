"""Mixing sources (tasks) by weight.

Each source is one stream (typically one task: an ASR manifest, INTLV shards, …); the mixture
draws from source i a share ``w_i / Σw`` of the examples, deterministically by index (Grain's
proportional selection), so the mix is the same on every run and resumes exactly. Weights apply
to records, not tokens. A zero weight leaves a source out.
"""
from __future__ import annotations

from typing import Sequence

import grain


def normalized_weights(weights: Sequence[float], labels: Sequence[str]) -> list[float]:
    for w, label in zip(weights, labels):
        if not w >= 0:
            raise ValueError(f"mixture weight of {label} must be >= 0, got {w}")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"mixture weights of {list(labels)} are all zero")
    return [w / total for w in weights]


def mix(datasets: Sequence[grain.MapDataset], weights: Sequence[float], labels: Sequence[str]) -> grain.MapDataset:
    """One dataset drawing from ``datasets`` in proportion to ``weights`` (zero-weight ones dropped)."""
    if len(datasets) != len(weights):
        raise ValueError(f"{len(datasets)} sources but {len(weights)} weights")
    shares = normalized_weights(weights, labels)
    kept = [(d, w) for d, w in zip(datasets, shares) if w > 0]
    if len(kept) == 1:
        return kept[0][0]
    return grain.MapDataset.mix([d for d, _ in kept], [w for _, w in kept])
