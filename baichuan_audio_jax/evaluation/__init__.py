"""Evaluation as the paper evaluates: suites of tasks scored on a model bundle or on live
training parameters.

* :mod:`.suite`: the suite file (JSON, YAML or a Python ``get_config()``) and its tasks;
* :mod:`.inputs`: manifest records checked per task, bad ones counted by reason;
* :mod:`.models`: what tasks run on (generation engine, log-likelihood scorer, audio tokenizer),
  from a bundle or from the parameters of a running training job;
* :mod:`.tasks`: the task types ``asr``, ``s2tt``, ``tts``, ``cloze``, ``spoken_qa``, ``tokenizer``;
* :mod:`.normalize` and :mod:`.metrics`: the text normaliser and the scores;
* :mod:`.runner`: runs a suite, streams ``DIR/<task>.jsonl`` (an interrupted run continues where it
  stopped) and writes ``DIR/report.json``, ``DIR/report.md`` and TensorBoard scalars.
"""
