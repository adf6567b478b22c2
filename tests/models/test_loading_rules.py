"""The model contract and the loading rules: own weights from a path (U-Net too), official layouts by config."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from medurwkv.engine.checkpoint import save_checkpoint
from medurwkv.errors import UserError
from medurwkv.models import (
    QUICK_OVERRIDES,
    Encoder,
    SegmentationModel,
    create_model,
    list_models,
    load_pretrained,
)
from medurwkv.models.adapter import VRWKVAdapter
from medurwkv.models.encoders import PlainVRWKVEncoder
from medurwkv.models.unet import UNet
from medurwkv.models.vrwkv import VRWKV

SEG_MODELS = sorted(QUICK_OVERRIDES)


def _tiny(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **{**QUICK_OVERRIDES[name], **kw}).eval()


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.1 + (t.abs() > 0) * 0.5)
    return model


# ----------------------------------------------------------------------------------------------------
# The contract
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEG_MODELS)
def test_every_segmentation_model_implements_the_contract(name):
    model = _tiny(name)
    assert isinstance(model, SegmentationModel) and isinstance(model.encoder, Encoder)
    enc = model.encoder
    assert len(enc.out_channels) == len(enc.strides) and enc.strides == sorted(enc.strides)
    assert model.pad_multiple % enc.strides[-1] == 0
    x = torch.randn(1, 3, 2 * model.pad_multiple, model.pad_multiple)
    with torch.no_grad():
        feats = enc(x)
    assert [f.shape[1] for f in feats] == enc.out_channels
    assert [x.shape[-1] // f.shape[-1] for f in feats] == enc.strides


def test_encoders_are_composed_not_inherited_from_the_backbone():
    assert not issubclass(VRWKVAdapter, VRWKV)
    pure = _tiny("med_urwkv_t_pure")
    assert isinstance(pure.encoder, PlainVRWKVEncoder) and isinstance(pure.encoder.backbone, VRWKV)
    assert pure.pretrained_target() is pure.encoder.backbone


def test_unet_keeps_its_state_dict_keys():
    # The contracting path is the encoder, registered as `down`: the keys of old checkpoints are unchanged.
    model = UNet(in_channels=1, num_classes=2, base_channels=2, depth=2)
    tops = list(dict.fromkeys(k.split(".")[0] + "." + k.split(".")[1] for k in model.state_dict()))
    assert tops == ["down.0", "down.1", "bottom.0", "bottom.1", "bottom.3", "bottom.4", "up.0", "up.1"] + [
        "up_conv.0",
        "up_conv.1",
        "head.weight",
        "head.bias",
    ]
    assert (
        model.encoder is model.down
        and model.encoder.out_channels == [2, 4]
        and model.encoder.strides == [1, 2]
    )


def test_unet_pad_step_is_the_old_zero_pad():
    model = _tiny("unet")
    x = torch.randn(1, 3, 21, 30)
    with torch.no_grad():
        by_hand = model.forward_padded(torch.nn.functional.pad(x, (0, 2, 0, 11)))[..., :21, :30]
        assert torch.equal(model(x), by_hand)


# ----------------------------------------------------------------------------------------------------
# Own weights from a path
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["raw", "model", "state_dict", "checkpoint"])
def test_unet_loads_its_own_weights_from_a_path(layout, tmp_path):
    src = _randomize(_tiny("unet", in_channels=1, num_classes=3), seed=1)
    sd = src.state_dict()
    path = tmp_path / "unet_weights.pth"
    if layout == "checkpoint":  # our training checkpoint format
        save_checkpoint(path, src, preprocess=dict(in_channels=1, num_classes=3, normalize="per_image"))
    else:
        torch.save(
            {"raw": sd, "model": {"model": sd}, "state_dict": {"state_dict": sd, "epoch": 3}}[layout], path
        )
    model = create_model(
        "unet", pretrained=path, in_channels=1, num_classes=3, **QUICK_OVERRIDES["unet"]
    ).eval()
    x = torch.randn(2, 1, 37, 45)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_unet_pretrained_true_says_to_pass_a_path():
    with pytest.raises(UserError, match=r"has none; pass pretrained=PATH"):
        create_model("unet", pretrained=True, base_channels=4)


def test_official_layout_into_a_model_without_pretrained_part_is_a_user_error():
    sd = {"backbone.patch_embed.projection.weight": torch.zeros(8, 3, 16, 16), "head.fc.bias": torch.zeros(2)}
    with pytest.raises(UserError, match="has no pretrained encoder"):
        load_pretrained(_tiny("unet"), sd, verbose=False)


def test_whole_model_or_target_by_the_target_path():
    # A Med-URWKV checkpoint of the whole model (keys encoder.*) loads into the model; a checkpoint of the
    # pretrained target's own keys (a plain VRWKV you trained: pos_embed, patch_embed.*, layers.*) into it.
    src = _randomize(_tiny("med_urwkv_t_pure"), seed=2)
    dst = _tiny("med_urwkv_t_pure", seed=3)
    report = load_pretrained(dst, {"state_dict": src.state_dict()}, verbose=False)
    assert report.target == "MedURWKV" and report.ok and not report.adapted
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    dst2 = _tiny("med_urwkv_t_pure", seed=4)
    report = load_pretrained(dst2, src.pretrained_target().state_dict(), verbose=False)
    assert report.target.startswith("VRWKV (model.pretrained_target())") and report.ok
    for k, v in src.pretrained_target().state_dict().items():
        assert torch.equal(dst2.pretrained_target().state_dict()[k], v), k
    # A whole-model checkpoint with a key missing is refused by the strict default.
    partial = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    with pytest.raises(UserError, match=r"missing from the checkpoint \(2\): head\.weight, head\.bias"):
        load_pretrained(_tiny("med_urwkv_t_pure"), partial, verbose=False)


def test_own_weights_load_exactly_without_stem_adaptation():
    # Only official layouts adapt RGB stems: your own 3-channel weights do not go into a 1-channel model.
    torch.manual_seed(0)
    src = VRWKV(embed_dims=32, depth=2, img_size=32)
    with pytest.raises(UserError, match=r"patch_embed\.projection\.weight: checkpoint \(32, 3, 16, 16\)"):
        load_pretrained(
            VRWKV(embed_dims=32, depth=2, img_size=32, in_channels=1), src.state_dict(), verbose=False
        )


def test_a_release_adapts_only_its_own_stem_keys(tmp_path):
    # An mmcls (ImageNet) release lists only the patch stem: a 3-channel spm stem in such a file is a mismatch,
    # while the same tensors from an mmseg (ADE20K) release name are adapted.
    enc3 = VRWKVAdapter(img_size=64, embed_dims=32, depth=4, conv_inplane=8, deform_num_heads=2)
    sd = OrderedDict(("backbone." + k, v) for k, v in enc3.state_dict().items())
    gray = VRWKVAdapter(
        img_size=64, embed_dims=32, depth=4, conv_inplane=8, deform_num_heads=2, in_channels=1
    )
    mmcls = tmp_path / "vrwkv_t_in1k_224.pth"
    torch.save({"state_dict": sd}, mmcls)
    with pytest.raises(UserError, match=r"1 tensor shapes differ \(spm\.stem\.0\.weight"):
        load_pretrained(gray, mmcls, verbose=False)
    mmseg = tmp_path / "upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth"
    torch.save({"state_dict": sd}, mmseg)
    report = load_pretrained(gray, mmseg, verbose=False)
    assert report.adapted == ["patch_embed.projection.weight", "spm.stem.0.weight"] and report.ok


def test_missing_and_unreadable_files_are_user_errors(tmp_path):
    model = _tiny("unet")
    with pytest.raises(UserError, match="does not exist") as e:
        create_model("unet", pretrained=tmp_path / "nope.pth", **QUICK_OVERRIDES["unet"])
    assert isinstance(e.value, FileNotFoundError)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="torch.load cannot read"):
        load_pretrained(model, bad, verbose=False)
    with pytest.raises(UserError, match="expected a state dict of tensors"):
        load_pretrained(model, {"epoch": 3}, verbose=False)


def test_list_models_needs_no_lazy_import():
    # Importing the package registers every model module (no guarded, silently skipped import).
    assert set(SEG_MODELS) | {"vrwkv_t", "vrwkv_adapter_t"} <= set(list_models())
