"""Packing examples into fixed-length rows, and the rows into training batches.

Grain's first-fit or best-fit packer places whole examples into ``seq_len``-token bins (an example
is never split); each example becomes a segment with ``segment_ids`` 1, 2, … in its row and
``positions`` restarting at 0, so attention stays inside a segment (``baichuan_audio_jax.batch``).
Tails are padding: segment 0, ``input_ids`` = the pad id, all weights 0. ``none`` puts one
example per row.
"""
from __future__ import annotations

import grain
import numpy as np

from baichuan_audio_jax.batch import FIELDS
from data_pipelines.sequences import EXAMPLE_FIELDS

METHODS = ("first_fit", "best_fit", "none")


def pack(ds: grain.IterDataset, *, seq_len: int, method: str, num_bins: int, pad_id: int, seed: int
         ) -> grain.IterDataset:
    """Rows of ``seq_len`` tokens with the fields of ``baichuan_audio_jax.batch``."""
    if method not in METHODS:
        raise ValueError(f"data.packing {method!r} is not one of {list(METHODS)}")
    packer = (grain.experimental.BestFitPackIterDataset if method == "best_fit"
              else grain.experimental.FirstFitPackIterDataset)
    rows = packer(
        ds,
        length_struct={k: seq_len for k in EXAMPLE_FIELDS},
        padding_struct={k: pad_id if k == "input_ids" else 0 for k in EXAMPLE_FIELDS},
        num_packing_bins=max(int(num_bins), 1),
        seed=seed,
        shuffle_bins=method != "none",
        max_sequences_per_bin=1 if method == "none" else None,
    )
    return rows.map(_row_fields)


def _row_fields(row: dict) -> dict:
    out = {k: row[k] for k in EXAMPLE_FIELDS}
    out["positions"] = row["input_ids_positions"]
    out["segment_ids"] = row["input_ids_segment_ids"]
    return out


class ToBatch:
    """Stacked rows → a batch of exactly ``rows`` rows in the dtypes of ``baichuan_audio_jax.batch``
    (the last batch of a finite run is completed with padding rows)."""

    def __init__(self, rows: int, seq_len: int, pad_id: int):
        self.rows, self.seq_len, self.pad_id = rows, seq_len, pad_id

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        out = {}
        for k, (dtype, suffix) in FIELDS.items():
            a = np.asarray(batch[k], dtype)
            missing = self.rows - a.shape[0]
            if missing:
                fill = self.pad_id if k == "input_ids" else 0
                a = np.concatenate([a, np.full((missing, self.seq_len) + suffix, fill, dtype)])
            out[k] = a
        return out
