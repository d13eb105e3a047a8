"""Manifest records and their validation: defined in :mod:`baichuan_audio_jax.record_schema`
(shared with ``tokenize --manifest``), re-exported here for the pipelines."""
from baichuan_audio_jax.record_schema import (  # noqa: F401
    ROLES,
    TASKS,
    TEXT_FIELDS,
    RecordError,
    record_texts,
    task_of,
    validate,
)
