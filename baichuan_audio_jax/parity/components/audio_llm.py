"""Parity runners for ``omni_lm`` (plain, left-padded and packed layouts) and ``audio_head``."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from baichuan_audio_jax.conversion.loading import load_model
from baichuan_audio_jax.conversion.mapping import combine_tables
from baichuan_audio_jax.conversion.tables import audio_embed_table, audio_head_table, llm_table
from baichuan_audio_jax.models.audio_llm import AudioLLM, place_audio_codes, segment_ids_from_seqlens
from baichuan_audio_jax.models.pure import pure
from baichuan_audio_jax.parity.compare import Masked
from baichuan_audio_jax.parity.fixtures import FixtureComponent
from baichuan_audio_jax.parity.registry import register


def _model(comp: FixtureComponent, tables) -> AudioLLM:
    cfg = comp.model_config
    model, _ = load_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)), combine_tables(*tables), comp.weights,
                          allow_uncovered=True)
    return model


@register("omni_lm")
def omni_lm(comp: FixtureComponent) -> dict:
    cfg = comp.model_config
    model = _model(comp, [llm_table(cfg), audio_embed_table(cfg)])
    forward, state = pure(model)
    embed, _ = pure(model, "embed")
    a = comp.arrays
    cases = sorted({m.group(1) for k in a for m in [re.match(r"(\w+?)__input_ids$", k)] if m})
    out = {}
    for case in cases:
        ids = a[f"{case}__input_ids"]
        codes = place_audio_codes(ids, a[f"{case}__audios_tokens"], cfg.tokens.audio_pad_token_id)
        kw = {}
        if f"{case}__position_ids" in a:
            kw["positions"] = jnp.asarray(a[f"{case}__position_ids"])
        if f"{case}__attention_mask" in a:
            kw["attention_mask"] = jnp.asarray(a[f"{case}__attention_mask"])
        if f"{case}__seqlens" in a:
            kw["segment_ids"] = jnp.asarray(segment_ids_from_seqlens(a[f"{case}__seqlens"], ids.shape[1]))
        res = jax.jit(forward)(state, jnp.asarray(ids), jnp.asarray(codes), **kw)
        embeds = jax.jit(embed)(state, jnp.asarray(ids), jnp.asarray(codes))
        valid = a.get(f"{case}__valid_mask")
        wrap = (lambda v: Masked(np.asarray(v), valid)) if valid is not None else np.asarray
        out[f"{case}__logits"] = wrap(res.logits)
        out[f"{case}__last_hidden_state"] = wrap(res.hidden)
        out[f"{case}__inputs_embeds"] = wrap(embeds)
    return out


@register("audio_head")
def audio_head(comp: FixtureComponent) -> dict:
    cfg = comp.model_config
    model = _model(comp, [audio_head_table(cfg), audio_embed_table(cfg)])
    a = comp.arrays
    head, state = pure(model, "audio_logits")
    logits = jax.jit(head)(state, jnp.asarray(a["x"]), jnp.asarray(a["audios_tokens"]))
    return {f"logits_{k}": np.asarray(v) for k, v in enumerate(logits)}
