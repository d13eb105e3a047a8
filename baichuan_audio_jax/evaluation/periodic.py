"""Evaluation inside ``train``: the run's suite every ``eval_every`` steps on the live parameters.

:func:`periodic_eval` builds a trainer hook (``train(..., hooks=[...])``). At every step that is a
multiple of ``config.eval_every`` it merges the model from the training state (no checkpoint round
trip), wraps its LLM with the run's text tokenizer (``data.tokenizer``) and, for tasks with audio
input, the audio tokenizer of ``eval.speech_bundle``, and runs ``eval.suite`` into
``<workdir>/eval/step_<N>/`` (report and per-record lines as ``baichuan-audio eval`` writes them).
Scalars go to the run's TensorBoard as ``eval/<task>/<metric>`` at that step, and one line per
evaluation to ``<workdir>/eval/history.jsonl``.

With ``eval.heldout`` (data sources in the form of ``data.sources``, read by the run's
``data.source`` pipeline in order, one epoch), the training loss is also computed on the first
``eval.heldout_batches`` batches of that held-out data (``eval/heldout/<loss>``, and
``heldout`` in the step's report). Single-process runs only, for now.

Resuming neither repeats nor skips an evaluation: the hook runs before the step's checkpoint, so
a checkpoint at step N implies the evaluation at N finished; a step whose ``report.json`` exists
(evaluated, then interrupted before the next checkpoint) is not evaluated again, its scalars are
only written again (a resumed run's TensorBoard drops events after the restored step); an
evaluation cut short continues from its per-record lines.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from baichuan_audio_jax.config import ModelConfig
from baichuan_audio_jax.evaluation.models import EvalModel
from baichuan_audio_jax.evaluation.runner import REPORT_FILE, numeric_metrics, run_suite
from baichuan_audio_jax.evaluation.suite import load_suite
from baichuan_audio_jax.inference.audio_tokenizer import AudioTokenizerRuntime
from baichuan_audio_jax.inference.waveform import SpeechDecoder
from baichuan_audio_jax.text.tokenizer import load_text_tokenizer
from baichuan_audio_jax.training.data_sources import build_iterator
from baichuan_audio_jax.training.tasks import get_task


def _speech(bundle: str):
    return SpeechDecoder(AudioTokenizerRuntime.from_bundle(bundle), None, None)


def heldout_loss_fn(config):
    """A function ``(graphdef, state) -> {loss name: mean over batches, "batches": n}`` over the
    held-out data of ``config.eval.heldout``, or None when there is none."""
    held = config.eval.get("heldout", "")
    if not held:
        return None
    if jax.process_count() > 1:
        raise ValueError("eval.heldout: held-out loss is computed in single-process runs only (for now)")
    hc = ml_collections.ConfigDict(config.to_dict())
    hc.data.sources = [held] if isinstance(held, str) else list(held)
    hc.data.shuffle, hc.data.num_epochs = False, 1
    task, model_cfg = get_task(str(config.task)), ModelConfig.from_config(config.model)
    batches = int(config.eval.get("heldout_batches", 4))

    @functools.partial(jax.jit, static_argnums=0)
    def losses(graphdef, params, model_state, batch):
        model = nnx.merge(graphdef, params, model_state)
        loss, sums = task.loss(model, batch, task.denominators(batch, model_cfg), jax.random.key(0), hc.train, 0)
        return {"loss": loss, **{k: v for k, v in sums.items() if jnp.ndim(v) == 0}}

    def compute(graphdef, state) -> dict:
        iterator = build_iterator(hc)
        totals, n = {}, 0
        for _ in range(batches):
            try:
                host = next(iterator)
            except StopIteration:
                break
            out = jax.device_get(losses(graphdef, state.params, state.model_state,
                                        {k: jnp.asarray(v) for k, v in host.items()}))
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            n += 1
        if not n:
            raise ValueError(f"eval.heldout {held!r} gave no batch")
        return {**{k: v / n for k, v in totals.items()}, "batches": n}

    return compute


def periodic_eval(config, workdir: str, *, log: Callable[[str], None] = print, progress: bool = False):
    """The hook for ``config`` (None when ``eval_every`` is 0). Errors in the suite or tokenizer
    settings are raised here, before training starts."""
    every = int(config.get("eval_every", 0) or 0)
    if every <= 0:
        return None
    ev = config.eval
    if not ev.suite:
        raise ValueError("eval_every > 0 needs eval.suite (an evaluation suite file)")
    if str(config.task) != "audio_llm":
        raise ValueError(f"eval_every: periodic evaluation runs on the audio LLM; task is {config.task!r}")
    suite = load_suite(ev.suite)
    if not config.data.tokenizer:
        raise ValueError("eval_every > 0 needs data.tokenizer (the text tokenizer the suite's prompts use)")
    tokenizer = load_text_tokenizer(str(config.data.tokenizer))
    speech = _speech(str(ev.speech_bundle)) if ev.speech_bundle else None
    heldout = heldout_loss_fn(config)
    root = os.path.join(workdir, "eval")
    if jax.process_index() != 0:  # every process decodes (collectives); process 0 keeps the results
        root = os.path.join(root, f".process_{jax.process_index()}")

    def hook(step: int, graphdef, state, writer) -> None:
        if step % every:
            return
        out = os.path.join(root, f"step_{step}")
        tb = writer.tb if getattr(writer, "enabled", False) else None
        scalars = (lambda tag, v: tb.add_scalar(tag, v, step)) if tb is not None else None
        done = os.path.join(out, REPORT_FILE)
        if os.path.exists(done):
            with open(done, encoding="utf-8") as f:
                report = json.load(f)
            if scalars is not None:
                for k, v in report.get("heldout", {}).items():
                    scalars(f"eval/heldout/{k}", v)
                for name, entry in report["tasks"].items():
                    for k, v in numeric_metrics(entry).items():
                        scalars(f"eval/{name}/{k}", v)
            return
        t0 = time.perf_counter()
        llm = nnx.merge(graphdef, state.params, state.model_state)
        leaf = jax.tree.leaves(state.params)[0]
        mesh = getattr(leaf.sharding, "mesh", None)
        model = EvalModel.from_llm(llm, tokenizer, speech=speech, batch_size=int(ev.batch_size), mesh=mesh,
                                   source=f"step {step}")
        say = writer.message if hasattr(writer, "message") else log
        extra = {"step": step}
        if heldout is not None:
            extra["heldout"] = heldout(graphdef, state)
            say(f"step {step}: held-out loss {extra['heldout']['loss']:.4f}")
            if scalars is not None:
                for k, v in extra["heldout"].items():
                    scalars(f"eval/heldout/{k}", v)
        report = run_suite(suite, model, out, batch_size=int(ev.batch_size), progress=progress, log=say,
                           scalars=scalars, extra=extra)
        if tb is not None:
            tb.flush()
        if jax.process_index() == 0:
            with open(os.path.join(root, "history.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "seconds": round(time.perf_counter() - t0, 2), "time": time.time(),
                                    "heldout": report.get("heldout"),
                                    "tasks": {n: numeric_metrics(e) for n, e in report["tasks"].items()}}) + "\n")

    return hook
