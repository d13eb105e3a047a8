"""Evaluation of trained models on held-out data (an application layer: may use data_pipelines)."""
