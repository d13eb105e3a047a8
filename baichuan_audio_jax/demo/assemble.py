"""A model bundle from the training runs of the separately trained parts.

The audio LLM (with its audio head) comes from an ``audio_llm`` run, the audio tokenizer from an
``audio_tokenizer`` run and the flow-matching decoder from a ``flow_matching`` run; all must have
trained the same model config. The result is the bundle ``generate --checkpoint`` reads. A
``vocoder`` run, if given, adds its HiFT generator as the bundle's vocoder (speech is then rendered
by it instead of Griffin-Lim).
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections
from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.conversion.bundle import save_bundle
from baichuan_audio_jax.demo.vocoder_stage import trained_generator
from baichuan_audio_jax.models.baichuan_audio import BaichuanAudio
from baichuan_audio_jax.training.export import trained_model

# (bundle component, training task, attribute of the trained part in that task's model; "" = the model)
PARTS = (("llm", "audio_llm", ""), ("audio_tokenizer", "audio_tokenizer", "tokenizer"),
         ("flow_matching", "flow_matching", "flow"))


def _canonical(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def assemble_bundle(path: str, model_config: ml_collections.ConfigDict, *, llm_run: str, tokenizer_run: str,
                    flow_run: str, text_tokenizer: str, source: str = "demo", vocoder_run: str | None = None) -> str:
    """Writes (replacing) the bundle at ``path``; returns its path."""

    cfg = ModelConfig.from_config(model_config)
    model = nnx.eval_shape(lambda: BaichuanAudio(cfg, rngs=nnx.Rngs(0), components=[p[0] for p in PARTS]))
    runs = dict(llm=llm_run, audio_tokenizer=tokenizer_run, flow_matching=flow_run)
    for component, task, attribute in PARTS:
        trained, run_config, _ = trained_model(runs[component])
        if str(run_config.task) != task:
            raise ValueError(f"{runs[component]} trained task {run_config.task!r}, not {task!r} (for {component})")
        if _canonical(run_config.model) != _canonical(model_config):
            raise ValueError(f"{runs[component]} trained another model config than the bundle's ({component})")
        part = getattr(trained, attribute) if attribute else trained
        want = jax.tree.map(lambda a: a.shape, nnx.state(getattr(model, component)))
        got = jax.tree.map(lambda a: a.shape, nnx.state(part))
        if want != got:
            raise ValueError(f"{runs[component]}: the trained {component} does not match the model config")
        setattr(model, component, part)
    vocoder = trained_generator(vocoder_run, model_config) if vocoder_run else None
    return save_bundle(os.path.abspath(path), model_config, model, vocoder=vocoder, tokenizer=text_tokenizer,
                       source=source, overwrite=True)
