"""The generator the ``vocoder`` task trains (``configs/vocoder_tiny.py``) has the reference
``HiFTGenerator`` structure of the parity fixture: its export maps onto every one of the
fixture's 328 ``hift.pt`` keys with the same shapes, and the fixture's weights load into it and
export back bit for bit (the fixture's outputs for these weights are checked by
``tests/test_hift.py::test_parity_hift_vocoder``)."""
import numpy as np
from conftest import REPO
from flax import nnx

from baichuan_audio_jax.config import ModelConfig, load_config, vocoder_config_from_reference
from baichuan_audio_jax.conversion.mapping import check_coverage, combine_tables, state_shapes
from baichuan_audio_jax.conversion.tables.vocoder import vocoder_table
from baichuan_audio_jax.conversion.vocoder import export_vocoder, load_vocoder
from baichuan_audio_jax.training.tasks import get_task


def test_trained_generator_has_the_reference_structure(fixture_set):
    comp = fixture_set.component("hift_vocoder")
    config = load_config(REPO / "configs" / "vocoder_tiny.py")
    cfg = ModelConfig.from_config(config.model)
    assert cfg.vocoder == vocoder_config_from_reference(comp.spec["config"])
    task = get_task("vocoder")
    model = nnx.eval_shape(lambda: task.make_model(cfg, nnx.Rngs(0), **task.model_options(config)))
    source = {k: tuple(v.shape) for k, v in comp.weights.items()}
    report = check_coverage(combine_tables(vocoder_table(cfg.vocoder)), state_shapes(nnx.state(model.generator)),
                            source)
    assert report.ok, (report.missing[:5], report.unknown[:5], report.mismatched[:5])
    assert len(report.mapped) == comp.spec["num_tensors"] == 328
    loaded = load_vocoder(comp.weights, cfg.vocoder)
    assert state_shapes(nnx.state(loaded)) == state_shapes(nnx.state(model.generator))
    exported = dict(export_vocoder(loaded))
    assert set(exported) == set(comp.weights)
    for k, ref in comp.weights.items():
        np.testing.assert_array_equal(exported[k], ref, err_msg=k)
