"""Runtimes: jitted, batched model entry points for tools, pipelines and demos."""
