"""The import contract of docs/architecture.md: layers only point down, imports live at module level.

The layers are declared once, in ``.importlinter`` at the repository root (import-linter's
``layers`` contract over both packages, function-level imports included). These tests run that
contract on the package as it is, check that every module belongs to a layer, that every
function-local import says why it is lazy, and that the contract does catch a new cycle (on a copy
of the packages with one upward import added).
"""
from __future__ import annotations

import ast
import configparser
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("baichuan_audio_jax", "data_pipelines")


def _lint(repo: pathlib.Path) -> subprocess.CompletedProcess:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='.importlinter', no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    return subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=120)


def _layers() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / ".importlinter")
    names = []
    for line in parser["importlinter:contract:layers"]["layers"].split("\n"):
        names += [n.strip().strip("()") for n in line.split("|") if n.strip()]
    return names


def test_layers_point_down():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_every_module_belongs_to_a_layer():
    layers = set(_layers())
    package = REPO / "baichuan_audio_jax"
    loose = []
    for path in sorted(package.iterdir()):
        name = path.stem if path.suffix == ".py" else path.name
        is_module = path.suffix == ".py" or (path / "__init__.py").exists()
        if not is_module or (name.startswith("__") and name != "__main__"):
            continue
        if f"baichuan_audio_jax.{name}" not in layers:
            loose.append(f"baichuan_audio_jax.{name}")
    assert not loose, f"place these modules in a layer of .importlinter (and docs/architecture.md): {loose}"
    assert "data_pipelines" in layers


def _function_local_imports(path: pathlib.Path):
    """(line, is explained) of every import inside a function."""
    src = path.read_text()
    lines = src.splitlines()
    for fn in ast.walk(ast.parse(src)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        nodes = sorted({id(n): n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}.values(),
                       key=lambda n: n.lineno)
        block_start = None
        for prev, node in zip([None] + nodes[:-1], nodes):
            if prev is None or node.lineno != prev.end_lineno + 1:
                block_start = node.lineno  # first import of a contiguous block
            above = lines[block_start - 2].strip() if block_start > 1 else ""
            yield node.lineno, "# lazy:" in lines[node.lineno - 1] or above.startswith("# lazy:"), lines


def test_function_local_imports_say_why():
    """Only optional heavy dependencies and CLI start-up stay lazy, each with ``# lazy: reason``
    on its line or on the comment line above its block of imports."""
    unexplained = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for lineno, explained, lines in _function_local_imports(path):
                if not explained:
                    unexplained.append(f"{path.relative_to(REPO)}:{lineno}: {lines[lineno - 1].strip()}")
    assert not unexplained, "function-local imports without a '# lazy:' reason:\n" + "\n".join(unexplained)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("copy")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "*.ogg"))
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


@pytest.mark.parametrize("lower, statement, upper", [
    # A module-level import from the model layer up into the command line.
    ("baichuan_audio_jax/models/registry.py", "import baichuan_audio_jax.cli.main\n", "baichuan_audio_jax.cli"),
    # A cycle hidden inside a function: the library reaching up into the data pipelines.
    ("baichuan_audio_jax/inference/prompts.py",
     "\n\ndef _upward():\n    from data_pipelines import manifest\n    return manifest\n", "data_pipelines"),
])
def test_contract_catches_an_upward_import(package_copy, lower, statement, upper):
    target = package_copy / lower
    original = target.read_text()
    try:
        target.write_text(original + statement if statement.startswith("\n") else statement + original)
        result = _lint(package_copy)
    finally:
        target.write_text(original)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and upper in result.stdout, result.stdout
