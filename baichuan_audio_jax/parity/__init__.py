"""Parity against reference fixture sets (``manifest.json`` + ``<name>.safetensors`` + ``<name>.npz``)."""
