"""Inference: jitted, batched model entry points (tokenization, waveform synthesis, generation)."""
