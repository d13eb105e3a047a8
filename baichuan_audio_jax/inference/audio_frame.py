"""One audio frame: the LLM's hidden state -> 8 codebook codes (spec §6.4 step 3, G2).

The reference recomputes the whole audio head eight times per frame, once per codebook with the
codes chosen so far (unfilled ones zero). Because the depth transformer is causal and position i
only sees the embeddings of codes < i, running it incrementally — one depth position per
codebook against a small depth KV cache (:meth:`AudioHead.decode_step`) — gives the same logits
with an eighth of the work. The eight positions run as one loop inside the traced program:

* codebook 0 keeps its EOS class (index C_0); codebooks 1–7 are chosen among their first C_k
  classes (their EOS class is dropped, as the reference does);
* each codebook's choice uses the audio phase's sampling parameters with that codebook's history
  in the current segment (the repetition-penalty window of the reference);
* depth input i + 1 is the running sum of the embeddings of codes 0..i.

The loop body is compiled once for all codebooks: logits are padded to C_0 + 1 classes with −inf
(which no processor or draw can select, and which top-k/top-p treat as absent), the codebook's
classifier and embedding table are picked with ``lax.switch``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from baichuan_audio_jax.inference.sampling import SamplingArrays, select_tokens
from baichuan_audio_jax.models.audio_head import NUM_CODEBOOKS
from baichuan_audio_jax.models.audio_llm import AudioLLM


def audio_frame(llm: AudioLLM, hidden: jax.Array, keys: jax.Array, params: SamplingArrays,
                history: jax.Array, history_valid: jax.Array) -> jax.Array:
    """hidden [B, H] (final-normed LLM state before the frame) -> codes int32 [B, 8].

    ``keys`` [B]: one PRNG key per row for this frame (codebook i draws with ``fold_in(key, i)``);
    ``history`` [B, F, 8] with ``history_valid`` [B, F]: the segment's earlier frames.
    """
    graphdef, state = nnx.split(llm)
    sizes = llm.audio_head.codebook_sizes
    width = sizes[0] + 1
    b = hidden.shape[0]

    def logits_of(i: int, y: jax.Array, m: AudioLLM) -> jax.Array:
        head = m.audio_head
        out = head.heads[i](head.headnorm(y)).astype(jnp.float32)
        out = out if i == 0 else out[:, :sizes[i]]  # only codebook 0 may end the segment
        return jnp.pad(out, ((0, 0), (0, width - out.shape[1])), constant_values=-jnp.inf)

    def body(i, carry):
        inp, running, cache, codes = carry
        m: AudioLLM = nnx.merge(graphdef, state)
        head = m.audio_head
        y, cache = head.decode_trunk(inp, i, cache)
        logits = jax.lax.switch(i, [lambda y, k=k: logits_of(k, y, nnx.merge(graphdef, state))
                                    for k in range(NUM_CODEBOOKS)], y)
        k = jax.vmap(lambda key: jax.random.fold_in(key, i))(keys)
        hist = jax.lax.dynamic_index_in_dim(history, i, axis=2, keepdims=False)
        c = select_tokens(k, logits, params, hist, history_valid)
        e = jax.lax.switch(i, [lambda c, k=k: nnx.merge(graphdef, state).audio_embed[k](c)
                               for k in range(NUM_CODEBOOKS)], c)
        running = running + e.astype(running.dtype)
        return running, running, cache, codes.at[:, i].set(c)

    dtype = llm.audio_head.dtype
    init = (hidden.astype(dtype), jnp.zeros(hidden.shape, dtype), llm.audio_head.init_cache(b),
            jnp.zeros((b, NUM_CODEBOOKS), jnp.int32))
    return jax.lax.fori_loop(0, NUM_CODEBOOKS, body, init)[3]
