"""Test set-up: 8 fake CPU devices (sharding tests), float32-accurate matmuls, shared fixtures."""
import os

# CPU code generation without LLVM's expensive passes: the same programs, compiled ~2x faster
# (tests time nothing; `benchmarks/` run at the default level).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# One persistent XLA compilation cache for the session: both xdist workers and every command-line
# run they start. Many tests build the same tiny programs (the same step of the same config); the
# first compiles each, the others load it. The controller makes the directory before it starts the
# workers (they inherit the variable) and removes it at the end.
XLA_CACHE_VAR = "TEST_SESSION_XLA_CACHE_DIR"


def pytest_configure(config):
    if XLA_CACHE_VAR not in os.environ:
        os.environ[XLA_CACHE_VAR] = config._session_xla_cache = tempfile.mkdtemp(prefix="baichuan_audio_jax_xla_")
    jax.config.update("jax_compilation_cache_dir", os.environ[XLA_CACHE_VAR])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_unconfigure(config):
    if getattr(config, "_session_xla_cache", None):
        shutil.rmtree(config._session_xla_cache, ignore_errors=True)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("BAICHUAN_AUDIO_SHARED", REPO.parent / "shared"))


def _shared_dir(name: str) -> pathlib.Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent: reference fixtures/data are provided beside the repository "
                    "(set BAICHUAN_AUDIO_SHARED to their location)")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> pathlib.Path:
    """The reference parity fixture set (../shared/parity)."""
    return _shared_dir("parity")


@pytest.fixture(scope="session")
def speech_dir() -> pathlib.Path:
    """Two real speech recordings with transcripts (../shared/data)."""
    return _shared_dir("data")


@pytest.fixture(scope="session")
def fixture_set(parity_dir):
    from baichuan_audio_jax.parity.fixtures import FixtureSet

    return FixtureSet(str(parity_dir))


@pytest.fixture(scope="session")
def tiny_config():
    from baichuan_audio_jax.config import ModelConfig, load_config

    return ModelConfig.from_config(load_config(REPO / "configs" / "tiny.py").model)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    """A sentencepiece model of the demo corpus transcripts, sized for configs/tokenizer_tiny.py."""
    import json

    from baichuan_audio_jax.config import ModelConfig, load_config
    from baichuan_audio_jax.text.tokenizer import train_sentencepiece
    from data_pipelines.demo_corpus import TRAIN_MANIFEST
    from data_pipelines.manifest import record_texts

    cfg = ModelConfig.from_config(load_config(REPO / "configs" / "tokenizer_tiny.py").model)
    texts = [t for line in open(TRAIN_MANIFEST) for t in record_texts(json.loads(line))]
    path = tmp_path_factory.mktemp("sp") / "demo.model"
    train_sentencepiece(texts, path, cfg.tokens, vocab_size=cfg.llm.vocab_size)
    return str(path)


def requires_torch():
    return pytest.importorskip("torch", reason="the optional `torch` extra is not installed")


_LAYERS = ("unit", "parity", "integration")


def pytest_collection_modifyitems(config, items):
    """Marks every test with its layer, the folder it lives in (tests/<layer>/...)."""
    for item in items:
        parts = pathlib.Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if len(parts) > 1 and parts[0] in _LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
