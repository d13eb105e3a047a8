"""Reading a parity fixture set.

A set is a directory holding ``manifest.json`` (configs, array roles and tolerances),
``<component>.safetensors`` (weights under the reference's exact names) and
``<component>.npz`` (inputs, outputs, intermediates). Nothing here assumes the dimensions,
batch sizes or special ids of any particular set: everything is read from the manifest.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping

import numpy as np

from baichuan_audio_jax.config import ModelConfig, model_config_from_reference
from baichuan_audio_jax.conversion.torch_io import read_tensors


class FixtureError(ValueError):
    pass


class FixtureComponent:
    def __init__(self, fixture_set: "FixtureSet", name: str, spec: Mapping[str, Any]):
        self.set = fixture_set
        self.name = name
        self.spec = spec

    @property
    def manifest(self) -> Mapping[str, Any]:
        return self.set.manifest

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        fname = self.spec.get("arrays_file", f"{self.name}.npz")
        path = os.path.join(self.set.root, fname)
        if not os.path.exists(path):
            raise FixtureError(f"{self.name}: arrays file {path} not found")
        with np.load(path) as d:
            return {k: d[k] for k in d.files}

    @functools.cached_property
    def weights(self) -> dict[str, np.ndarray]:
        fname = self.spec.get("weights_file")
        if not fname:
            return {}
        path = os.path.join(self.set.root, fname)
        if not os.path.exists(path):
            raise FixtureError(f"{self.name}: weights file {path} not found")
        return read_tensors(path)  # bf16 up-cast to float32, exactly

    def array_spec(self, key: str) -> Mapping[str, Any]:
        return self.spec.get("arrays", {}).get(key, {})

    def outputs(self) -> list[str]:
        return [k for k, v in self.spec.get("arrays", {}).items() if v.get("role") == "output"]

    @property
    def config(self) -> Mapping[str, Any]:
        """The component's own config block if it has one, else the set's tiny model config."""
        return self.spec.get("config") or self.manifest.get("tiny_config", {})

    @property
    def model_config(self) -> ModelConfig:
        return self.set.model_config


class FixtureSet:
    def __init__(self, root: str):
        self.root = os.fspath(root)
        path = os.path.join(self.root, "manifest.json")
        if not os.path.exists(path):
            raise FixtureError(f"no manifest.json in fixture directory {self.root}")
        try:
            with open(path) as f:
                self.manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise FixtureError(f"{path}: invalid JSON ({e})") from e
        if "components" not in self.manifest:
            raise FixtureError(f"{path}: no 'components' section")

    @property
    def component_names(self) -> list[str]:
        return list(self.manifest["components"])

    def component(self, name: str) -> FixtureComponent:
        if name not in self.manifest["components"]:
            raise FixtureError(f"component {name!r} is not in {self.root}/manifest.json "
                               f"(it has {self.component_names})")
        return FixtureComponent(self, name, self.manifest["components"][name])

    @functools.cached_property
    def model_config(self) -> ModelConfig:
        tiny = self.manifest.get("tiny_config")
        if not tiny:
            raise FixtureError(f"{self.root}/manifest.json has no tiny_config")
        return ModelConfig.from_config(model_config_from_reference(tiny))
