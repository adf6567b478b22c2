"""Decoder design options: level widths, per-stage depths, deep supervision, and old checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medurwkv.engine.checkpoint import load_model, save_checkpoint
from medurwkv.models import QUICK_OVERRIDES, create_model
from medurwkv.models.builder import model_from_spec
from medurwkv.models.decoder import URWKVDecoder

TINY = QUICK_OVERRIDES["med_urwkv_t"]  # decoder_dim 32
HALVE = [0.25, 0.5, 1, 2]


def _tiny(**kw):
    torch.manual_seed(0)
    return create_model("med_urwkv_t", in_channels=1, num_classes=3, **{**TINY, **kw})


def test_constant_mults_are_the_first_design():
    """Width multiples of 1 build the same parameters, in the same order, with the same init and outputs."""
    a = _tiny(decoder_width_mults=None)
    b = _tiny(decoder_width_mults=[1, 1, 1, 1])
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(1, 1, 40, 56)
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_halving_widths_per_level_and_projections():
    m = _tiny(decoder_width_mults=HALVE, final_dim=None)
    assert m.decoder.dims == [8, 16, 32, 64]
    # the adapter's maps are 32 wide: projected where the level width differs, identity at stride 16
    kinds = [type(p).__name__ for p in m.proj]
    assert kinds == ["Conv2d", "Conv2d", "Identity", "Conv2d"]
    assert [blk.att.key.in_features for blk in m.decoder.bottleneck] == [64, 64]
    assert [s.fuse.out_features for s in m.decoder.stages] == [32, 16, 8]
    assert m.decoder.out_channels == 2  # 8 // 4, the patch-expand rule
    x = torch.randn(2, 1, 40, 56)  # not a multiple of 32: padded and cropped back
    out = m(x)
    assert out.shape == (2, 3, 40, 56)
    out.square().mean().backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_zero_blocks_in_a_stage_and_bad_widths():
    m = _tiny(decoder_width_mults=HALVE, decoder_depths=[2, 1, 0])
    assert [len(s.blocks) for s in m.decoder.stages] == [2, 1, 0]
    assert m.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="decoder_width_mults"):
        _tiny(decoder_width_mults=[1, 1, 1])
    with pytest.raises(ValueError, match="whole widths"):
        _tiny(decoder_width_mults=[0.3, 0.5, 1, 2])
    with pytest.raises(ValueError, match="even decoder widths"):
        URWKVDecoder([6, 12, 25, 48])
    with pytest.raises(ValueError, match="depths >= 0"):
        URWKVDecoder(32, depths=[2, -1, 2])


def test_deep_supervision_heads():
    m = _tiny(decoder_width_mults=HALVE, deep_supervision=True).eval()  # eval: no drop path, fixed BN
    assert m.aux_strides == [16, 8]
    x = torch.randn(2, 1, 40, 56)
    main, aux = m(x, aux=True)
    assert main.shape == (2, 3, 40, 56) and [a.shape for a in aux] == [(2, 3, 40, 56)] * 2
    torch.testing.assert_close(main, m(x), rtol=0, atol=0)  # the main head is the inference output
    # each auxiliary head is a distinct function of its stage (not a copy of the main logits)
    assert not torch.allclose(aux[0], aux[1])
    sum(a.square().mean() for a in aux).backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in m.aux_heads)
    # models without auxiliary heads answer aux=True with an empty list
    plain = _tiny()
    assert plain.aux_strides == [] and plain(x, aux=True)[1] == []
    unet = create_model("unet", in_channels=1, num_classes=2, **QUICK_OVERRIDES["unet"])
    assert tuple(unet.aux_strides) == () and unet(x, aux=True)[1] == []


def test_checkpoint_rebuilds_its_own_config_not_todays_default(tmp_path: Path):
    """An old checkpoint (its kwargs predate decoder_width_mults) rebuilds the constant-width decoder even
    though the registered med_urwkv_t default now halves the widths."""
    old = _tiny(decoder_width_mults=None)
    kwargs = {k: v for k, v in old.model_spec["kwargs"].items() if k not in ("decoder_width_mults",)}
    old.model_spec = {"name": "med_urwkv_t", "kwargs": kwargs}
    path = save_checkpoint(tmp_path / "old.pt", old, preprocess={"normalize": "per_image"})
    model, _ = load_model(path)
    assert model.decoder.dims == [32, 32, 32, 32]
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(model(x), old.eval()(x))
    assert model_from_spec(old.model_spec).decoder.dims == [32, 32, 32, 32]


def test_default_has_one_block_at_stride_4_and_older_checkpoints_keep_their_depths(tmp_path: Path):
    """The registered default (docs/results_decoder.md, the complete re-run) has depths 2/2/1; a checkpoint of the
    previous default stores decoder_depths [2, 2, 2] and rebuilds two blocks at stride 4."""
    new = _tiny()
    assert [len(s.blocks) for s in new.decoder.stages] == [2, 2, 1]
    prev = _tiny(decoder_depths=[2, 2, 2])
    path = save_checkpoint(tmp_path / "prev.pt", prev, preprocess={"normalize": "per_image"})
    model, _ = load_model(path)
    assert [len(s.blocks) for s in model.decoder.stages] == [2, 2, 2]
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(model(x), prev.eval()(x))
