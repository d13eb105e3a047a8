"""HiFT vocoder: parity, exact phase accumulation, weight norm under both namings, mapping table.

Parity bound: |ours − ref| ≤ suggested_atol + 1e-4·|ref| (manifest: waveform 2e-4, f0 2e-3,
source_s 1e-4, conv_post_out 4e-6). The harmonic phase must equal the float64-accumulated
reference cumsum bit for bit; weight-norm folds agree with PyTorch to 1e-6 relative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_torch

from baichuan_audio_jax.layers.weight_norm import fold_weight_norm
from baichuan_audio_jax.models.hift import harmonic_phase


def test_harmonic_phase_equals_float64_accumulation():
    """Long sequences (200 frames = 96,000 samples, f0 0–500 Hz incl. unvoiced zeros): every
    value equals fl32(float64 prefix sum) mod 1, which a float32 running sum misses by ~1e-3."""
    rng = np.random.default_rng(0)
    f0 = rng.uniform(0, 500, (2, 200)).astype(np.float32)
    f0[:, 20:30] = 0.0
    hop, sr, nh = 480, 24000, 9
    ours = np.asarray(jax.jit(lambda f: harmonic_phase(f, nh, hop, sr))(jnp.asarray(f0)))
    inc = (np.repeat(f0, hop, axis=1)[:, :, None] * np.arange(1, nh + 1, dtype=np.float32)) / np.float32(sr)
    ref = np.mod(np.cumsum(inc.astype(np.float64), axis=1).astype(np.float32), np.float32(1))
    np.testing.assert_array_equal(ours, ref)
    naive = np.mod(np.cumsum(inc, axis=1, dtype=np.float32), np.float32(1))
    assert np.abs(naive - ref).max() > 1e-4  # what the exact scheme is for


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")
def test_weight_norm_fold_matches_torch_for_both_apis():
    """Our fold of the stored (g, v) equals PyTorch's weight for Conv1d and ConvTranspose1d under
    the legacy and the parametrizations weight norm (bound 1e-6 relative)."""
    torch = requires_torch()
    from torch.nn.utils import parametrizations, weight_norm

    # PyTorch layout -> ours and back: Conv1d [out, in, k] <-> [k, in, out]; ConvTranspose1d
    # [in, out, k] <-> [k, in, out].
    layouts = {torch.nn.Conv1d: ((2, 1, 0), (2, 1, 0)), torch.nn.ConvTranspose1d: ((2, 0, 1), (1, 2, 0))}
    apis = ((weight_norm, "weight_g", "weight_v"),
            (parametrizations.weight_norm, "parametrizations.weight.original0", "parametrizations.weight.original1"))
    torch.manual_seed(0)
    for cls, (to_ours, to_torch) in layouts.items():
        for wn, g_name, v_name in apis:
            m = wn(cls(6, 5, 7, stride=3))
            with torch.no_grad():
                g = m.get_parameter(g_name)
                g.mul_(torch.rand_like(g) + 0.5)
                m(torch.zeros(1, 6, 10))  # the legacy API recomputes .weight in a forward pre-hook
            sd = {k: t.detach().numpy() for k, t in m.state_dict().items()}
            folded = fold_weight_norm(jnp.asarray(sd[v_name].transpose(to_ours)),
                                      jnp.asarray(sd[g_name].transpose(to_ours)))
            np.testing.assert_allclose(np.asarray(folded).transpose(to_torch), m.weight.detach().numpy(),
                                       rtol=1e-6, atol=1e-7, err_msg=f"{cls.__name__} {g_name}")
