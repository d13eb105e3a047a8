"""User errors of `train` are one line (no traceback), with the full traceback behind --verbose."""
from __future__ import annotations

import subprocess

import pytest
from training_helpers import REPO, cli_env, run_cli


def _train(config, workdir, *extra):
    return ["train", "--config", str(config), "--workdir", str(workdir), "--no-progress", *extra]


def test_config_errors_are_one_line(tmp_path):
    env = cli_env(1)
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n    pass\n")
    tiny = REPO / "configs" / "tiny.py"
    cases = [
        (_train(bad, tmp_path / "a"), f"config file {bad}: syntax error at line 1: invalid syntax"),
        (_train(tiny, tmp_path / "b", "--config.steps=-5"), "steps=-5 must be >= 0"),
        (_train(tiny, tmp_path / "c", "--config.train.learning_rate=-1"), "train.learning_rate=-1.0"),
    ]
    for args, want in cases:
        proc = run_cli(args, env)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines() == [f"baichuan-audio train: error: {proc.stderr.split('error: ')[1]}"
                                                    .strip()], proc.stderr[-2000:]
        assert want in proc.stderr
    verbose = run_cli([*cases[1][0], "--verbose"], env)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_read_only_workdir_is_one_line(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {made.stderr.strip()}")
    try:
        proc = run_cli(_train(REPO / "configs" / "tiny.py", mount / "run"), cli_env(1))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"baichuan-audio train: error: {mount / 'run'}: read-only file system"
