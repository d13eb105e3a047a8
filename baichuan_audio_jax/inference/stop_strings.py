"""Stop strings decided on device, token by token (the reference's text stop criteria, §6.6).

A stop string fires when the token just generated completes it: the string must end inside the
last token (which may run past its end) and may start in earlier tokens — Hugging Face's
``StopStringCriteria`` semantics. E.g. for ``". "`` the tokens ``"end."``, ``" The"`` fire on
``" The"``; for ``"，"`` any token containing it fires.

To decide this inside a compiled decoding loop, each stop string s of length m becomes a small
automaton over token ids whose state per row is the set of j in 1..m−1 such that the text so far
ends with s[:j]. Tables indexed by token id (built once per tokenizer on the host) give

* ``inside[t]``: s occurs within token t's string;
* ``completes[t, j]``: t's string starts with s[j:] (so t completes s after a prefix s[:j]);
* ``ends[t, j]``: t's string ends with s[:j] (state j holds after t on its own);
* ``extends[t, j]``: t's string is s[j − |t| : j] for |t| < j (state j holds after t if state
  j − |t| held before it), with ``lengths[t] = |t|``.

A token fires iff ``inside[t]`` or ``completes[t, j]`` for a j in the current state; the new state
is ``ends[t, j] | (extends[t, j] & old[j − |t|])``. This is exact for token strings as given
(:func:`token_strings` decodes each id on its own).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class StopTables(NamedTuple):
    """Device tables for S stop strings of length ≤ M over a vocabulary of V ids."""

    inside: jax.Array  # bool [S, V]
    completes: jax.Array  # bool [S, V, M]   (j = 0 unused)
    ends: jax.Array  # bool [S, V, M]
    extends: jax.Array  # bool [S, V, M]
    lengths: jax.Array  # int32 [V]

    @property
    def num_strings(self) -> int:
        return self.inside.shape[0]

    @property
    def max_len(self) -> int:
        return self.completes.shape[-1]


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """The string of every id in [0, vocab_size) as the tokenizer decodes it alone ("" for ids the
    tokenizer does not know)."""
    n = min(vocab_size, tokenizer.vocab_size)
    return [tokenizer.decode([i]) for i in range(n)] + [""] * (vocab_size - n)


def build_stop_tables(stop_strings: Sequence[str], strings: Sequence[str]) -> StopTables:
    """Tables for ``stop_strings`` over the token strings ``strings`` (index = token id)."""
    stop_strings = [s for s in stop_strings]
    if any(not s for s in stop_strings):
        raise ValueError("stop strings must be non-empty")
    v = len(strings)
    m = max([len(s) for s in stop_strings], default=1)
    n = max(len(stop_strings), 1)
    inside = np.zeros((n, v), bool)
    completes = np.zeros((n, v, m), bool)
    ends = np.zeros((n, v, m), bool)
    extends = np.zeros((n, v, m), bool)
    lengths = np.asarray([len(t) for t in strings], np.int32)
    char_sets = [set(t) for t in strings]
    for si, s in enumerate(stop_strings):
        # Only tokens sharing a character with the stop string take part in a match; scanning
        # those alone keeps this fast on a 150k vocabulary.
        chars = set(s)
        for t_id, t in enumerate(strings):
            if chars.isdisjoint(char_sets[t_id]):
                continue
            inside[si, t_id] = s in t
            for j in range(1, len(s)):
                completes[si, t_id, j] = t.startswith(s[j:])
                if len(t) >= j:
                    ends[si, t_id, j] = t.endswith(s[:j])
                else:
                    extends[si, t_id, j] = s[j - len(t):j] == t
    return StopTables(jnp.asarray(inside), jnp.asarray(completes), jnp.asarray(ends), jnp.asarray(extends),
                      jnp.asarray(lengths))


def initial_state(batch: int, tables: StopTables) -> jax.Array:
    """No partial match: bool [B, S, M]."""
    return jnp.zeros((batch, tables.num_strings, tables.max_len), bool)


def fires(state: jax.Array, tokens: jax.Array, tables: StopTables) -> jax.Array:
    """Would appending tokens [B] to texts in ``state`` complete each stop string? bool [B, S]."""
    ins = tables.inside[:, tokens].T  # [B, S]
    comp = jnp.moveaxis(tables.completes[:, tokens], 0, 1)  # [B, S, M]
    return ins | (comp & state).any(-1)


def advance(state: jax.Array, tokens: jax.Array, tables: StopTables) -> jax.Array:
    """The automata's state [B, S, M] after appending tokens [B]."""
    ends = jnp.moveaxis(tables.ends[:, tokens], 0, 1)
    ext = jnp.moveaxis(tables.extends[:, tokens], 0, 1)
    m = tables.max_len
    src = jnp.arange(m)[None, :] - tables.lengths[tokens][:, None]  # [B, M]: j − |t|
    prior = jnp.take_along_axis(state, jnp.clip(src, 0, m - 1)[:, None, :], axis=-1) & (src >= 1)[:, None, :]
    return ends | (ext & prior)


def fires_on_text(stop_strings: Sequence[str], previous: str, token: str) -> bool:
    """The same rule on plain strings: does ``token`` appended to ``previous`` complete a stop
    string that ends inside ``token``? (A host-side statement of the semantics.)"""
    text = previous + token
    start = len(previous)
    for s in stop_strings:
        pos = text.find(s, max(0, start - len(s) + 1))
        while pos != -1:
            if pos + len(s) > start:
                return True
            pos = text.find(s, pos + 1)
    return False
