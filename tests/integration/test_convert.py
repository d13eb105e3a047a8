"""Checkpoint conversion on the reference fixtures.

The tiny model formed by the union of the six model fixture files (``omni_lm``, ``audio_head``,
``audio_encoder``, ``vq_bridge``, ``audio_decoder``, ``flow_matching``: all 380 keys) and the
vocoder file ``hift_vocoder`` go torch -> bundle -> torch bit for bit (every key, dtype and byte);
the bundle restores exactly the model that loading the reference weights directly gives (bf16 ->
f32 is lossless), on one device or sharded over a mesh, and its weights reproduce the parity
outputs within the manifest's tolerances; coverage is checked key by key (the real 7B layout
included, model and vocoder) and bad input fails before anything is written, naming keys and
shapes.
"""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
from conftest import REPO, requires_torch
from flax import nnx

from baichuan_audio_jax.cli.main import main
from baichuan_audio_jax.config import ModelConfig, load_config, model_config_from_reference, reference_config_from_model
from baichuan_audio_jax.conversion.bundle import load_bundle, read_bundle_info, save_bundle
from baichuan_audio_jax.conversion.convert import ConversionError, bundle_to_torch, check_listing, torch_to_bundle
from baichuan_audio_jax.conversion.torch_io import HFCheckpointWriter, ReferenceCheckpoint, TensorSpec

LLM_FILES = ("omni_lm", "audio_head")
OMNI_FILES = ("omni_lm", "audio_head", "audio_encoder", "vq_bridge", "audio_decoder", "flow_matching")
TINY = str(REPO / "configs" / "tiny.py")


def _files(parity_dir, names):
    return [str(parity_dir / f"{n}.safetensors") for n in names]


def _assert_identical(a: ReferenceCheckpoint, b: ReferenceCheckpoint):
    """The strict-load equivalent: same key set, every tensor the same shape, dtype and bytes."""
    assert set(a.keys()) == set(b.keys()), sorted(set(a.keys()) ^ set(b.keys()))[:8]
    for k in a.keys():
        x, y = a.get(k), b.get(k)
        assert (x.shape, x.dtype) == (y.shape, y.dtype), k
        assert x.tobytes() == y.tobytes(), k


def _flat(module):
    return {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(module))}


def _assert_same_state(ours, ref):
    a, b = _flat(ours), _flat(ref)
    assert a.keys() == b.keys()
    for p in b:
        assert type(a[p]) is type(b[p]), p
        x, y = a[p].get_value(), b[p].get_value()
        assert x.dtype == y.dtype == np.float32, p
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


@pytest.fixture(scope="module")
def tiny_model_config(fixture_set):
    return model_config_from_reference(fixture_set.manifest["tiny_config"])


@pytest.fixture(scope="module")
def converted(parity_dir, tiny_model_config, tmp_path_factory):
    """The union of the model fixture files -> bundle -> sharded HF directory, once per module."""
    root = tmp_path_factory.mktemp("convert")
    src = ReferenceCheckpoint(_files(parity_dir, OMNI_FILES))
    torch_to_bundle(src, str(root / "bundle"), tiny_model_config)
    bundle_to_torch(str(root / "bundle"), str(root / "hf"), max_shard_bytes=2**20)
    return src, root


@pytest.fixture(scope="module")
def vocoder_bundle(parity_dir, tmp_path_factory):
    """hift_vocoder.safetensors as saved through its wrapper module (``hifigan_generator.`` prefix)
    with ``parametrizations`` weight-norm names -> a vocoder-only bundle (tiny config)."""
    from baichuan_audio_jax.conversion.components import open_reference

    root = tmp_path_factory.mktemp("vocoder")
    src = ReferenceCheckpoint(parity_dir / "hift_vocoder.safetensors")
    rename = {k: k.replace("weight_g", "parametrizations.weight.original0").replace(
        "weight_v", "parametrizations.weight.original1") for k in src.keys()}
    specs = [TensorSpec("hifigan_generator." + rename[k], *src.listing()[k]) for k in src.keys()]
    w = HFCheckpointWriter(str(root / "wrapped"), specs)
    for k in src.keys():
        w.write("hifigan_generator." + rename[k], src.get(k))
    w.close()
    wrapped = open_reference(root / "wrapped", "vocoder")
    assert set(wrapped.keys()) == set(rename.values())
    torch_to_bundle(wrapped, str(root / "b"), load_config(TINY).model, checkpoint="vocoder")
    return src, rename, root / "b"


def test_round_trip_of_every_fixture_file_is_bit_exact(converted):
    src, root = converted
    back = ReferenceCheckpoint(root / "hf")
    assert len(src.keys()) == 380 and len(os.listdir(root / "hf")) > 3  # several shards + index + config.json
    _assert_identical(src, back)
    exported = ModelConfig.from_config(model_config_from_reference(back.config))
    assert exported == ModelConfig.from_config(load_config(root / "bundle").model)


def test_bundle_restores_the_directly_loaded_model(converted, fixture_set):
    """Every variable the bundle restores (parameters, position-table buffers, RVQ codebooks)
    equals what loading the fixture weights directly gives, exactly."""
    from baichuan_audio_jax.conversion.loading import load_component
    from baichuan_audio_jax.layers.params import Buffer
    from baichuan_audio_jax.models.vq_bridge import Codebook

    src, root = converted
    cfg = fixture_set.model_config
    loaded = load_bundle(root / "bundle")
    assert loaded.model.component_names == ("llm", "audio_tokenizer", "flow_matching") and loaded.config == cfg
    unused = {}
    for name in loaded.model.component_names:
        direct, extra = load_component(name, cfg, src)
        _assert_same_state(getattr(loaded.model, name), direct)
        unused.update(extra)
    kinds = {type(v) for v in _flat(loaded.model).values()}
    assert {nnx.Param, Buffer, Codebook} <= kinds
    info = read_bundle_info(root / "bundle")
    assert info["components"] == ["llm", "audio_tokenizer", "flow_matching"]
    assert info["reference_extras"] == ["model.safetensors"]
    extras = ReferenceCheckpoint(root / "bundle" / "reference_extras" / "model.safetensors")
    assert sorted(extras.keys()) == sorted(unused)  # the audio head's unused FFN biases


def _exported(loaded) -> dict:
    """The bundle's model and vocoder exported to reference names in memory (float32)."""
    from baichuan_audio_jax.conversion.components import components_of
    from baichuan_audio_jax.conversion.mapping import combine_tables, export_tensors
    from baichuan_audio_jax.conversion.vocoder import export_vocoder

    concrete = combine_tables(*[t for c in components_of("model") for t in c.mapping_tables(loaded.config)])
    out = dict(export_tensors(nnx.state(loaded.model), concrete))
    if loaded.vocoder is not None:
        out.update(export_vocoder(loaded.vocoder))
    return out


def test_bundle_weights_reproduce_the_parity_outputs(converted, vocoder_bundle, fixture_set, parity_dir):
    """The parity runners fed with the bundles' weights (model and vocoder, exported to reference
    names in memory) pass within the manifest's float32 tolerances (``|ours − ref| ≤ atol +
    rtol·|ref|``; codes exact)."""
    from baichuan_audio_jax.conversion.components import components_of
    from baichuan_audio_jax.conversion.mapping import combine_tables, export_tensors
    from baichuan_audio_jax.conversion.vocoder import export_vocoder
    from baichuan_audio_jax.parity.compare import compare
    from baichuan_audio_jax.parity.registry import runners

    _, root = converted
    model = load_bundle(root / "bundle")
    concrete = combine_tables(*[t for c in components_of("model") for t in c.mapping_tables(model.config)])
    weights = dict(export_tensors(nnx.state(model.model), concrete))
    weights.update(export_vocoder(load_bundle(vocoder_bundle[2]).vocoder))
    for name in ("vq_bridge", "audio_head", "hift_vocoder"):
        comp = fixture_set.component(name)
        names = ReferenceCheckpoint(parity_dir / comp.spec["weights_file"]).keys()
        comp.__dict__["weights"] = {k: weights[k] for k in names}  # instead of the fixture file
        ours = runners()[name](comp)
        for key in comp.outputs():
            result = compare(name, key, ours[key], comp.arrays[key], comp.array_spec(key))
            assert result.passed, result.line()


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
    assert load_bundle(tmp_path / "b", components=["llm"]).tokenizer_dir == str(tmp_path / "b" / "tokenizer")
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


def test_component_selection(parity_dir, tiny_model_config, tmp_path):
    """A checkpoint holding only the LLM: refused as incomplete (naming a missing key) unless the
    components to convert are selected; keys of unselected components are skipped and counted."""
    llm_only = ReferenceCheckpoint(_files(parity_dir, LLM_FILES))
    with pytest.raises(ConversionError, match=r"missing: audio_tokenizer\.audio_model\.positional_embedding "
                                              r"\(expected \[400, 64\]\)"):
        torch_to_bundle(llm_only, str(tmp_path / "b"), tiny_model_config)
    assert os.listdir(tmp_path) == []
    torch_to_bundle(llm_only, str(tmp_path / "b"), tiny_model_config, components=["llm"])
    result = bundle_to_torch(str(tmp_path / "b"), str(tmp_path / "hf"))
    assert any("lacks component(s) ['audio_tokenizer', 'flow_matching']" in n for n in result.notes)
    _assert_identical(llm_only, ReferenceCheckpoint(tmp_path / "hf"))
    union = ReferenceCheckpoint(_files(parity_dir, OMNI_FILES))
    result = torch_to_bundle(union, str(tmp_path / "fm"), tiny_model_config, components=["flow_matching"])
    assert result.tensors == 199 and read_bundle_info(tmp_path / "fm")["components"] == ["flow_matching"]
    assert "skipped (component not selected): llm (54 tensors), audio_tokenizer (127 tensors)" in result.notes


def test_cli_round_trip_and_refusals(parity_dir, tmp_path, capsys):
    inputs = [a for f in _files(parity_dir, OMNI_FILES) for a in ("--input", f)]
    bundle, hf = str(tmp_path / "bundle"), str(tmp_path / "hf")
    assert main(["convert", "--from", "torch", *inputs, "--to", "orbax", "--output", bundle, "--config", TINY,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "llm: mapped 54/54" in out and "audio_tokenizer: mapped 127/127" in out
    assert "flow_matching: mapped 199/199" in out and "wrote" in out and "GB/s" in out
    assert main(["convert", "--from", "orbax", "--input", bundle, "--to", "torch", "--output", hf,
                 "--no-progress"]) == 0
    _assert_identical(ReferenceCheckpoint(_files(parity_dir, OMNI_FILES)), ReferenceCheckpoint(hf))
    assert main(["convert", "--from", "orbax", "--input", bundle, "--to", "torch", "--output", hf,
                 "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    bad_configs = {
        "--config.model.llm.intermediate_size=352":
            "shape mismatch: model.layers.0.mlp.gate_proj.weight: expected [352, 256] from the config, "
            "found [320, 256]",
        "--config.model.audio_encoder.num_layers=3":
            "missing: audio_tokenizer.audio_model.layers.2.self_attn.q_proj.weight (expected [64, 64])",
        "--config.model.vq_bridge.codebook_sizes=[64,32,16,16,8,8,8,4]":
            "shape mismatch: audio_tokenizer.audio_bridge_model.vq_list.7.codebook.embed: expected [4, 256] from "
            "the config, found [8, 256]",
    }
    for override, message in bad_configs.items():
        assert main(["convert", "--from", "torch", *inputs, "--to", "orbax", "--output", str(tmp_path / "x"),
                     "--config", TINY, override, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err, (override, err)
        assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / ".x.partial")
    assert main(["convert", "--from", "torch", "--input", str(tmp_path / "nothing"), "--to", "orbax",
                 "--output", str(tmp_path / "y"), "--config", TINY]) == 2
    assert "nothing: no such file or directory" in capsys.readouterr().err
    assert main(["convert", "--from", "torch", *inputs, "--to", "orbax", "--output", str(tmp_path / "y"),
                 "--config", TINY, "--components", "llm,vocoder"]) == 2
    assert "unknown component(s) ['vocoder'] for the model checkpoint" in capsys.readouterr().err


def test_vocoder_added_to_a_model_bundle_and_exported(converted, parity_dir, tmp_path, capsys):
    """hift_vocoder.safetensors goes into an existing model bundle (a new bundle is staged, the
    kept files hard-linked, then swapped in) and comes back bit-exactly as .safetensors and .pt;
    a mismatching vocoder config fails naming the key, both shapes and the implied overrides,
    leaving the bundle as it was."""
    from baichuan_audio_jax.conversion.vocoder import load_vocoder

    _, root = converted
    hift = str(parity_dir / "hift_vocoder.safetensors")
    before = sorted(os.listdir(root)), (root / "bundle" / "bundle.json").read_bytes()
    args = ["convert", "--from", "torch", "--input", hift, "--component", "vocoder", "--to", "orbax", "--no-progress"]
    assert main(args + ["--output", str(root / "bundle")]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch: conv_pre.weight_v: expected [512, 80, 7] from the config, found [32, 80, 7]" in err
    assert "--config.model.vocoder.base_channels=32 --config.model.vocoder.f0_cond_channels=32" in err
    assert (sorted(os.listdir(root)), (root / "bundle" / "bundle.json").read_bytes()) == before

    bundle = tmp_path / "bundle"
    shutil.copytree(root / "bundle", bundle)
    some_file = next(os.path.join(d, f) for d, _, fs in os.walk(bundle / "params") for f in fs)
    inode = os.stat(some_file).st_ino
    args += ["--output", str(bundle), "--config.model.vocoder.base_channels=32",
             "--config.model.vocoder.f0_cond_channels=32"]
    assert main(args) == 0
    assert "written into the existing bundle, keeping its model checkpoint" in capsys.readouterr().out
    assert os.stat(some_file).st_ino == inode and sorted(os.listdir(tmp_path)) == ["bundle"]
    info = read_bundle_info(bundle)
    assert info["components"] == ["llm", "audio_tokenizer", "flow_matching", "vocoder"]
    assert set(info["checkpoints"]) == {"model", "vocoder"}
    assert info["reference_layout"] == {"vocoder": {"weight_norm": "weight_g"}}
    loaded = load_bundle(bundle, components=[])
    assert loaded.config.vocoder.base_channels == 32 and loaded.model is None
    _assert_same_state(loaded.vocoder, load_vocoder(ReferenceCheckpoint(hift), loaded.config.vocoder))
    assert main(args) == 2
    assert "already has a vocoder checkpoint (pass --overwrite" in capsys.readouterr().err

    for name in ("hift.safetensors", "hift.pt"):
        if name.endswith(".pt"):
            requires_torch()
        out = str(tmp_path / "export" / name)
        assert main(["convert", "--from", "orbax", "--input", str(bundle), "--component", "vocoder", "--to", "torch",
                     "--output", out, "--no-progress"]) == 0
        _assert_identical(ReferenceCheckpoint(hift), ReferenceCheckpoint(out))
    assert main(["convert", "--from", "orbax", "--input", str(bundle), "--component", "vocoder", "--to", "torch",
                 "--output", str(tmp_path / "dir"), "--no-progress"]) == 2
    assert "name the output .safetensors or .pt" in capsys.readouterr().err


def test_vocoder_naming_and_wrapper_prefix_are_kept(vocoder_bundle, tmp_path):
    """The wrapper prefix is stripped on read, the naming detected, kept in the bundle and used on
    export (in the hift.pt layout, i.e. without the wrapper)."""
    src, rename, bundle = vocoder_bundle
    info = read_bundle_info(bundle)
    assert info["components"] == ["vocoder"] and list(info["checkpoints"]) == ["vocoder"]
    assert info["reference_layout"] == {"vocoder": {"weight_norm": "parametrizations"}}
    assert "wrapper prefix ['hifigan_generator.'] removed" in info["checkpoints"]["vocoder"]["source"]
    bundle_to_torch(str(bundle), str(tmp_path / "hift.safetensors"), checkpoint="vocoder")
    back = ReferenceCheckpoint(tmp_path / "hift.safetensors")
    assert set(back.keys()) == set(rename.values())
    for k, new in rename.items():
        assert back.get(new).tobytes() == src.get(k).tobytes(), k
    assert load_bundle(bundle).model is None


def test_model_added_to_a_vocoder_bundle(vocoder_bundle, parity_dir, tmp_path):
    """The other direction: a model checkpoint written into a vocoder-only bundle keeps the
    vocoder (its files hard-linked, its naming record kept)."""
    bundle = tmp_path / "b"
    shutil.copytree(vocoder_bundle[2], bundle)
    some_file = next(os.path.join(d, f) for d, _, fs in os.walk(bundle / "vocoder") for f in fs)
    inode = os.stat(some_file).st_ino
    torch_to_bundle(ReferenceCheckpoint(_files(parity_dir, LLM_FILES)), str(bundle), load_config(TINY).model,
                    components=["llm"])
    info = read_bundle_info(bundle)
    assert info["components"] == ["llm", "vocoder"] and set(info["checkpoints"]) == {"model", "vocoder"}
    assert info["reference_layout"] == {"vocoder": {"weight_norm": "parametrizations"}}
    assert os.stat(some_file).st_ino == inode
    loaded = load_bundle(bundle)
    assert loaded.model.component_names == ("llm",) and loaded.vocoder is not None


def test_dry_run_on_the_real_7b_layout(parity_dir, capsys):
    """Every key of the released model and vocoder maps with the right shape."""
    rc = main(["convert", "--dry-run", "--shapes", str(parity_dir / "real_config_shapes.json"),
               "--config", str(REPO / "configs" / "baichuan_audio_7b.py")])
    out = capsys.readouterr().out
    assert rc == 0, out
    for line in ("llm: mapped 282/282", "audio_tokenizer: mapped 667/667", "flow_matching: mapped 1073/1073",
                 "vocoder: mapped 328/328"):
        assert line in out
    assert out.count("OK: full coverage") == 2
    assert "unknown:" not in out and "missing:" not in out and "mismatch" not in out


def test_dry_run_names_bad_keys_shapes_and_dtypes(parity_dir, tiny_model_config, tmp_path):
    src = ReferenceCheckpoint(_files(parity_dir, LLM_FILES))
    listing = dict(src.listing())
    del listing["model.norm.weight"]
    listing["model.layers.0.mlp.up_proj.weight"] = ((321, 256), listing["model.layers.0.mlp.up_proj.weight"][1])
    listing["model.layers.9.mlp.up_proj.weight"] = ((320, 256), None)
    listing["lm_head.weight"] = (listing["lm_head.weight"][0], np.dtype(np.int32))
    cov = check_listing(ModelConfig.from_config(tiny_model_config), listing, source="edited", components=["llm"])
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
        torch_to_bundle(ReferenceCheckpoint(tmp_path / "bad"), str(tmp_path / "out"), tiny_model_config,
                        components=["llm"])
    assert not os.path.exists(tmp_path / "out")


def test_nonfinite_weights_are_warned_by_name_both_ways(parity_dir, tmp_path, capsys):
    """A checkpoint with NaN/Inf values converts (the weights are carried as they are) but both
    directions warn on stderr, naming the tensor and how many values are not finite."""
    src = ReferenceCheckpoint(_files(parity_dir, LLM_FILES))
    specs = [TensorSpec(k, s, d) for k, (s, d) in src.listing().items()]
    w = HFCheckpointWriter(str(tmp_path / "nan"), specs)
    for s in specs:
        t = src.get(s.name)
        if s.name == "model.norm.weight":
            t = t.copy()
            t[:3] = np.nan
            t[3] = np.inf
        w.write(s.name, t)
    w.close()
    bundle, hf = str(tmp_path / "bundle"), str(tmp_path / "hf")
    assert main(["convert", "--from", "torch", "--input", str(tmp_path / "nan"), "--to", "orbax", "--output", bundle,
                 "--config", TINY, "--components", "llm", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 tensor(s) hold NaN/Inf values: model.norm.weight (4 values)" in err, err
    assert main(["convert", "--from", "orbax", "--input", bundle, "--to", "torch", "--output", hf,
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 tensor(s) hold NaN/Inf values: model.norm.weight (4 values)" in err, err
    assert np.isnan(ReferenceCheckpoint(hf).get("model.norm.weight")[:3].astype(np.float32)).all()


def test_pt_input_converts_exactly(converted, tiny_model_config, tmp_path):
    torch = requires_torch()
    src, _ = converted
    sd = {}
    for k in src.keys():
        a = src.get(k)
        sd[k] = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16) if a.dtype == ml_dtypes.bfloat16 \
            else torch.from_numpy(a.copy())
    torch.save({"state_dict": sd}, tmp_path / "model.pt")  # wrapped, as training checkpoints are
    torch_to_bundle(ReferenceCheckpoint(tmp_path / "model.pt"), str(tmp_path / "b"), tiny_model_config)
    bundle_to_torch(str(tmp_path / "b"), str(tmp_path / "hf"))
    _assert_identical(src, ReferenceCheckpoint(tmp_path / "hf"))


def test_save_bundle_from_memory_and_config_checks(converted, tiny_model_config, tmp_path):
    """A model in memory (as training ends) saved as a bundle restores identically; a config
    that does not match the stored arrays fails naming the parameter and both shapes."""
    from baichuan_audio_jax.conversion.bundle import BundleError

    _, root = converted
    model = load_bundle(root / "bundle", components=["llm"]).model
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
    with pytest.raises(BundleError, match="has no vocoder"):
        load_bundle(root / "bundle", components=[], vocoder=True)


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
