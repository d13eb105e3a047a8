"""Model definitions (NNX modules)."""
