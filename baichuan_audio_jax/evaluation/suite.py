"""An evaluation suite: named tasks, each a type, a manifest and options.

::

    {"tasks": [{"name": "heldout_asr", "type": "asr", "manifest": "heldout.jsonl", "language": "en"},
               {"name": "cloze_t2t", "type": "cloze", "manifest": "cloze.jsonl", "mode": "t2t"}]}

A suite is a JSON or YAML file, or a Python file whose ``get_config()`` returns a mapping (an
``ml_collections.ConfigDict`` or a dict) of the same shape. Manifest paths (and other path options:
``asr_checkpoint``) are relative to the suite file; audio paths inside a manifest are relative to
the manifest, as everywhere in the project. Every key of a task other than ``name``, ``type`` and
``manifest`` is an option of its type (:data:`baichuan_audio_jax.evaluation.tasks.TASK_TYPES`
documents them); an unknown option is an error naming the task, so a misspelling is not ignored.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from typing import Any, Mapping

from baichuan_audio_jax.evaluation.tasks import TASK_TYPES

PATH_OPTIONS = ("asr_checkpoint",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SuiteError(ValueError):
    """A suite that cannot run: the message names the file and the task/key."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    type: str
    manifest: str  # absolute
    options: dict

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclasses.dataclass(frozen=True)
class Suite:
    path: str
    tasks: tuple[TaskSpec, ...]


def read_suite_file(path: str) -> Mapping:
    """The raw mapping of a suite file (by extension: .json, .yaml/.yml, .py)."""
    if not os.path.isfile(path):
        raise SuiteError(f"{path}: no such suite file")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".json":
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        elif ext in (".yaml", ".yml"):
            import yaml  # lazy: only YAML suites need it

            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        elif ext == ".py":
            spec = importlib.util.spec_from_file_location("_eval_suite", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if not hasattr(module, "get_config"):
                raise SuiteError(f"{path}: a Python suite must define get_config()")
            data = module.get_config()
            data = data.to_dict() if hasattr(data, "to_dict") else data
        else:
            raise SuiteError(f"{path}: unknown suite format {ext!r} (use .json, .yaml or .py)")
    except (json.JSONDecodeError, ValueError) as e:
        if isinstance(e, SuiteError):
            raise
        raise SuiteError(f"{path}: cannot parse the suite ({e})") from None
    except ImportError as e:
        raise SuiteError(f"{path}: {e}") from None
    if not isinstance(data, Mapping):
        raise SuiteError(f"{path}: a suite is an object with a 'tasks' list")
    return data


def suite_from_mapping(data: Mapping, base_dir: str, where: str = "suite") -> Suite:
    """Checks a suite mapping; relative paths are resolved against ``base_dir``."""
    tasks = data.get("tasks")
    if not isinstance(tasks, (list, tuple)) or not tasks:
        raise SuiteError(f"{where}: 'tasks' must be a non-empty list")
    unknown_top = set(data) - {"tasks", "description"}
    if unknown_top:
        raise SuiteError(f"{where}: unknown key(s) {sorted(unknown_top)} (a suite has 'tasks' and 'description')")
    out, seen = [], set()
    for i, task in enumerate(tasks):
        at = f"{where}: tasks[{i}]"
        if not isinstance(task, Mapping):
            raise SuiteError(f"{at} is not an object")
        for key in ("name", "type", "manifest"):
            if not isinstance(task.get(key), str) or not task[key].strip():
                raise SuiteError(f"{at}: '{key}' must be a non-empty string")
        name, kind = task["name"], task["type"]
        at = f"{where}: task {name!r}"
        if not _NAME.match(name):
            raise SuiteError(f"{at}: a name is letters, digits, '_', '-', '.' (it names DIR/{name}.jsonl)")
        if name in seen:
            raise SuiteError(f"{at}: the name is used twice")
        seen.add(name)
        if kind not in TASK_TYPES:
            raise SuiteError(f"{at}: unknown type {kind!r}; choose from {sorted(TASK_TYPES)}")
        options = {k: v for k, v in task.items() if k not in ("name", "type", "manifest")}
        allowed = TASK_TYPES[kind].options
        bad = sorted(set(options) - set(allowed))
        if bad:
            raise SuiteError(f"{at}: unknown option(s) {bad} for type {kind!r}; it takes {sorted(allowed)}")
        for key in PATH_OPTIONS:
            if isinstance(options.get(key), str) and options[key]:
                options[key] = _resolve(base_dir, options[key])
        manifest = _resolve(base_dir, task["manifest"])
        if not os.path.isfile(manifest):
            raise SuiteError(f"{at}: manifest {manifest} does not exist")
        out.append(TaskSpec(name, kind, manifest, options))
    return Suite(where, tuple(out))


def load_suite(path: str | os.PathLike) -> Suite:
    path = os.path.abspath(os.fspath(path))
    suite = suite_from_mapping(read_suite_file(path), os.path.dirname(path), where=path)
    return dataclasses.replace(suite, path=path)


def _resolve(base: str, ref: str) -> str:
    ref = os.path.expanduser(ref)
    return ref if os.path.isabs(ref) else os.path.normpath(os.path.join(base, ref))
