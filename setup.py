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
    "sacrebleu==2.5.1",  # BLEU/chrF of the s2tt evaluation task
    "opencc==1.1.9",  # traditional -> simplified Chinese in the evaluation normaliser
    "PyYAML>=6.0",  # YAML evaluation suites
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "numpy>=2.0,<2.5",
    # `serve`: the speech server (ASGI app, server, WebSocket protocol, multipart uploads, metrics)
    "fastapi==0.163.2",
    "uvicorn==0.54.0",
    "websockets==17.4",
    "python-multipart==0.0.34",
    "prometheus_client==0.26.0",
]

EXTRAS_REQUIRE = {
    "dev": ["pytest>=8", "pytest-xdist==3.8.0", "ruff>=0.5", "import-linter==2.17",
            "httpx==0.28.1", "selenium==4.51.0"],  # httpx, selenium: server tests
    # PyTorch-side conversion checks and Hugging Face initialisation/parity tests.
    "torch": ["torch==2.13.0", "transformers>=4.45,<6"],
    "tpu": [f"jax[tpu]=={JAX_VERSION}"],
    # `make docs`: the documentation site with API pages generated from the docstrings.
    "docs": ["mkdocs==1.6.1", "mkdocstrings[python]==1.0.8", "mkdocstrings-python==2.0.11",
             "mkdocs-gen-files==0.5.0", "mkdocs-literate-nav==0.6.1"],
}

setup(
    name="baichuan_audio_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of the Baichuan-Audio speech LLM",
    packages=find_packages(include=["baichuan_audio_jax", "baichuan_audio_jax.*",
                                    "data_pipelines", "data_pipelines.*"]),
    package_data={"data_pipelines.demo_corpus": ["README.md", "*.jsonl", "audio/*.ogg", "suites/*"],  # demo data
                  "baichuan_audio_jax.serve": ["static/*"]},  # the voice-chat page
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["baichuan-audio=baichuan_audio_jax.cli.main:main"]},
)
