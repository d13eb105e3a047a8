"""The audio LLM and the audio head reproduce the reference fixtures.

Bound: |ours − ref| ≤ suggested_atol + 1e-4·|ref| per array (manifest float32 tolerances, e.g.
2e-5 for LM logits); integer arrays exact.
"""
import subprocess
import sys

import pytest

from baichuan_audio_jax.parity.runner import run_component


@pytest.mark.parametrize("component", ["omni_lm", "audio_head"])
def test_component_matches_reference(fixture_set, component):
    results = run_component(fixture_set, component)
    assert results, "no arrays compared"
    failures = [r.line() for r in results if not r.passed]
    assert not failures, "\n".join(failures)
    compared = {r.array for r in results}
    assert set(fixture_set.component(component).outputs()) <= compared


def test_omni_lm_covers_three_layouts(fixture_set):
    names = {r.array for r in run_component(fixture_set, "omni_lm")}
    for case in ("plain", "left_padded", "packed"):
        assert f"{case}__logits" in names


def test_parity_cli_exit_codes(parity_dir, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "baichuan_audio_jax", "parity", "--fixtures", str(parity_dir),
                         "--components", "audio_head"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "parity: 8 passed, 0 failed" in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "baichuan_audio_jax", "parity", "--fixtures", str(tmp_path)],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "manifest.json" in missing.stderr
    unknown = subprocess.run([sys.executable, "-m", "baichuan_audio_jax", "parity", "--fixtures", str(parity_dir),
                              "--components", "no_such_component"], capture_output=True, text=True)
    assert unknown.returncode == 1 and "not in this fixture set" in unknown.stdout
