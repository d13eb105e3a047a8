"""Errors a person can read: one line naming the file, step, array and cause.

:class:`ReadableError` is the base of errors the command line prints as one line (no traceback
unless ``--verbose``). :func:`cause_of` turns the exceptions of the storage stack (``OSError``,
TensorStore's status messages as Orbax re-raises them) into a short cause — ``no space left on
device``, ``read-only file system``, ``data truncated or missing`` — and :func:`array_of` finds
the array a TensorStore message names (``params.layers.mlp.kernel`` -> ``params/layers/mlp/kernel``).
"""
from __future__ import annotations

import errno
import re


class ReadableError(Exception):
    """An error whose message is complete on its own line; ``exit_code`` is the process status
    the command line returns for it."""

    exit_code = 2


class CheckpointError(ReadableError):
    """A checkpoint could not be written or read (the message names step, array and cause)."""


_ERRNO_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "file missing",
    errno.EIO: "input/output error",
}

# Fragments of TensorStore / Orbax / absl status messages and what they mean to a person.
_MESSAGE_CAUSES = (
    ("no space left", "no space left on device"),
    ("resource_exhausted", "no space left on device"),
    ("read-only file system", "read-only file system"),
    ("permission denied", "permission denied"),
    ("truncated", "data truncated or missing"),
    ("out_of_range", "data truncated or missing"),
    ("data_loss", "data corrupted"),
    ("not_found", "file missing"),
    ("no such file", "file missing"),
    ("checksum", "data corrupted"),
)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def cause_of(exc: BaseException) -> str:
    """A short cause for ``exc`` (looking through its ``__cause__`` chain)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _ERRNO_CAUSES:
            return _ERRNO_CAUSES[e.errno]
    for e in _chain(exc):
        text = str(e).lower()
        for fragment, cause in _MESSAGE_CAUSES:
            if fragment in text:
                return cause
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:200]


_ARRAY_RE = re.compile(r'Error (?:reading|writing) "([^"/]+)')


def array_of(exc: BaseException) -> str | None:
    """The array named in a TensorStore message of ``exc``'s chain (``a/b/c``), if any."""
    for e in _chain(exc):
        m = _ARRAY_RE.search(str(e))
        if m:
            return m.group(1).replace(".", "/")
    return None
