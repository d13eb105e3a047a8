"""Short tokenizer and flow-matching runs on the demo corpus through ``baichuan-audio train``
(data-parallel over 2 devices), their export to the reference layout and the tokenizer evaluation.

One tokenizer run (4 steps) and one flow run started from it (2 steps) are shared by the tests of
this module."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, complete_reference_config, load_config
from data_pipelines.demo_corpus import HELDOUT_MANIFEST
from tests.training_helpers import REPO, cli_env, run_cli

COMMON = ["data.batch_size=4", "data.read_threads=1", "data.prefetch=4", "log_every=1", "checkpoint.async_save=false",
          "mesh.data=2"]


def _train(config_file, workdir, overrides):
    args = ["train", "--config", str(REPO / "configs" / config_file), "--workdir", str(workdir), "--no-progress",
            *[f"--config.{o}" for o in overrides]]
    proc = run_cli(args, cli_env(2), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_config(REPO / "configs" / config_file, overrides)


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory, sp_model):  # noqa: F811
    workdir = tmp_path_factory.mktemp("tok")
    # A one-layer alignment LLM (the tiny vocabulary, so the demo sentencepiece model fits) compiles faster.
    llm = ["model.llm.hidden_size=64", "model.llm.intermediate_size=96", "model.llm.num_layers=1",
           "model.llm.num_heads=2", "model.llm.num_kv_heads=1", "model.llm.head_dim=32", "model.audio_head.head_dim=32"]
    cfg = _train("tokenizer_tiny.py", workdir, [*COMMON, *llm, f"data.tokenizer={sp_model}", "steps=4",
                                                "checkpoint_every=2", "train.tokenizer.restart_after=2"])
    return workdir, cfg


@pytest.fixture(scope="module")
def tokenizer_models(tokenizer_run):
    """The run's trained model at steps 4 and 2."""
    from baichuan_audio_jax.training.export import trained_model

    return trained_model(str(tokenizer_run[0]))[0], trained_model(str(tokenizer_run[0]), 2)[0]


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, tokenizer_run):
    workdir = tmp_path_factory.mktemp("flow")
    cfg = _train("flow_tiny.py", workdir, [*COMMON, "steps=2", "checkpoint_every=1",
                                           f"init_from.tokenizer={tokenizer_run[0]}"])
    return workdir, cfg


def _read(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def test_tokenizer_run_metrics_frozen_llm_and_codebook_state(tokenizer_run, tokenizer_models):
    workdir, cfg = tokenizer_run
    rows = _read(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for k in ("loss", "mel_mae", "commit_loss", "llm_loss", "multiscale_mel", "codes_used_fraction"):
            assert np.isfinite(r[k]), k
        assert all(0 <= r[f"vq{k}_used"] <= s for k, s in enumerate(cfg.model.vq_bridge.codebook_sizes))
    # The schedules are evaluated at the step before the update (0, 1, ...): 10 % at step 0.
    assert rows[0]["replace_fraction"] == pytest.approx(0.1)
    assert rows[0]["commit_weight"] == pytest.approx(0.02)
    # restart_after=2: codes unused at steps 1 and 2 are restarted at step 2 (and reported dead).
    assert sum(rows[1][f"vq{k}_restarts"] for k in range(8)) == sum(rows[1][f"vq{k}_dead"] for k in range(8)) > 0

    model, earlier = tokenizer_models
    equal = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))
    assert equal(nnx.state(model.llm), nnx.state(earlier.llm)), "the alignment LLM must stay frozen"
    assert not equal(nnx.state(model.tokenizer.audio_decoder, nnx.Param),
                     nnx.state(earlier.tokenizer.audio_decoder, nnx.Param)), "the decoder must train"
    for k, vq in enumerate(model.tokenizer.vq_bridge.quantizers):
        assert not np.array_equal(vq.embed.get_value(), earlier.tokenizer.vq_bridge.quantizers[k].embed.get_value())
        unused = np.asarray(model.unused_steps[k].get_value())
        assert unused.dtype == np.int32 and unused.min() >= 0 and unused.max() < 2


def test_tokenizer_checkpoint_exports_to_the_reference_layout(tokenizer_run, tokenizer_models, tmp_path):
    from safetensors.numpy import load_file

    from baichuan_audio_jax.conversion.loading import load_model
    from baichuan_audio_jax.conversion.mapping import combine_tables, expected_torch_shapes, state_shapes
    from baichuan_audio_jax.conversion.tables.audio_tokenizer import audio_tokenizer_tables
    from baichuan_audio_jax.models.audio_tokenizer import AudioTokenizer
    from baichuan_audio_jax.training.export import export_run

    workdir, cfg = tokenizer_run
    summary = export_run(str(workdir), str(tmp_path / "ref"))
    tensors = load_file(str(tmp_path / "ref" / "model.safetensors"))
    mc = ModelConfig.from_config(cfg.model)
    concrete = combine_tables(*audio_tokenizer_tables(mc))
    shapes = expected_torch_shapes(concrete, state_shapes(nnx.state(nnx.eval_shape(
        lambda: AudioTokenizer(mc, rngs=nnx.Rngs(0))))))
    assert summary["tensors"] == len(tensors) == len(shapes)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == shapes
    assert all(k.startswith("audio_tokenizer.") for k in tensors)
    assert tensors["audio_tokenizer.audio_bridge_model.vq_list.0.codebook.embed"].shape == (64, 256)
    ref_cfg = json.load(open(tmp_path / "ref" / "config.json"))
    assert ref_cfg["audio_config"]["vq_config"]["codebook_sizes"] == list(mc.codebook_sizes)
    assert complete_reference_config(ref_cfg, mc) == ref_cfg, "every key of the released config.json is written"
    # Reading the export back gives the trained tokenizer: identical codes and decoder states.
    loaded, _ = load_model(lambda: AudioTokenizer(mc, rngs=nnx.Rngs(0)), concrete, tensors)
    feats = jax.random.normal(jax.random.key(0), (2, 160, mc.audio_encoder.num_mel_bins))
    lengths = np.array([160, 97])

    def run(tok):
        codes, n = tok.encode(feats, lengths)
        return codes, tok.decode(codes, n).hidden_before_dconv2

    codes_a, hidden_a = jax.jit(lambda: run(tokenizer_models[0].tokenizer))()
    codes_b, hidden_b = jax.jit(lambda: run(loaded))()
    np.testing.assert_array_equal(codes_a, codes_b)
    np.testing.assert_array_equal(hidden_a, hidden_b)


def test_evaluation_on_held_out_speech(tokenizer_run, tokenizer_models, tmp_path):
    from baichuan_audio_jax.evaluation.tokenizer_metrics import evaluate_manifest

    workdir, cfg = tokenizer_run
    lines = open(HELDOUT_MANIFEST).readlines()[:5]
    manifest = tmp_path / "few.jsonl"
    manifest.write_text("".join(line.replace('"audio/', '"' + str(REPO / "data_pipelines/demo_corpus/audio") + "/")
                                for line in lines))
    report = evaluate_manifest(tokenizer_models[0].tokenizer, cfg, str(manifest), batch_size=4, progress=False)
    assert report["records"] == 5 and report["skipped"] == {}
    assert 0 < report["mel_mae"] < 10 and 0 < report["coarse_mae"] < 10
    assert [c["size"] for c in report["codebooks"]] == list(cfg.model.vq_bridge.codebook_sizes)
    assert all(1 <= c["used"] <= c["size"] and 1 <= c["perplexity"] <= c["size"] for c in report["codebooks"])


def test_flow_run_trains_on_the_frozen_tokenizer_and_exports(flow_run, tokenizer_models, tmp_path):
    from baichuan_audio_jax.training.export import export_run, trained_model

    workdir, cfg = flow_run
    rows = _read(workdir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["cfm_loss"]) and np.isfinite(r["prior_loss"]) for r in rows)
    flow_model, _, _ = trained_model(str(workdir))
    tok_model = tokenizer_models[0]
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), nnx.state(flow_model.tokenizer),
                        nnx.state(tok_model.tokenizer))
    assert all(jax.tree.leaves(same)), "the tokenizer is loaded from its run and stays frozen"
    first, _, _ = trained_model(str(workdir), 1)
    moved = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), nnx.state(flow_model.flow, nnx.Param),
                         nnx.state(first.flow, nnx.Param))
    assert not all(jax.tree.leaves(moved)), "prenet and U-Net must train"
    summary = export_run(str(workdir), str(tmp_path / "ref"))
    from safetensors.numpy import load_file

    names = load_file(str(tmp_path / "ref" / "model.safetensors"))
    assert summary["tensors"] == len(names)
    flow_names = [k for k in names if k.startswith("audio_tokenizer.audio_flow_matching_decoder.")]
    assert "audio_tokenizer.audio_flow_matching_decoder.prenet.out_proj.weight" in flow_names
    assert any(k.startswith("audio_tokenizer.audio_model.") for k in names)
