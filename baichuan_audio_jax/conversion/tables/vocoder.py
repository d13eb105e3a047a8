"""Reference names of the HiFT vocoder (§3.7): the ``HiFTGenerator.state_dict()`` of ``hift.pt``.

Weight-normed layers appear under either naming scheme of PyTorch's weight norm:
``<m>.weight_g`` / ``<m>.weight_v`` (legacy ``torch.nn.utils.weight_norm``, the released file) or
``<m>.parametrizations.weight.original0`` / ``.original1`` (``torch.nn.utils.parametrizations``).
:func:`vocoder_table` builds the table for one scheme; :func:`weight_norm_naming` tells which a
checkpoint uses. g and v map with the kernel's own transposition (see
:mod:`baichuan_audio_jax.layers.weight_norm`), so both directions are exact.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from baichuan_audio_jax.config import VocoderConfig
from baichuan_audio_jax.conversion.mapping import Conv, ConvTranspose, Entry, Linear, MappingTable

WEIGHT_NORM_NAMES = {
    "weight_g": ("weight_g", "weight_v"),
    "parametrizations": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
}


def weight_norm_naming(keys: Iterable[str]) -> str:
    """``'weight_g'`` or ``'parametrizations'`` from a checkpoint's keys (error if mixed or none)."""
    keys = list(keys)
    legacy = any(k.endswith(".weight_g") for k in keys)
    param = any(k.endswith(".parametrizations.weight.original0") for k in keys)
    if legacy and param:
        raise ValueError("vocoder checkpoint mixes weight_g/weight_v and parametrizations.weight.* names")
    if not (legacy or param):
        raise ValueError("vocoder checkpoint has no weight-normed tensors (neither '*.weight_g' nor "
                         "'*.parametrizations.weight.original0'): not a HiFTGenerator state_dict")
    return "weight_g" if legacy else "parametrizations"


def vocoder_widths(shapes: Mapping[str, tuple]) -> dict[str, int]:
    """The :class:`VocoderConfig` widths a checkpoint's shapes (name -> shape) imply: mel bins, base
    channels and F0-predictor channels (read off ``conv_pre`` and ``f0_predictor.condnet.0``
    under either weight-norm naming). Empty if those tensors are absent."""
    def v(module: str):
        for _, name in WEIGHT_NORM_NAMES.values():
            if f"{module}.{name}" in shapes:
                return tuple(shapes[f"{module}.{name}"])
        return None

    pre, f0 = v("conv_pre"), v("f0_predictor.condnet.0")
    if pre is None or f0 is None or len(pre) != 3:
        return {}
    return {"in_channels": int(pre[1]), "base_channels": int(pre[0]), "f0_cond_channels": int(f0[0])}


def _wn(torch: str, jax: str, transform, names: tuple[str, str]) -> list[Entry]:
    g, v = names
    return [Entry(f"{torch}.{g}", f"{jax}/g", transform), Entry(f"{torch}.{v}", f"{jax}/v", transform),
            Entry(f"{torch}.bias", f"{jax}/bias")]


def _resblock(torch: str, jax: str, n: int, names) -> list[Entry]:
    out = []
    for j in range(n):
        out += _wn(f"{torch}.convs1.{j}", f"{jax}/convs1/{j}", Conv(), names)
        out += _wn(f"{torch}.convs2.{j}", f"{jax}/convs2/{j}", Conv(), names)
        out += [Entry(f"{torch}.activations1.{j}.alpha", f"{jax}/activations1/{j}/alpha"),
                Entry(f"{torch}.activations2.{j}.alpha", f"{jax}/activations2/{j}/alpha")]
    return out


def vocoder_table(cfg: VocoderConfig, prefix: tuple = (), weight_norm: str = "weight_g") -> MappingTable:
    """``weight_norm``: ``'weight_g'`` (the released ``hift.pt`` layout) or ``'parametrizations'``."""
    if weight_norm not in WEIGHT_NORM_NAMES:
        raise ValueError(f"weight_norm naming {weight_norm!r}: choose from {sorted(WEIGHT_NORM_NAMES)}")
    names = WEIGHT_NORM_NAMES[weight_norm]
    e: list[Entry] = []
    for i in range(cfg.f0_num_layers):
        e += _wn(f"f0_predictor.condnet.{2 * i}", f"f0_predictor/condnet/{i}", Conv(), names)
    e += [Entry("f0_predictor.classifier.weight", "f0_predictor/classifier/kernel", Linear()),
          Entry("f0_predictor.classifier.bias", "f0_predictor/classifier/bias"),
          Entry("m_source.l_linear.weight", "m_source/l_linear/kernel", Linear()),
          Entry("m_source.l_linear.bias", "m_source/l_linear/bias")]
    e += _wn("conv_pre", "conv_pre", Conv(), names)
    for i in range(len(cfg.upsample_rates)):
        e += _wn(f"ups.{i}", f"ups/{i}", ConvTranspose(), names)
        e += [Entry(f"source_downs.{i}.weight", f"source_downs/{i}/kernel", Conv()),
              Entry(f"source_downs.{i}.bias", f"source_downs/{i}/bias")]
        e += _resblock(f"source_resblocks.{i}", f"source_resblocks/{i}",
                       len(cfg.source_resblock_dilation_sizes[i]), names)
    k = len(cfg.resblock_kernel_sizes)
    for r in range(len(cfg.upsample_rates) * k):
        e += _resblock(f"resblocks.{r}", f"resblocks/{r}", len(cfg.resblock_dilation_sizes[r % k]), names)
    e += _wn("conv_post", "conv_post", Conv(), names)
    return MappingTable("vocoder", tuple(e), {}, prefix=prefix)
