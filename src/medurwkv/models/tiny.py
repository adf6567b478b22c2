"""Tiny configurations of the registered architectures, for smoke runs (``--quick``) and unit tests.

``create_model(name, **QUICK_OVERRIDES[name])`` builds the same architecture as ``name`` with a few thousand
parameters, so a forward pass takes milliseconds on a CPU.
"""

from __future__ import annotations

from typing import Any

__all__ = ["QUICK_OVERRIDES"]

_TINY_ADAPTER = dict(
    embed_dims=32,
    depth=4,
    conv_inplane=8,
    deform_num_heads=2,
    interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
)
# final_dim 8: with the default halving widths the tiny decoder is 8 wide at stride 4, and the patch-expand rule
# (8 / 4) would leave 2 channels at full resolution, too few for half-precision tests to stay close to float32
QUICK_OVERRIDES: dict[str, dict[str, Any]] = {
    "unet": dict(base_channels=8),
    "med_urwkv_t": dict(encoder_overrides=_TINY_ADAPTER, decoder_dim=32, final_dim=8),
    "med_urwkv_s": dict(encoder_overrides=_TINY_ADAPTER, decoder_dim=32, final_dim=8),
    "med_urwkv_t_pure": dict(encoder_overrides=dict(embed_dims=32, depth=4), decoder_dim=32, final_dim=8),
    "med_urwkv_t_dagger": dict(encoder_overrides=_TINY_ADAPTER, decoder_dim=32, final_dim=8),
    # the MONAI baselines: same depth (4 stride-2 levels; 4 Swin stages), a few channels
    "monai_unet": dict(channels=[4, 8, 8, 16, 16]),
    "swin_unetr": dict(feature_size=12, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2]),
}
