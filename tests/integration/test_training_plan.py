"""AOT planning, the train command's errors, and the launch scripts."""
from __future__ import annotations

import subprocess

import jax
import pytest
from training_helpers import REPO, tiny_run_config

from baichuan_audio_jax.training.plan import HBM_BYTES, hbm_for, plan_for_devices


def test_plan_compiles_the_sharded_step_and_reports_memory():
    """The planner lowers and compiles the real step ahead of time on a given device set (here
    the 8 CPU devices; `plan --topology` passes a TPU slice's abstract devices) and reports the
    compiled program's per-device memory and FLOPs."""
    config = tiny_run_config("stage=2", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    result = plan_for_devices(config, jax.devices(), "cpu:8", hbm_bytes=1 << 30)
    assert result.devices == 8 and "fsdp=2" in result.mesh
    assert result.argument_bytes > 0 and result.temp_bytes > 0 and result.output_bytes > 0
    assert result.total_bytes < result.hbm_bytes and result.fits
    assert result.model_flops_per_step > 0 and result.xla_flops_per_device > 0
    text = "\n".join(result.lines())
    for word in ("arguments", "temporaries", "outputs", "total", "HBM", "FLOPs", "compile time"):
        assert word in text
    assert hbm_for("v5p:4x4x4") == HBM_BYTES["v5p"] and hbm_for("tpu9:1x1") is None


def test_train_command_names_bad_config_values(tmp_path, capsys):
    from baichuan_audio_jax.cli.main import main

    base = ["train", "--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(tmp_path), "--no-progress"]
    assert main([*base, "--config.data.source=nope"]) == 2
    assert "unknown data.source 'nope'" in capsys.readouterr().err
    assert main([*base, "--config.stage=5"]) == 2
    assert "no stage 5" in capsys.readouterr().err
    assert main([*base, "--config.train.grad_accum_steps=3"]) == 2
    assert "grad_accum_steps=3" in capsys.readouterr().err


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "launch").iterdir()))
def test_launch_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(REPO / "launch" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_second_plan_of_an_unchanged_program_reads_the_plan_cache(tmp_path):
    """An executable compiled for a TPU slice cannot be loaded back without that TPU, so `plan`
    keeps the compiler's results keyed by the lowered program: the second plan of the same
    program reads them (same numbers, no compile), a changed program compiles again."""
    config = tiny_run_config("stage=2", "mesh.fsdp=8")
    # JAX's own persistent cache already holds this program (another plan, or a run, compiled it
    # in this process): the first plan must still compile for real, or there is no buffer dump.
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        plan_for_devices(config, jax.devices(), "cpu:8", cache_dir=str(tmp_path / "elsewhere"))
        first = plan_for_devices(config, jax.devices(), "cpu:8", hbm_bytes=1 << 30, cache_dir=str(tmp_path))
        second = plan_for_devices(config, jax.devices(), "cpu:8", hbm_bytes=1 << 30, cache_dir=str(tmp_path))
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    assert not first.cached and second.cached
    for field in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "xla_flops_per_device",
                  "compile_seconds", "collective_bytes"):
        assert getattr(first, field) == getattr(second, field), field
    assert [b.shape for b in first.top_buffers] == [b.shape for b in second.top_buffers] and first.top_buffers
    assert "plan cache" in "\n".join(second.lines())
    changed = tiny_run_config("stage=1", "mesh.fsdp=8")
    assert not plan_for_devices(changed, jax.devices(), "cpu:8", cache_dir=str(tmp_path)).cached
