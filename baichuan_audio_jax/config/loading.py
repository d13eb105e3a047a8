"""Loading a run config: a config file resolved against the declared sections, then overrides.

``load_config(path, overrides)`` reads ``configs/*.py`` (``get_config()``), a ``config.json``
(this package's model config or a reference one) or a model bundle, and resolves it against the
declared sections (:mod:`.run` for the run, :mod:`.model` for ``model``): every key the file sets
must exist there, with a value of the declared type; the result holds every field (defaults for
what the file leaves out) and is locked, so a later typo cannot add a key either. Overrides
``--config.a.b=value`` are typed by the field they set. An unknown key, in a file or on the
command line, is an error naming the key, the closest valid key and the valid keys of its section.

The parser is our own rather than ``ml_collections.config_flags``: the command line is argparse
with subcommands (config_flags needs absl flags), configs may also be JSON files or model bundles,
and errors name the closest key.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from baichuan_audio_jax.config.model import (
    MODEL_CONFIG_FORMAT,
    ModelConfig,
    model_config_dict,
    model_config_from_json,
    model_field_docs,
)
from baichuan_audio_jax.config.reference import model_config_from_reference
from baichuan_audio_jax.config.run import default_run_config, field_docs


class ConfigKeyError(KeyError):
    """A config key that no section declares; the message names the closest valid key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def load_config(path: str | os.PathLike, overrides: Iterable[str] = (), *,
                run: bool = True) -> ml_collections.ConfigDict:
    """Loads ``configs/*.py`` (``get_config()``), a ``config.json`` or a model bundle, resolves it
    against the declared sections and applies overrides (see the module docstring).

    A ``.json`` file is either this package's model config (as written into model bundles) or a
    reference-format ``config.json``; a directory is read as a model bundle (its ``config.json``).
    Either yields a config whose ``model`` section is read from the file and whose other sections
    are the run defaults. ``run=False`` loads a config of another kind (e.g. ``configs/demo.py``):
    its own keys are the declared ones.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}")
    if os.path.isdir(path):
        bundle_config = os.path.join(path, "config.json")
        if not os.path.exists(os.path.join(path, "bundle.json")) or not os.path.exists(bundle_config):
            raise FileNotFoundError(f"{path} is a directory but not a model bundle (no bundle.json + config.json)")
        path = bundle_config
    if path.endswith(".json"):
        cfg = default_run_config()
        data = _read_json(path)
        if isinstance(data, Mapping) and data.get("format") == MODEL_CONFIG_FORMAT:
            cfg.model = model_config_from_json(data, where=path)
        else:
            cfg.model = model_config_from_reference(data)
    else:
        cfg = _run_config_file(path)
    if run:
        cfg = resolve(cfg, where=path)
    else:
        cfg.lock()
    apply_overrides(cfg, overrides)
    return cfg


def _run_config_file(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"config file {path}: syntax error at line {e.lineno}: {e.msg}") from e
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} defines no get_config()")
    try:
        return module.get_config()
    except TypeError as e:  # a value of the wrong type for a declared field
        raise ValueError(f"config file {path}: {e}") from e


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read config {path}: {e}") from e


# --------------------------------------------------------------------------------------------
# Resolution against the declared sections.
# --------------------------------------------------------------------------------------------

def schema() -> ml_collections.ConfigDict:
    """Every declared key with its default: the run sections and the (7B) model section."""
    cfg = default_run_config()
    cfg.model = model_config_dict()
    return cfg


def resolve(cfg: ml_collections.ConfigDict | Mapping[str, Any], where: str = "config") -> ml_collections.ConfigDict:
    """The declared defaults updated by ``cfg``; unknown keys and wrongly typed values are errors."""
    out = schema()
    with out.init_from.unlocked():
        extra = {k: v for k, v in dict(cfg.get("init_from") or {}).items() if k not in out.init_from}
        for key in extra:  # part paths beyond the declared ones (see run.InitFromSection)
            out.init_from[key] = ""
    _merge(out, cfg, "", where)
    out.lock()
    out.init_from.unlock()  # part paths are checked against the model when the run starts
    return out


def _merge(node: ml_collections.ConfigDict, values: Mapping[str, Any], prefix: str, where: str) -> None:
    items = values.items() if isinstance(values, (Mapping, ml_collections.ConfigDict)) else ()
    for key, value in items:
        full = prefix + key
        if key not in node:
            raise ConfigKeyError(unknown_key_message(full, where))
        current = node[key]
        if isinstance(current, ml_collections.ConfigDict):
            if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
                raise ValueError(f"{where}: {full} is a section ({', '.join(current.keys())}), "
                                 f"not a value ({value!r})")
            _merge(current, value, full + ".", where)
            continue
        if isinstance(value, ml_collections.ConfigDict):
            value = value.to_dict()
        try:
            node[key] = value
        except TypeError as e:
            raise ValueError(f"{where}: {full} must be {type(current).__name__}, got {value!r}") from e


def _all_keys(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_all_keys(v, prefix + k + "."))
    return keys


def closest_key(key: str, declared: ml_collections.ConfigDict | None = None) -> str | None:
    """The declared key a mistyped or misplaced ``key`` most likely means."""
    keys = _all_keys(schema() if declared is None else declared)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return difflib.get_close_matches(key, same_leaf, n=1, cutoff=0.0)[0]
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if match:
        return match[0]
    by_leaf = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.6)
    return next((k for k in keys if by_leaf and k.rsplit(".", 1)[-1] == by_leaf[0]), None)


def unknown_key_message(key: str, where: str, declared: ml_collections.ConfigDict | None = None) -> str:
    section = key.rsplit(".", 1)[0] if "." in key else ""
    node: Any = schema() if declared is None else declared
    for part in section.split(".") if section else ():
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    guess = closest_key(key, declared)
    msg = f"{where}: unknown config key {key!r}"
    if guess:
        msg += f"; did you mean {guess!r}?"
    if valid:
        msg += f" Valid keys of {section or 'the top level'!r}: {', '.join(valid)}"
    return msg


# --------------------------------------------------------------------------------------------
# Command-line overrides.
# --------------------------------------------------------------------------------------------

def _parse_value(text: str, current: Any) -> Any:
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, int) and not isinstance(current, bool):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, (list, tuple)):
        try:
            v = json.loads(text)
        except json.JSONDecodeError:
            v = [x for x in text.split(",") if x]
            if current:
                v = [type(current[0])(x) for x in v]
        return list(v)
    if current is None:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies ``a.b=value`` (or ``--config.a.b=value``) strings, typed by the current value."""
    for item in overrides:
        s = item[2:] if item.startswith("--") else item
        if s.startswith("config."):
            s = s[len("config."):]
        if "=" not in s:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = s.split("=", 1)
        parts = key.split(".")
        node = cfg
        for i, p in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or p not in node:
                raise ConfigKeyError(unknown_key_message(key, f"override {item!r}", cfg))
            if i < len(parts) - 1:
                node = node[p]
        leaf = parts[-1]
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise ValueError(f"override {item!r}: {key} is a section ({', '.join(node[leaf].keys())}), not a value")
        try:
            value = _parse_value(text, node[leaf])
        except ValueError as e:
            raise ValueError(f"override {item!r}: {e}") from e
        with node.ignore_type():
            node[leaf] = value


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates ``--config.x=y`` items from the rest of a command line."""
    overrides, rest = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return overrides, rest


def format_config(cfg: ml_collections.ConfigDict) -> str:
    """Every field of a resolved config, one per line: ``key = value  # doc``."""
    docs = {**field_docs(), **{"model." + k: v for k, v in model_field_docs().items()}}
    lines = []

    def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
        for k, v in node.items():
            key = prefix + k
            if isinstance(v, ml_collections.ConfigDict):
                doc = docs.get(key, "")
                lines.append(f"{key}:" + (f"  # {doc}" if doc else ""))
                walk(v, key + ".")
            else:
                doc = docs.get(key, "")
                value = json.dumps(v, ensure_ascii=False, default=str)
                lines.append(f"{key} = {value}" + (f"  # {doc}" if doc else ""))

    walk(cfg, "")
    return "\n".join(lines)


__all__ = ["ConfigKeyError", "ModelConfig", "apply_overrides", "closest_key", "format_config", "load_config",
           "resolve", "schema", "split_config_overrides"]
