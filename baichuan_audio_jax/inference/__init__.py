"""Inference pipelines built from the models (waveform synthesis, ...)."""
