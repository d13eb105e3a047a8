"""The audio tokenizer's components reproduce the reference fixtures.

Bound: |ours − ref| ≤ suggested_atol + 1e-4·|ref| per array, the manifest's float32 tolerances
(e.g. 8e-4 for log-mel features, 2e-5 for encoder states, 4e-5 for the refined mel); code ids,
lengths and frame counts exact. The audio decoder's batched outputs are compared on the longest
row and its solo_last_row__* arrays against the last row of our batched run.
"""
import pytest

from baichuan_audio_jax.parity.runner import run_component

COMPONENTS = ["whisper_logmel", "audio_encoder", "vq_bridge", "audio_decoder"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_matches_reference(fixture_set, component):
    results = run_component(fixture_set, component)
    failures = [r.line() for r in results if not r.passed]
    assert not failures, "\n".join(failures)
    compared = {r.array for r in results}
    assert set(fixture_set.component(component).outputs()) <= compared
