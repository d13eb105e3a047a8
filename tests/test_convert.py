"""Checkpoint conversion on the reference fixtures: torch -> bundle -> torch is bit-exact, the
bundle restores the same model as loading the reference weights directly (exactly: bf16 -> f32
is lossless), on one device or sharded over a mesh; coverage is checked key by key (the real 7B
layout included) and bad input fails before anything is written, naming keys and shapes.
"""
import json
import os

import ml_dtypes
import numpy as np
import pytest
from conftest import REPO, requires_torch
from flax import nnx

from baichuan_audio_jax.bundle import load_bundle, read_bundle_info, save_bundle
from baichuan_audio_jax.cli.main import main
from baichuan_audio_jax.config import ModelConfig, load_config, model_config_from_reference, reference_config_from_model
from baichuan_audio_jax.conversion.convert import ConversionError, bundle_to_torch, check_listing, torch_to_bundle
from baichuan_audio_jax.conversion.torch_io import HFCheckpointWriter, ReferenceCheckpoint, TensorSpec

LLM_FILES = ("omni_lm", "audio_head")  # the fixture files of the components this version converts
OMNI_FILES = ("omni_lm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching")


def _files(parity_dir, names):
    return [str(parity_dir / f"{n}.safetensors") for n in names]


def _assert_identical(a: ReferenceCheckpoint, b: ReferenceCheckpoint):
    """The strict-load equivalent: same key set, every tensor the same shape, dtype and bytes."""
    assert set(a.keys()) == set(b.keys()), sorted(set(a.keys()) ^ set(b.keys()))[:8]
    for k in a.keys():
        x, y = a.get(k), b.get(k)
        assert (x.shape, x.dtype) == (y.shape, y.dtype), k
        assert x.tobytes() == y.tobytes(), k


@pytest.fixture(scope="module")
def tiny_model_config(fixture_set):
    return model_config_from_reference(fixture_set.manifest["tiny_config"])


@pytest.fixture(scope="module")
def converted(parity_dir, tiny_model_config, tmp_path_factory):
    """The LLM fixture files -> bundle -> sharded HF directory, once per module."""
    root = tmp_path_factory.mktemp("convert")
    src = ReferenceCheckpoint(_files(parity_dir, LLM_FILES))
    torch_to_bundle(src, str(root / "bundle"), tiny_model_config)
    bundle_to_torch(str(root / "bundle"), str(root / "hf"), max_shard_bytes=2**20)
    return src, root


def test_round_trip_is_bit_exact(converted):
    src, root = converted
    back = ReferenceCheckpoint(root / "hf")
    assert len(os.listdir(root / "hf")) > 3  # several shards + index + config.json
    _assert_identical(src, back)
    exported = ModelConfig.from_config(model_config_from_reference(back.config))
    assert exported == ModelConfig.from_config(load_config(root / "bundle").model)


def test_bundle_restores_the_directly_loaded_model(converted, fixture_set):
    """The bundle's parameters equal what the parity path loads from the fixture weights (exactly)."""
    from baichuan_audio_jax.conversion.loading import load_model
    from baichuan_audio_jax.conversion.mapping import combine_tables
    from baichuan_audio_jax.conversion.tables import audio_embed_table, audio_head_table, llm_table
    from baichuan_audio_jax.models.audio_llm import AudioLLM

    _, root = converted
    cfg = fixture_set.model_config
    weights = {**fixture_set.component("omni_lm").weights, **fixture_set.component("audio_head").weights}
    direct, unused = load_model(lambda: AudioLLM(cfg, rngs=nnx.Rngs(0)),
                                combine_tables(llm_table(cfg), audio_embed_table(cfg), audio_head_table(cfg)), weights)
    loaded = load_bundle(root / "bundle")
    assert loaded.model.component_names == ("llm",) and loaded.config == cfg
    ours = dict(nnx.to_flat_state(nnx.state(loaded.model.llm)))
    ref = dict(nnx.to_flat_state(nnx.state(direct)))
    assert ours.keys() == ref.keys()
    for p in ref:
        a, b = ours[p].get_value(), ref[p].get_value()
        assert a.dtype == b.dtype == np.float32, p
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))
    info = read_bundle_info(root / "bundle")
    assert info["components"] == ["llm"] and info["reference_extras"] == ["model.safetensors"]
    extras = ReferenceCheckpoint(root / "bundle" / "reference_extras" / "model.safetensors")
    assert sorted(extras.keys()) == sorted(unused)  # the audio head's unused FFN biases


def test_directory_input_carries_tokenizer_and_reference_files(converted, tmp_path):
    """A Hugging Face directory's config.json, generation_config.json and tokenizer files travel
    through the bundle and come back unchanged next to the weights."""
    _, root = converted
    src_dir = tmp_path / "src"
    bundle_to_torch(str(root / "bundle"), str(src_dir), max_shard_bytes=2**20)
    (src_dir / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    (src_dir / "tokenizer_config.json").write_text('{"model_max_length": 8192}')
    (src_dir / "generation_config.json").write_text('{"do_sample": false}')
    config = json.loads((src_dir / "config.json").read_text())
    config["_name_or_path"] = "carried verbatim"
    (src_dir / "config.json").write_text(json.dumps(config))
    main(["convert", "--from", "torch", "--input", str(src_dir), "--to", "orbax", "--output", str(tmp_path / "b"),
          "--no-progress"])
    info = read_bundle_info(tmp_path / "b")
    assert info["tokenizer"] == ["tokenizer.json", "tokenizer_config.json"]
    assert load_bundle(tmp_path / "b").tokenizer_dir == str(tmp_path / "b" / "tokenizer")
    bundle_to_torch(str(tmp_path / "b"), str(tmp_path / "back"))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (src_dir / name).read_bytes(), name
    _assert_identical(ReferenceCheckpoint(src_dir), ReferenceCheckpoint(tmp_path / "back"))


def test_bundle_restores_sharded_on_a_mesh(converted):
    from baichuan_audio_jax.sharding import make_mesh, state_shardings

    _, root = converted
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    single = load_bundle(root / "bundle").model
    sharded = load_bundle(root / "bundle", shardings=mesh).model
    want = dict(nnx.to_flat_state(state_shardings(nnx.state(sharded), mesh)))
    for p, var in nnx.to_flat_state(nnx.state(sharded)):
        assert var.get_value().sharding == want[p], p
    assert any(len(set(s.spec) - {None}) for s in want.values())  # something is actually sharded
    for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(sharded)), nnx.to_flat_state(nnx.state(single))):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(p))


def test_float32_storage_still_exports_the_reference_dtypes(converted, tiny_model_config, tmp_path):
    src, _ = converted
    torch_to_bundle(src, str(tmp_path / "b32"), tiny_model_config, dtype="float32")
    info = read_bundle_info(tmp_path / "b32")
    assert set(info["checkpoints"]["model"]["dtypes"]) == {"float32"}
    bundle_to_torch(str(tmp_path / "b32"), str(tmp_path / "hf"))
    _assert_identical(src, ReferenceCheckpoint(tmp_path / "hf"))


def test_all_fixture_files_round_trip_with_unsupported_parts_carried(parity_dir, tiny_model_config, tmp_path):
    """The union of the six omni files (all 380 keys of the tiny model): without
    --carry-unsupported the conversion refuses and writes nothing; with it, export is bit-exact."""
    src = ReferenceCheckpoint(_files(parity_dir, OMNI_FILES))
    with pytest.raises(ConversionError, match="audio_tokenizer: 127 keys, component not yet supported"):
        torch_to_bundle(src, str(tmp_path / "b"), tiny_model_config)
    assert os.listdir(tmp_path) == []
    torch_to_bundle(src, str(tmp_path / "b"), tiny_model_config, carry_unsupported=True)
    assert read_bundle_info(tmp_path / "b")["carried_unsupported"] == {"audio_tokenizer": 127, "flow_matching": 199}
    bundle_to_torch(str(tmp_path / "b"), str(tmp_path / "hf"))
    back = ReferenceCheckpoint(tmp_path / "hf")
    assert len(back.keys()) == 380
    _assert_identical(src, back)


def test_cli_round_trip_and_refusals(parity_dir, tmp_path, capsys):
    inputs = [a for f in _files(parity_dir, LLM_FILES) for a in ("--input", f)]
    cfg = str(REPO / "configs" / "tiny.py")
    bundle, hf = str(tmp_path / "bundle"), str(tmp_path / "hf")
    assert main(["convert", "--from", "torch", *inputs, "--to", "orbax", "--output", bundle, "--config", cfg,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "llm: mapped 54/54" in out and "wrote" in out and "GB/s" in out
    assert main(["convert", "--from", "orbax", "--input", bundle, "--to", "torch", "--output", hf,
                 "--no-progress"]) == 0
    _assert_identical(ReferenceCheckpoint(_files(parity_dir, LLM_FILES)), ReferenceCheckpoint(hf))
    assert main(["convert", "--from", "orbax", "--input", bundle, "--to", "torch", "--output", hf,
                 "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", "--from", "torch", *inputs, "--to", "orbax", "--output", str(tmp_path / "x"),
                 "--config", cfg, "--config.model.llm.intermediate_size=352", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch: model.layers.0.mlp.gate_proj.weight: expected [352, 256] from the config, found " \
           "[320, 256]" in err
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / ".x.partial")
    assert main(["convert", "--from", "torch", "--input", str(tmp_path / "nothing"), "--to", "orbax",
                 "--output", str(tmp_path / "y"), "--config", cfg]) == 2
    assert "nothing: no such file or directory" in capsys.readouterr().err
    assert main(["convert", "--from", "torch", "--input", str(parity_dir / "hift_vocoder.safetensors"),
                 "--component", "vocoder", "--to", "orbax", "--output", str(tmp_path / "v"), "--config", cfg]) == 2
    assert "vocoder) is not yet supported by this version" in capsys.readouterr().err


def test_dry_run_on_the_real_7b_layout(parity_dir, capsys):
    """Every LLM/audio-head key of the released model maps with the right shape; the parts this
    version does not convert yet are reported as such, and the run exits 1 because of them."""
    rc = main(["convert", "--dry-run", "--shapes", str(parity_dir / "real_config_shapes.json"),
               "--config", str(REPO / "configs" / "baichuan_audio_7b.py")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "llm: mapped 282/282" in out
    assert "audio_tokenizer: 667 keys, component not yet supported" in out
    assert "flow_matching: 1073 keys, component not yet supported" in out
    assert "vocoder: 328 keys, component not yet supported" in out
    assert "unknown:" not in out and "missing:" not in out and "mismatch" not in out


def test_dry_run_names_bad_keys_shapes_and_dtypes(parity_dir, tiny_model_config, tmp_path):
    src = ReferenceCheckpoint(_files(parity_dir, LLM_FILES))
    listing = dict(src.listing())
    del listing["model.norm.weight"]
    listing["model.layers.0.mlp.up_proj.weight"] = ((321, 256), listing["model.layers.0.mlp.up_proj.weight"][1])
    listing["model.layers.9.mlp.up_proj.weight"] = ((320, 256), None)
    listing["lm_head.weight"] = (listing["lm_head.weight"][0], np.dtype(np.int32))
    cov = check_listing(ModelConfig.from_config(tiny_model_config), listing, source="edited")
    text = "\n".join(cov.lines())
    assert "missing: model.norm.weight (expected [256])" in text
    assert "shape mismatch: model.layers.0.mlp.up_proj.weight: expected [320, 256] from the config, found " \
           "[321, 256]" in text
    assert "unknown: model.layers.9.mlp.up_proj.weight [320, 256]" in text
    assert "dtype: lm_head.weight is int32" in text
    assert cov.has_problems and "llm: mapped 51/54" in text


def test_unexpected_dtype_in_a_file_fails_before_writing(parity_dir, tiny_model_config, tmp_path):
    src = ReferenceCheckpoint(_files(parity_dir, LLM_FILES))
    specs = [TensorSpec(k, s, np.dtype(np.int16) if k == "model.norm.weight" else d)
             for k, (s, d) in src.listing().items()]
    w = HFCheckpointWriter(str(tmp_path / "bad"), specs)
    for s in specs:
        w.write(s.name, src.get(s.name).view(np.int16) if s.name == "model.norm.weight" else src.get(s.name))
    w.close()
    with pytest.raises(ConversionError, match="dtype: model.norm.weight is int16"):
        torch_to_bundle(ReferenceCheckpoint(tmp_path / "bad"), str(tmp_path / "out"), tiny_model_config)
    assert not os.path.exists(tmp_path / "out")


def test_pt_input_converts_exactly(converted, tiny_model_config, tmp_path):
    torch = requires_torch()
    src, _ = converted
    sd = {}
    for k in src.keys():
        a = src.get(k)
        sd[k] = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16) if a.dtype == ml_dtypes.bfloat16 \
            else torch.from_numpy(a.copy())
    torch.save(sd, tmp_path / "model.pt")
    torch_to_bundle(ReferenceCheckpoint(tmp_path / "model.pt"), str(tmp_path / "b"), tiny_model_config)
    bundle_to_torch(str(tmp_path / "b"), str(tmp_path / "hf"))
    _assert_identical(src, ReferenceCheckpoint(tmp_path / "hf"))


def test_save_bundle_from_memory_and_config_checks(converted, tiny_model_config, tmp_path):
    """A model in memory (as training ends) saved as a bundle restores identically; a config
    that does not match the stored arrays fails naming the parameter and both shapes."""
    from baichuan_audio_jax.bundle import BundleError

    _, root = converted
    model = load_bundle(root / "bundle").model
    save_bundle(tmp_path / "b", tiny_model_config, model, source="test")
    loaded = load_bundle(tmp_path / "b", components=["llm"])
    for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(loaded.model)), nnx.to_flat_state(nnx.state(model))):
        np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(p))
    assert load_config(tmp_path / "b").model.to_dict() == tiny_model_config.to_dict()
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg["model"]["llm"]["intermediate_size"] = 352
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match=r"llm/layers/mlp/down_proj/kernel: checkpoint shape \(2, 320, 256\), "
                                          r"model expects \(2, 352, 256\)"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match=r"has no component\(s\) \['audio_tokenizer'\]"):
        load_bundle(tmp_path / "b", components=["audio_tokenizer"])


def test_reference_config_round_trips(tiny_config):
    """What a reference config.json describes survives writing and reading it (the vocoder's
    settings and the text-side special ids are not part of that file)."""
    from baichuan_audio_jax.config import _AUDIO_CONFIG_TOKEN_FIELDS

    real = ModelConfig.from_config(load_config(REPO / "configs" / "baichuan_audio_7b.py").model)
    for cfg in (tiny_config, real):
        back = ModelConfig.from_config(model_config_from_reference(reference_config_from_model(cfg)))
        for section in ("llm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching"):
            assert getattr(back, section) == getattr(cfg, section), section
        for field in _AUDIO_CONFIG_TOKEN_FIELDS:
            assert getattr(back.tokens, field) == getattr(cfg.tokens, field), field
