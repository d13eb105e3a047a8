"""baichuan_audio_jax: a JAX/Flax reimplementation of the Baichuan-Audio speech LLM."""

__version__ = "0.1.0"
