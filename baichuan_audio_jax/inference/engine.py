"""The decoding engine: prefill and a compiled decode loop over a preallocated KV cache.

Rows are decoded together with a shared write index into one KV cache ``[L, B, S, KV, D]``:

* **Prefill** writes every prompt token but the last, left-padded to a common length (pad keys
  are masked; positions are 1-based cumulative sums of the attention mask, as the reference's
  ``prepare_inputs_for_generation``), in chunks of at most ``chunk`` tokens.
* **The decode loop** is one compiled ``lax.while_loop``. Each step feeds one token per row (the
  last prompt token first, then whatever the protocol decides), reads the final-normed hidden
  state, and — skipping the work no row needs — chooses a text token (LM head + the processors of
  :mod:`.sampling`) and/or an audio frame (:func:`.audio_frame.audio_frame`), then applies the
  rules of :mod:`.interleave`. The frame's codes become the next step's ``<audio_pad>`` input
  inside the loop. The loop returns to the host only when a row finishes an audio segment (so it
  can be turned into sound while the rest is decoded), when a row waits for its next text piece,
  or when every row is done.
* **Buckets.** Cache sizes and prefill chunk lengths are rounded up to a few fixed sizes, so each
  bucket compiles once (:attr:`DecodingEngine.compiled` lists the programs built).
* **Decoding dtype.** At batch 1 a step reads every weight once, so its time is the weights'
  bytes over the memory bandwidth. ``dtype="bfloat16"`` stores the weights and the KV cache in
  bfloat16 and computes in it (norm statistics, RoPE, attention softmax stay float32 as in the
  layers); the text and audio logits are upcast to float32 before sampling.

Rows stop independently; a finished row keeps its slot (masked) until the batch is done. Every
row draws from its own PRNG key (its seed folded with its own step count), so a row's output
does not depend on the rows it is batched with.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from baichuan_audio_jax.inference import interleave as il
from baichuan_audio_jax.inference.audio_frame import audio_frame
from baichuan_audio_jax.inference.sampling import SamplingArrays, SamplingParams, select_tokens
from baichuan_audio_jax.inference.stop_strings import StopTables, advance, build_stop_tables, fires
from baichuan_audio_jax.layers.attention import KVCache
from baichuan_audio_jax.layers.stack import unstack
from baichuan_audio_jax.models.audio_head import NUM_CODEBOOKS
from baichuan_audio_jax.models.audio_llm import AudioLLM
from baichuan_audio_jax.sharding import logical_to_mesh_spec, state_shardings

# ----------------------------------------------------------------------------- requests and results

@dataclasses.dataclass(frozen=True)
class PhaseSampling:
    """Sampling parameters of the three phases (§6.6 table)."""

    first_text: SamplingParams = SamplingParams()
    later_text: SamplingParams = SamplingParams()
    audio: SamplingParams = SamplingParams()

    def replace(self, **changes) -> "PhaseSampling":
        """Every phase with the given fields changed (None values are ignored)."""
        return PhaseSampling(*(p.replace(**changes) for p in (self.first_text, self.later_text, self.audio)))


@dataclasses.dataclass
class Request:
    """One row: its prompt, how it starts and how it samples.

    ``prompt_ids`` [n] (n ≥ 1) with ``prompt_codes`` [n, 8] (the frames of its ``<audio_pad>``
    positions; zeros elsewhere). The last prompt token is fed by the first decoding step, whose
    hidden state gives the first text token (``start="text"``) or audio frame (``"audio"``: the
    prompt ends with ``<audiogen_start>``). ``continuations``: further text pieces of a
    text-to-speech row, each ending with ``<audiogen_start>``; each is appended after the previous
    audio segment (whose last, unfed ``<audio_pad>`` becomes ``<audiogen_end>``).
    """

    prompt_ids: np.ndarray
    prompt_codes: np.ndarray | None = None
    start: str = "text"
    sampling: PhaseSampling = PhaseSampling()
    seed: int = 0
    max_new_tokens: int = 2048
    continuations: Sequence[np.ndarray] = ()


@dataclasses.dataclass
class RowResult:
    text_tokens: list[int]  # every chosen text token (overwritten ones included), in order
    segments: list[np.ndarray]  # audio segments, codes int32 [N_i, 8] (valid frames only)
    finish_reason: str  # interleave.FINISH_REASONS
    new_tokens: int  # decoding steps taken
    budget: int  # the new-token limit that applied (max_new_tokens, or less to fit the context)
    sequence: np.ndarray  # int32: every token the model was fed, prompt included, in order
    segment_text_ends: list[int]  # len(text_tokens) when each audio segment ended


class RowParams(NamedTuple):
    first_text: SamplingArrays
    later_text: SamplingArrays
    audio: SamplingArrays


class DecodeState(NamedTuple):
    cache: KVCache  # [L, B, S, KV, D]
    ids: jax.Array  # int32 [B, S]: token in each cache slot (the text repetition-penalty history)
    valid: jax.Array  # bool [B, S]: slot holds a real token (the attention mask)
    index: jax.Array  # int32 []: next slot to write
    position: jax.Array  # int32 [B]: RoPE position of the row's last token (1-based)
    stop_state: jax.Array  # bool [B, S_stop, M]: stop-string automata
    keys: jax.Array  # PRNG keys [B]
    rows: il.RowState


def ladder(minimum: int, maximum: int) -> tuple[int, ...]:
    """Powers of two from ``minimum`` below ``maximum``, then ``maximum``."""
    out, v = [], minimum
    while v < maximum:
        out.append(v)
        v *= 2
    return tuple(out) + (maximum,)


def bucket(n: int, sizes: Sequence[int]) -> int:
    for s in sizes:
        if n <= s:
            return s
    raise ValueError(f"length {n} exceeds the largest bucket {sizes[-1]}")


# Logical axes of the stacked KV cache [L, B, S, KV, D].
CACHE_AXES = ("layers", "activation_batch", "activation_length", "activation_kv_heads", None)
# Capacities of the per-segment frame buffer (≥ the protocol's frame limit).
FRAME_BUFFERS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


# ----------------------------------------------------------------------------- compiled pieces

def _extend(llm: AudioLLM, ds: DecodeState, ids, codes, mask, tables: StopTables) -> DecodeState:
    idx = ds.index
    positions = ds.position[:, None] + jnp.cumsum(mask.astype(jnp.int32), axis=1)
    valid = jax.lax.dynamic_update_slice(ds.valid, mask, (0, idx))
    ids_buf = jax.lax.dynamic_update_slice(ds.ids, ids, (0, idx))
    out = llm(ids, codes, positions=positions, attention_mask=valid.astype(jnp.int32), cache=ds.cache,
              cache_index=idx, compute_logits=False)

    def stop_step(st, x):
        tok, m = x
        return jnp.where(m[:, None, None], advance(st, tok, tables), st), None

    stop_state, _ = jax.lax.scan(stop_step, ds.stop_state, (ids.T, mask.T))
    return ds._replace(cache=out.cache, ids=ids_buf, valid=valid, index=idx + ids.shape[1],
                       position=positions[:, -1], stop_state=stop_state)


def _decode_step(graphdef, state, protocol: il.ProtocolArrays, params: RowParams, tables: StopTables,
                 stop_masks: jax.Array, ds: DecodeState) -> DecodeState:
    llm: AudioLLM = nnx.merge(graphdef, state)
    cfg = llm.cfg
    rows = ds.rows
    b = rows.phase.shape[0]
    active = (rows.phase == il.TEXT) | (rows.phase == il.AUDIO)
    idx = ds.index
    feed = jnp.where(active, rows.feed_id, cfg.tokens.pad_token_id)
    valid = jax.lax.dynamic_update_slice(ds.valid, active[:, None], (0, idx))
    ids = jax.lax.dynamic_update_slice(ds.ids, feed[:, None], (0, idx))
    position = ds.position + active
    out = llm(feed[:, None], rows.feed_codes[:, None], positions=position[:, None],
              attention_mask=valid.astype(jnp.int32), cache=ds.cache, cache_index=idx, compute_logits=False)
    hidden = out.hidden[:, 0]
    stop_state = jnp.where(active[:, None, None], advance(ds.stop_state, feed, tables), ds.stop_state)
    step_keys = jax.vmap(jax.random.fold_in)(ds.keys, rows.generated)
    is_text = rows.phase == il.TEXT

    def choose_text(hidden):
        m = nnx.merge(graphdef, state)
        logits = m.logits(hidden[:, None])[:, 0].astype(jnp.float32)
        p = jax.tree.map(lambda f, later: jnp.where(rows.text_round == 0, f, later), params.first_text,
                         params.later_text)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, NUM_CODEBOOKS))(step_keys)
        tok = select_tokens(keys, logits, p, ids, valid)
        mask = jnp.where((rows.text_round == 0)[:, None], stop_masks[0][None], stop_masks[1][None])
        return tok, (fires(stop_state, tok, tables) & mask).any(-1)

    def no_text(hidden):
        return jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool)

    def choose_frame(hidden):
        m = nnx.merge(graphdef, state)
        history_valid = jnp.arange(rows.segment_codes.shape[1])[None, :] < rows.frame_count[:, None]
        return audio_frame(m, hidden, step_keys, params.audio, rows.segment_codes, history_valid)

    def no_frame(hidden):
        return jnp.zeros((b, NUM_CODEBOOKS), jnp.int32)

    tok, fired = jax.lax.cond(is_text.any(), choose_text, no_text, hidden)
    codes = jax.lax.cond((rows.phase == il.AUDIO).any(), choose_frame, no_frame, hidden)
    new_rows = il.transition(rows, tok, fired, codes, protocol=protocol, tokens=cfg.tokens,
                             eos_class=cfg.codebook_sizes[0])
    return ds._replace(cache=out.cache, ids=ids, valid=valid, index=idx + 1, position=position,
                       stop_state=stop_state, rows=new_rows)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _extend_jit(graphdef, state, ds, ids, codes, mask, tables):
    return _extend(nnx.merge(graphdef, state), ds, ids, codes, mask, tables)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(3,))
def _run_jit(graphdef, state, protocol, ds, params, tables, stop_masks, max_steps):
    ds = ds._replace(rows=ds.rows._replace(event=jnp.zeros_like(ds.rows.event)))
    size = ds.ids.shape[1]
    stop_index = jnp.minimum(ds.index + max_steps, size)

    def cond(ds):
        active = (ds.rows.phase == il.TEXT) | (ds.rows.phase == il.AUDIO)
        return active.any() & ~ds.rows.event.any() & (ds.index < stop_index)

    def body(ds):
        return _decode_step(graphdef, state, protocol, params, tables, stop_masks, ds)

    return jax.lax.while_loop(cond, body, ds)


# ----------------------------------------------------------------------------- the engine

SegmentCallback = Callable[[int, np.ndarray], None]


DECODE_DTYPES = ("float32", "bfloat16")


def _is_classifier(path) -> bool:
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    return keys[:1] == ["lm_head"] or keys[:2] == ["audio_head", "heads"]


def cast_for_decoding(llm: AudioLLM, dtype: str | None) -> AudioLLM:
    """``llm`` with its floating parameters stored and computed in ``dtype`` (None: unchanged),
    except the classifiers (LM head, audio-head heads): they stay float32 and give float32 logits
    from the ``dtype`` hidden state, so near-ties are resolved as in float32 (they are a small
    share of the bytes a step reads)."""
    if dtype is None or jnp.dtype(dtype) == jnp.dtype(llm.cfg.dtype) == jnp.dtype(llm.cfg.param_dtype):
        return llm
    if str(jnp.dtype(dtype)) not in DECODE_DTYPES:
        raise ValueError(f"decoding dtype {dtype!r}: choose one of {DECODE_DTYPES}")
    cfg = dataclasses.replace(llm.cfg, dtype=str(jnp.dtype(dtype)), param_dtype=str(jnp.dtype(dtype)))
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0))))

    def cast(path, x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return x.astype(jnp.float32 if _is_classifier(path) else dtype)

    out = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(cast, nnx.state(llm)))
    for head in ([out.lm_head] if out.lm_head is not None else []) + list(out.audio_head.heads):
        head.dtype = jnp.float32
    return out


class DecodingEngine:
    """Batched generation with an :class:`AudioLLM` (see the module docstring).

    ``token_strings``: the text of every token id, or a function giving it (for stop strings;
    only needed by protocols with stop strings). ``max_context``: the longest sequence (prompt +
    generation) a row may reach (default ``llm.max_position_embeddings``). ``chunk``: the longest
    prefill chunk. ``mesh``: decode on a device mesh — parameters and the KV cache are laid out
    by the logical-axis rules (rows over ``data``/``fsdp``, KV heads over ``tensor``) and the
    model's activation constraints apply. ``dtype``: decode with weights, activations and KV cache
    in this dtype (``"bfloat16"`` halves the bytes a step reads; None: the model's own).
    ``unstack_layers``: give every LLM and audio-head layer its own parameter arrays and unroll
    the layer loops (see :func:`~baichuan_audio_jax.layers.stack.unstack`; None: on CPU only, where
    XLA copies each layer's weights out of the stacked arrays on every step, ~2x the bytes a
    batch-1 step reads; elsewhere the scanned stack compiles faster and reads in place).
    """

    def __init__(self, llm: AudioLLM, *, token_strings: Sequence[str] | Callable[[], Sequence[str]] | None = None,
                 max_context: int | None = None, chunk: int = 512, min_cache: int = 128, min_chunk: int = 16,
                 mesh: Mesh | None = None, dtype: str | None = None, unstack_layers: bool | None = None):
        llm = cast_for_decoding(llm, dtype)
        if unstack_layers is None:
            unstack_layers = jax.default_backend() == "cpu"
        if unstack_layers:
            llm = nnx.merge(*nnx.split(llm))  # a new module: the caller's keeps its stacked layers
            llm.layers = unstack(llm.layers)
            llm.audio_head.layers = unstack(llm.audio_head.layers)
            for layer in llm.audio_head.layers:
                layer.ffn.split_positions()
        self.cfg = llm.cfg
        self.graphdef, self.state = nnx.split(llm)
        self.mesh = mesh
        if mesh is not None:  # parameters laid out by their logical axes (sharding.py)
            self.state = jax.device_put(self.state, state_shardings(self.state, mesh))
        self.max_context = int(max_context or self.cfg.llm.max_position_embeddings)
        self.chunk = int(chunk)
        self.cache_sizes = ladder(min(min_cache, self.max_context), self.max_context)
        self.chunk_sizes = ladder(min(min_chunk, self.chunk), self.chunk)
        self._token_strings = token_strings
        self._tables: dict[tuple, StopTables] = {}  # (strings, built from token strings) -> tables
        self.compiled: set[tuple] = set()

    # ------------------------------------------------------------------ helpers

    def _mesh_context(self):
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def _place(self, x: jax.Array, names: tuple) -> jax.Array:
        if self.mesh is None:
            return x
        return jax.device_put(x, NamedSharding(self.mesh, logical_to_mesh_spec(names, x.shape, self.mesh)))

    @property
    def token_strings(self) -> list[str] | None:
        """The text of every token id (computed on first use when given as a function)."""
        if callable(self._token_strings):
            self._token_strings = list(self._token_strings())
        return self._token_strings

    def stop_tables(self, protocol: il.Protocol) -> tuple[StopTables, jax.Array]:
        """Stop tables over the speech demo's strings plus the protocol's (one table shape for
        every usual protocol, hence one compiled loop), and the masks selecting the protocol's."""
        if protocol.stop_strings and self.token_strings is None:
            raise ValueError("this protocol has stop strings; the engine needs token_strings (a text tokenizer)")
        strings = tuple(dict.fromkeys(il.SPEECH_STOP_STRINGS + protocol.first_stop_strings
                                      + protocol.later_stop_strings))
        # A protocol without stop strings takes any table of the same shape (its masks are off),
        # so the token strings are computed only when a protocol needs them.
        tables = self._tables.get((strings, True))
        if tables is None and protocol.stop_strings:
            tables = self._tables[(strings, True)] = build_stop_tables(strings, self.token_strings)
        if tables is None:
            tables = self._tables.get((strings, False))
            if tables is None:
                tables = self._tables[(strings, False)] = build_stop_tables(strings, [""] * self.cfg.llm.vocab_size)
        masks = protocol.stop_string_masks(strings) & bool(protocol.text)
        return tables, jnp.asarray(masks)

    def _check_request(self, i: int, r: Request) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(r.prompt_ids, np.int64).reshape(-1)
        vocab = self.cfg.llm.vocab_size
        if ids.size == 0:
            raise ValueError(f"request {i}: empty prompt")
        if ids.min() < 0 or ids.max() >= vocab:
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise ValueError(f"request {i}: token id {bad} is outside the model's vocabulary [0, {vocab})")
        codes = np.zeros((ids.size, NUM_CODEBOOKS), np.int32) if r.prompt_codes is None else np.asarray(r.prompt_codes)
        if codes.shape != (ids.size, NUM_CODEBOOKS):
            raise ValueError(f"request {i}: prompt_codes must be [{ids.size}, {NUM_CODEBOOKS}], got {codes.shape}")
        limits = np.asarray(self.cfg.codebook_sizes)
        if codes.size and ((codes < 0).any() or (codes >= limits).any()):
            raise ValueError(f"request {i}: prompt codes outside [0, C_k) for codebook sizes {tuple(limits)}")
        if r.start not in ("text", "audio"):
            raise ValueError(f"request {i}: start must be 'text' or 'audio', got {r.start!r}")
        if r.max_new_tokens < 1:
            raise ValueError(f"request {i}: max_new_tokens must be ≥ 1, got {r.max_new_tokens}")
        for j, c in enumerate(r.continuations):
            c = np.asarray(c).reshape(-1)
            if c.size == 0 or c[-1] != self.cfg.tokens.audiogen_start_token_id:
                raise ValueError(f"request {i}: continuation {j} must end with <audiogen_start>")
            if c.min() < 0 or c.max() >= vocab:
                raise ValueError(f"request {i}: continuation {j} has token ids outside [0, {vocab})")
        return ids.astype(np.int32), codes.astype(np.int32)

    def _chunk_plan(self, n: int, exact: bool = False) -> list[int]:
        """Chunk lengths for appending n tokens: full chunks, plus one bucketed (or, with
        ``exact``, unpadded) chunk for the rest, which goes first (it holds the left padding)."""
        full, rest = divmod(n, self.chunk)
        head = [] if not rest else [rest if exact else bucket(rest, self.chunk_sizes)]
        return head + [self.chunk] * full

    def _extend(self, ds: DecodeState, chunks: dict[int, tuple[np.ndarray, np.ndarray]],
                tables: StopTables, exact: bool = False) -> DecodeState:
        """Appends per-row token runs (row -> (ids [n], codes [n, 8])), left-padded to a common
        length; rows not named get only padding."""
        b = ds.valid.shape[0]
        pieces = self._chunk_plan(max(len(ids) for ids, _ in chunks.values()), exact)
        width = sum(pieces)
        ids = np.full((b, width), self.cfg.tokens.pad_token_id, np.int32)
        codes = np.zeros((b, width, NUM_CODEBOOKS), np.int32)
        mask = np.zeros((b, width), bool)
        for r, (i, c) in chunks.items():
            n = len(i)
            ids[r, width - n:] = i
            codes[r, width - n:] = c
            mask[r, width - n:] = True
        start = 0
        for n in pieces:
            sl = slice(start, start + n)
            self.compiled.add(("extend", b, n, ds.ids.shape[1]))
            with self._mesh_context():
                ds = _extend_jit(self.graphdef, self.state, ds, jnp.asarray(ids[:, sl]), jnp.asarray(codes[:, sl]),
                                 jnp.asarray(mask[:, sl]), tables)
            start += n
        return ds

    # ------------------------------------------------------------------ generation

    def start(self, requests: Sequence[Request], protocol: il.Protocol) -> tuple[DecodeState, RowParams, list[int]]:
        """Prefills the prompts; returns the decode state, per-row parameters and budgets."""
        if not requests:
            raise ValueError("no requests")
        checked = [self._check_request(i, r) for i, r in enumerate(requests)]
        b = len(requests)
        longest = max(len(ids) for ids, _ in checked)
        if longest >= self.max_context:
            raise ValueError(f"prompt of {longest} tokens exceeds the model's context of {self.max_context} tokens "
                             "(llm.max_position_embeddings)")
        # Cache slots: the prefill, every row's text-piece extensions (rows extend at different
        # times and each extension takes slots in every row) and the longest generation.
        # When bucketing the prompt's padding would crowd out the generation, prefill it unpadded
        # (one more compiled shape) rather than refuse.
        extra = sum(sum(self._chunk_plan(len(np.asarray(c).reshape(-1)))) for r in requests for c in r.continuations)
        exact = sum(self._chunk_plan(longest - 1)) + extra >= self.max_context
        prefill = sum(self._chunk_plan(longest - 1, exact))
        want = prefill + extra + max(r.max_new_tokens for r in requests)
        size = bucket(min(want, self.max_context), self.cache_sizes)
        budgets = [int(min(r.max_new_tokens, size - prefill - extra)) for r in requests]
        if min(budgets) < 1:
            raise ValueError(f"prompt of {longest} tokens (+{extra} for later text pieces) leaves no room to generate "
                             f"in the model's context of {self.max_context} tokens")
        c = self.cfg.llm
        cache = KVCache(*(self._place(jnp.zeros((c.num_layers, b, size, c.num_kv_heads, c.head_dim), self.cfg.dtype),
                                      CACHE_AXES) for _ in range(2)))
        tables, _ = self.stop_tables(protocol)
        rows = il.initial_rows(
            b, phase=np.asarray([il.TEXT if r.start == "text" else il.AUDIO for r in requests], np.int32),
            feed_id=np.asarray([ids[-1] for ids, _ in checked], np.int32),
            feed_codes=np.stack([codes[-1] for _, codes in checked]), budget=np.asarray(budgets, np.int32),
            max_frames=bucket(protocol.audio_max_frames, FRAME_BUFFERS), max_text=size)
        ds = DecodeState(
            cache=cache, ids=jnp.zeros((b, size), jnp.int32), valid=jnp.zeros((b, size), bool),
            index=jnp.zeros((), jnp.int32), position=jnp.zeros((b,), jnp.int32),
            stop_state=jnp.zeros((b, tables.num_strings, tables.max_len), bool),
            keys=jax.vmap(jax.random.key)(jnp.asarray([r.seed for r in requests], jnp.uint32)), rows=rows)
        if longest > 1:
            ds = self._extend(ds, {i: (ids[:-1], codes[:-1]) for i, (ids, codes) in enumerate(checked)}, tables,
                              exact)
        params = RowParams(*(SamplingArrays.stack([getattr(r.sampling, k) for r in requests])
                             for k in ("first_text", "later_text", "audio")))
        return ds, params, budgets

    def run(self, ds: DecodeState, protocol: il.Protocol, params: RowParams, max_steps: int = 1 << 30) -> DecodeState:
        """Decodes until a row ends an audio segment or waits, every row is done, or ``max_steps``
        steps have run."""
        tables, masks = self.stop_tables(protocol)
        self.compiled.add(("run",) + self._shapes(ds))
        with self._mesh_context():
            return _run_jit(self.graphdef, self.state, protocol.arrays(), ds, params, tables, masks,
                            np.asarray(max_steps, np.int32))

    @staticmethod
    def _shapes(ds: DecodeState) -> tuple[int, int, int]:
        """(batch, cache size, frame buffer): what a compiled loop is specialised to."""
        return ds.valid.shape[0], ds.valid.shape[1], ds.rows.segment_codes.shape[1]

    def decode(self, requests: Sequence[Request], protocol: il.Protocol) -> "Decoding":
        """Prefills ``requests`` and returns the batch, to be stepped by the caller (see :class:`Decoding`)."""
        return Decoding(self, requests, protocol)

    def generate(self, requests: Sequence[Request], protocol: il.Protocol,
                 on_segment: SegmentCallback | None = None,
                 on_progress: Callable[[np.ndarray, list[int]], None] | None = None,
                 progress_steps: int = 64) -> list[RowResult]:
        """Runs every request to its end. ``on_segment(row, codes)`` is called as soon as a row
        finishes an audio segment (codes int32 [N, 8], possibly empty); ``on_progress(new tokens
        per row, new-token limits)`` at least every ``progress_steps`` steps."""
        batch = self.decode(requests, protocol)
        steps = progress_steps if on_progress is not None else 1 << 30
        while batch.running:
            for seg in batch.step(steps):
                if on_segment is not None:
                    on_segment(seg.row, seg.codes)
            if on_progress is not None:
                on_progress(batch.rows.generated.copy(), batch.budgets)
        return batch.results()


@dataclasses.dataclass
class Segment:
    """An audio segment a row finished: its valid frames and how many text tokens preceded its end."""

    row: int
    codes: np.ndarray  # int32 [N, 8]
    text_end: int


class Decoding:
    """One batch being decoded, stepped by its caller (:meth:`DecodingEngine.generate`, the server).

    :meth:`step` runs the compiled loop until a row finishes an audio segment or waits, every row
    is done, or ``max_steps`` steps have run; then it makes the host's phase changes
    (:mod:`.interleave`): rows cut off by a full cache end with ``context``, waiting rows get their
    next text piece appended (or end). Between steps the caller may read :attr:`rows` (a host copy)
    and end rows with :meth:`stop`.
    """

    def __init__(self, engine: DecodingEngine, requests: Sequence[Request], protocol: il.Protocol):
        self.engine, self.protocol = engine, protocol
        self.ds, self.params, self.budgets = engine.start(requests, protocol)
        self.tables, _ = engine.stop_tables(protocol)
        self.pending = [list(r.continuations) for r in requests]
        self.segments: list[list[Segment]] = [[] for _ in requests]
        self.rows = self._host_rows()
        self._changed = False

    def _push_rows(self) -> None:
        """Sends the host's changes to :attr:`rows` to the device state (once, when there are any)."""
        if self._changed:
            self.ds = self.ds._replace(rows=jax.tree.map(jnp.asarray, self.rows))
            self._changed = False

    def _host_rows(self) -> il.RowState:
        return jax.tree.map(np.array, jax.device_get(self.ds.rows))

    @property
    def running(self) -> bool:
        """Some row still decodes (or has its next text piece pending)."""
        return bool(il.decoding(self.rows).any())

    def stop(self, which, reason: int = il.STOP) -> None:
        """Ends rows ``which`` (indices or a bool mask) before the next step."""
        il.finish(self.rows, which, reason)
        self._changed = True

    def _segment(self, r: int) -> Segment:
        rows = self.rows
        seg = Segment(int(r), rows.segment_codes[r, :rows.frame_count[r]].copy(), int(rows.out_count[r]))
        self.segments[r].append(seg)
        return seg

    def step(self, max_steps: int = 1 << 30) -> list[Segment]:
        """Decodes up to ``max_steps`` steps; returns the audio segments finished meanwhile."""
        eng, tokens = self.engine, self.engine.cfg.tokens
        self._push_rows()
        self.ds = eng.run(self.ds, self.protocol, self.params, max_steps)
        rows = self.rows = self._host_rows()
        index, size = int(self.ds.index), self.ds.valid.shape[1]
        done = [self._segment(r) for r in np.flatnonzero(rows.event)]
        active = il.decoding(rows)
        if index >= size and active.any():  # the cache is full: stop cleanly
            done += [self._segment(r) for r in np.flatnonzero(active & (rows.phase == il.AUDIO))]
            il.finish(rows, active, il.CONTEXT)
            self._changed = True
        waiting = np.flatnonzero(rows.phase == il.WAIT)
        heads = {int(r): il.continuation_head(self.pending[r][0], tokens) for r in waiting if self.pending[r]}
        fits = not heads or index + sum(eng._chunk_plan(max(len(h) for h in heads.values()))) < size
        chunks = {}
        for r in waiting:
            self._changed = True
            if r in heads and fits:
                chunks[int(r)] = (heads[r], np.zeros((len(heads[r]), NUM_CODEBOOKS), np.int32))
                il.resume(rows, r, self.pending[r].pop(0))
            else:
                il.finish(rows, r, il.CONTEXT if r in heads else il.EOS)
        if chunks:
            self._push_rows()
            self.ds = eng._extend(self.ds, chunks, self.tables)
        return done

    def results(self) -> list[RowResult]:
        """Every row's outcome (call when :attr:`running` is false, or after stopping the rest)."""
        self._push_rows()
        rows = self.rows
        ids, valid = np.asarray(self.ds.ids), np.asarray(self.ds.valid)
        out = []
        for r in range(len(self.budgets)):
            n = int(rows.out_count[r])
            out.append(RowResult(
                text_tokens=[int(t) for t in rows.out_text[r, :n]], segments=[s.codes for s in self.segments[r]],
                finish_reason=il.FINISH_REASONS[int(rows.finish[r])], new_tokens=int(rows.generated[r]),
                budget=self.budgets[r], sequence=ids[r][valid[r]],
                segment_text_ends=[s.text_end for s in self.segments[r]]))
        return out
