"""``baichuan-audio train`` of the ``vocoder`` task (``configs/vocoder_tiny.py`` with a smaller
generator — one ResBlock kernel and dilation per stage — and two period + one spectrogram
discriminators, so it compiles in reasonable time) on two fixed 0.16 s segments of the demo
corpus: the losses fall, a run killed mid-way resumes to exactly the uninterrupted run, and the
export is the ``hift.pt`` layout of that generator (every table key, nothing else, exact values),
also as a torch state_dict. ``tests/parity/test_vocoder_training_structure.py`` checks the
trained model's generator against the parity fixture's reference structure.

The three runs share one compiled program (the session's XLA compilation cache)."""
import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from baichuan_audio_jax.audio.io import load_audio
from baichuan_audio_jax.config import ModelConfig, load_config
from baichuan_audio_jax.conversion.tables.vocoder import vocoder_table
from baichuan_audio_jax.conversion.torch_io import read_tensors
from baichuan_audio_jax.conversion.vocoder import load_vocoder, vocoder_config_from_tensors
from baichuan_audio_jax.records import read_manifest, resolve_audio_path
from baichuan_audio_jax.training.export import export_run, trained_model
from baichuan_audio_jax.training.metrics import read_metrics
from data_pipelines.demo_corpus import TRAIN_MANIFEST
from tests.training_helpers import REPO, cli_command, cli_env, run_cli

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make test-quick` leaves it out

STEPS = 12
SEGMENT = 8 * 480  # data.seq_len 8 mel frames at 24 kHz
SMALL_VOCODER = dict(base_channels=16, f0_cond_channels=16, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
                     source_resblock_dilation_sizes=[[1], [1], [1]], f0_num_layers=2)
OVERRIDES = [f"steps={STEPS}", "log_every=1", "checkpoint_every=4", "checkpoint.async_save=false", "mesh.data=1"]


def _segments_manifest(directory) -> str:
    """Two recordings exactly one segment long (so every batch holds the same two segments)."""
    lines = []
    for i, (_, rec) in enumerate(read_manifest(TRAIN_MANIFEST)):
        if i == 2:
            break
        wav = load_audio(resolve_audio_path(TRAIN_MANIFEST, rec["audio"]), 24000)
        mid = (wav.shape[0] - SEGMENT) // 2
        path = directory / f"seg{i}.wav"
        sf.write(path, wav[mid:mid + SEGMENT], 24000, subtype="FLOAT")
        lines.append(json.dumps({"audio": path.name, "text": rec["text"]}))
    manifest = directory / "segments.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    config = directory / "vocoder_segments.py"
    config.write_text(
        "from baichuan_audio_jax.config import load_config\n\n\n"
        "def get_config():\n"
        f"    cfg = load_config({str(REPO / 'configs' / 'vocoder_tiny.py')!r})\n"
        f"    cfg.data.sources = [{str(manifest)!r}]\n"
        f"    cfg.model.vocoder.update({SMALL_VOCODER!r})\n"
        "    cfg.train.vocoder.periods = [2, 3]\n"
        "    cfg.train.vocoder.resolutions = [[512, 50, 240]]\n"
        "    return cfg\n")
    return str(config)


def _train_args(config: str, workdir) -> list[str]:
    return ["train", "--config", config, "--workdir", str(workdir), "--no-progress",
            *[f"--config.{o}" for o in OVERRIDES]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocoder")
    config = _segments_manifest(root)
    env = cli_env(1)
    ref_dir, run_dir = root / "uninterrupted", root / "interrupted"
    ref = run_cli(_train_args(config, ref_dir), env, timeout=2700)
    assert ref.returncode == 0, ref.stderr[-3000:]

    victim = subprocess.Popen(cli_command(*_train_args(config, run_dir)), env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_dir / "metrics.jsonl"
    deadline, killed = time.time() + 900, False
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 6:
            victim.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    victim.wait(timeout=60)
    assert killed and victim.returncode == -signal.SIGKILL, "the run was not killed mid-way"
    again = run_cli(_train_args(config, run_dir), env, timeout=2700)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step" in again.stdout + again.stderr
    return ref_dir, run_dir, load_config(config, OVERRIDES)


def test_losses_fall(runs):
    rows = read_metrics(runs[0])
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = rows[:3], rows[-3:]
    mean = lambda rs, k: float(np.mean([r[k] for r in rs]))
    # measured: mel L1 2.16 -> 1.93 (-11 %), discriminator loss 2.97 -> 1.82, adversarial 2.96 -> 2.04
    assert mean(last, "mel_l1") < 0.95 * mean(first, "mel_l1"), [r["mel_l1"] for r in rows]
    assert mean(last, "d_loss") < mean(first, "d_loss"), [r["d_loss"] for r in rows]
    assert mean(last, "g_adv") < mean(first, "g_adv"), [r["g_adv"] for r in rows]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert os.listdir(runs[0] / "tensorboard")


def test_killed_run_resumes_exactly(runs):
    ref_dir, run_dir, _ = runs
    keys = ("loss", "mel_l1", "d_loss", "g_adv", "feature_loss", "grad_norm", "learning_rate")
    want = {r["step"]: {k: r[k] for k in keys} for r in read_metrics(ref_dir)}
    got = {r["step"]: {k: r[k] for k in keys} for r in read_metrics(run_dir)}
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want
    a, b = trained_model(str(ref_dir))[0], trained_model(str(run_dir))[0]
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_is_the_reference_layout(runs, tmp_path):
    ref_dir, _, config = runs
    summary = export_run(str(ref_dir), str(tmp_path))
    assert summary["task"] == "vocoder" and summary["step"] == STEPS
    exported = read_tensors(tmp_path / "hift.safetensors")
    cfg = ModelConfig.from_config(config.model)
    # every reference key of this structure, no discriminator tensor
    assert set(exported) == {e.torch for e in vocoder_table(cfg.vocoder).entries}
    assert vocoder_config_from_tensors(exported, cfg.vocoder) == cfg.vocoder
    trained = trained_model(str(ref_dir))[0].generator
    reloaded = load_vocoder(exported, cfg.vocoder)
    for x, y in zip(jax.tree.leaves(nnx.state(trained)), jax.tree.leaves(nnx.state(reloaded))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_as_torch_state_dict(runs, tmp_path):
    torch = pytest.importorskip("torch")
    export_run(str(runs[0]), str(tmp_path), vocoder_file="hift.pt")
    export_run(str(runs[0]), str(tmp_path))
    state = torch.load(tmp_path / "hift.pt", weights_only=True)
    reference = read_tensors(tmp_path / "hift.safetensors")
    assert set(state) == set(reference)
    for k, v in state.items():
        np.testing.assert_array_equal(v.numpy(), reference[k], err_msg=k)
