"""Training data sources: a registry by name and the built-in ``synthetic`` source.

A source is ``build(config, *, process_index, process_count) -> iterator``. The iterator yields
this host's share of the global batch (``config.data.batch_size // process_count`` rows of
``config.data.seq_len`` positions) as a dict of numpy arrays in the layout of
:mod:`baichuan_audio_jax.batch`; hosts get disjoint rows. ``get_state()`` returns a
JSON-serialisable object and ``set_state(state)`` resumes so that the remaining batches are
exactly those an uninterrupted run would produce; the engine stores the state in every checkpoint.

``config.data.source`` selects the source: ``synthetic`` (below), or one registered by the data
pipelines when ``data_pipelines`` is imported (as ``baichuan-audio train`` does): ``grain`` (token
sequences of every task) and ``grain_audio`` (padded audio batches of the tokenizer and
flow-matching tasks). The library never imports the data pipelines; they register here.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import numpy as np

from baichuan_audio_jax.batch import NUM_CODEBOOKS
from baichuan_audio_jax.config import ModelConfig


class TrainIterator(Protocol):
    def __iter__(self) -> Iterator[dict[str, np.ndarray]]: ...
    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> Any: ...
    def set_state(self, state: Any) -> None: ...


Builder = Callable[..., TrainIterator]
_SOURCES: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: ``@register("name")`` makes ``build`` selectable as ``data.source=name``."""
    def deco(fn: Builder) -> Builder:
        _SOURCES[name] = fn
        return fn
    return deco


def available() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> Builder:
    if name in _SOURCES:
        return _SOURCES[name]
    hint = " (the grain sources are registered by `import data_pipelines`)" if name.startswith("grain") else ""
    raise ValueError(f"unknown data.source {name!r}; choose from {available()}{hint}")


def build_iterator(config, *, process_index: int = 0, process_count: int = 1) -> TrainIterator:
    """The iterator of ``config.data.source`` for this host."""
    batch = int(config.data.batch_size)
    if batch % process_count:
        raise ValueError(f"data.batch_size={batch} is not divisible by the {process_count} processes")
    return get_source(str(config.data.source))(config, process_index=process_index, process_count=process_count)


# --------------------------------------------------------------------------------------------
# synthetic: deterministic random packed rows with text and audio frames.
# --------------------------------------------------------------------------------------------

class SyntheticIterator:
    """Random packed rows in the training layout, a pure function of (seed, step, global row).

    Each row holds ``segments_per_row`` packed segments (then padding). A segment is text, an
    audio run ``audio_start, audio_pad × F, audio_end`` whose frames carry random codes, and more
    text. Targets follow :mod:`baichuan_audio_jax.batch`: next text token (weight 1 when the next
    token is text of the same segment), next frame's codes before every frame, and the EOS frame
    ``[C_0, …, C_7]`` (codebook 0 weighted only) after the last frame of a run.

    Because a row depends only on its global index, any split of the global batch over hosts
    reproduces the single-host batch exactly.
    """

    def __init__(self, config, *, process_index: int, process_count: int):
        d = config.data
        self.seed = int(d.get("seed", config.seed))
        self.seq_len = int(d.seq_len)
        self.segments = max(1, int(d.get("segments_per_row", 2)))
        self.audio_fraction = float(d.get("audio_fraction", 0.5))
        global_rows = int(d.batch_size)
        local = global_rows // process_count
        self.rows = range(process_index * local, (process_index + 1) * local)
        mc = ModelConfig.from_config(config.model)
        tok = mc.tokens
        self.codebook_sizes = np.asarray(mc.codebook_sizes, np.int32)
        if len(self.codebook_sizes) != NUM_CODEBOOKS:
            raise ValueError(f"synthetic data needs {NUM_CODEBOOKS} codebooks, got {mc.codebook_sizes}")
        self.audio_pad, self.audio_start, self.audio_end = (
            tok.audio_pad_token_id, tok.audio_start_token_id, tok.audio_end_token_id)
        specials = [v for v in vars(tok).values() if v >= 3]
        self.text_high = min([mc.llm.vocab_size, *specials])
        if self.text_high <= 3:
            raise ValueError("synthetic data: no ordinary text ids below the special ids")
        if self.seq_len < 8 * self.segments:
            raise ValueError(f"data.seq_len={self.seq_len} is too short for {self.segments} synthetic segments")
        self.step = 0

    def __iter__(self):
        return self

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])

    def __next__(self) -> dict[str, np.ndarray]:
        rows = [self._row(np.random.default_rng([self.seed, self.step, r])) for r in self.rows]
        self.step += 1
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    def _row(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        s = self.seq_len
        ids = np.zeros(s, np.int32)
        codes = np.zeros((s, NUM_CODEBOOKS), np.int32)
        seg = np.zeros(s, np.int32)
        pos = np.zeros(s, np.int32)
        # Segment lengths (at least 8 each): a random split of 75-100% of the row.
        used = int(rng.integers(max(8 * self.segments, s * 3 // 4), s + 1))
        lengths = 8 + rng.multinomial(used - 8 * self.segments, np.full(self.segments, 1 / self.segments))
        edges = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        for i in range(self.segments):
            a, b = edges[i], edges[i + 1]
            n = b - a
            seg[a:b] = i + 1
            pos[a:b] = np.arange(n)
            ids[a:b] = rng.integers(3, self.text_high, size=n)
            frames = min(n - 4, max(1, int(round(n * self.audio_fraction * rng.uniform(0.5, 1.0)))))
            start = a + int(rng.integers(1, n - frames - 2))
            ids[start] = self.audio_start
            ids[start + 1:start + 1 + frames] = self.audio_pad
            ids[start + 1 + frames] = self.audio_end
            codes[start + 1:start + 1 + frames] = rng.integers(0, self.codebook_sizes, size=(frames, NUM_CODEBOOKS))
        same_next = np.zeros(s, bool)
        same_next[:-1] = (seg[:-1] == seg[1:]) & (seg[:-1] > 0)
        nxt = np.zeros(s, np.int32)
        nxt[:-1] = ids[1:]
        is_pad = ids == self.audio_pad
        next_pad = np.zeros(s, bool)
        next_pad[:-1] = is_pad[1:] & same_next[:-1]
        text_w = (same_next & ~next_pad).astype(np.float32)
        audio_t = np.zeros((s, NUM_CODEBOOKS), np.int32)
        audio_w = np.zeros((s, NUM_CODEBOOKS), np.float32)
        audio_t[:-1][next_pad[:-1]] = codes[1:][next_pad[:-1]]
        audio_w[next_pad] = 1.0
        last_frame = is_pad & ~next_pad  # EOS frame follows the last frame of a run
        audio_t[last_frame] = self.codebook_sizes
        audio_w[last_frame, 0] = 1.0
        return dict(input_ids=ids, audio_codes=codes, positions=pos, segment_ids=seg,
                    text_targets=np.where(same_next, nxt, 0).astype(np.int32), text_weights=text_w,
                    audio_targets=audio_t, audio_weights=audio_w)


@register("synthetic")
def build_synthetic(config, *, process_index: int, process_count: int) -> SyntheticIterator:
    return SyntheticIterator(config, process_index=process_index, process_count=process_count)
