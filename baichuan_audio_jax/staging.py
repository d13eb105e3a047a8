"""Output directories and files that appear complete or not at all.

Everything is written into a hidden sibling ``.<name>.partial`` and renamed to ``<name>`` once
complete; on any error the staging directory (or file) is removed. An existing output is never
replaced unless asked (``overwrite=True``), and then only after the new one is complete.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator


def staging_path(path: str) -> str:
    path = os.path.abspath(os.fspath(path))
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial")


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh staging directory that becomes ``path`` when the block completes."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output {path} already exists (remove it or choose another output)")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = staging_path(path)
    if os.path.exists(staging):  # left behind by an interrupted run
        shutil.rmtree(staging)
    os.makedirs(staging)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if os.path.exists(path):
        old = staging + ".old"
        os.rename(path, old)
        os.rename(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, path)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a hidden sibling file path that replaces ``path`` atomically when the block completes."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path} is a directory; expected a file name")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output {path} already exists (remove it or choose another output)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = staging_path(path)
    if os.path.exists(staging):
        os.remove(staging)
    try:
        yield staging
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise
    os.replace(staging, path)
