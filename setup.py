"""Package definition for baichuan_audio_jax.

Versions are pinned to a set that resolves together on Python 3.11 (CPU); the TPU extra adds
libtpu through ``jax[tpu]`` at the same jax version.
"""
from setuptools import find_packages, setup

JAX_VERSION = "0.10.2"

INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "etils[epath]==1.15.0",  # workdir paths (local, mounted or gs://), as Orbax uses them
    "grain==0.2.18",
    "array_record==0.8.6",
    "tensorflow-datasets==4.9.10",
    "librosa==0.11.0",
    "sentencepiece==0.2.3",
    "tokenizers==0.23.3",  # Hugging Face tokenizer.json (the released Qwen2 vocabulary); no torch
    "ml_collections==1.1.0",
    "chex==0.1.92",
    "safetensors==0.8.0",
    "soundfile==0.14.0",
    "jiwer==4.0.0",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "numpy>=2.0,<2.5",
]

EXTRAS_REQUIRE = {
    "dev": ["pytest>=8", "ruff>=0.5"],
    # PyTorch-side conversion checks and Hugging Face initialisation/parity tests.
    "torch": ["torch==2.13.0", "transformers>=4.45,<6"],
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
}

setup(
    name="baichuan_audio_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of the Baichuan-Audio speech LLM",
    packages=find_packages(include=["baichuan_audio_jax", "baichuan_audio_jax.*",
                                    "data_pipelines", "data_pipelines.*"]),
    package_data={"data_pipelines.demo_corpus": ["README.md", "*.jsonl", "audio/*.ogg"]},  # bundled demo data
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["baichuan-audio=baichuan_audio_jax.cli.main:main"]},
)
