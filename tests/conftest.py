"""Test set-up: 8 fake CPU devices (sharding tests), float32-accurate matmuls, shared fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

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


def requires_torch():
    return pytest.importorskip("torch", reason="the optional `torch` extra is not installed")
