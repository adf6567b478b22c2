"""One shared contract test for every segmentation model, plus the Med-URWKV specifics.

All models use tiny configs (see ``TINY``) so that the whole file runs in well under a minute on one thread.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pywt
import torch
from torch import nn

from medurwkv.engine.checkpoint import load_model, save_checkpoint
from medurwkv.models import QUICK_OVERRIDES, create_model, get_model_entry, list_models
from medurwkv.models.decoder import DecoderBlock, PatchExpand
from medurwkv.models.med_urwkv import MED_URWKV_VARIANTS, MedURWKV
from medurwkv.models.modules import FAWA, MSCF, HaarDWT, HaarIDWT

# name -> overrides giving a tiny model of the same architecture (docs/models.md), without stochastic depth so
# that train-mode forwards are deterministic.
TINY: dict[str, dict] = {
    name: {**cfg, "encoder_overrides": {**cfg["encoder_overrides"], "drop_path_rate": 0.0}}
    if "encoder_overrides" in cfg
    else cfg
    for name, cfg in QUICK_OVERRIDES.items()
}
MED = [n for n in TINY if get_model_entry(n).pretrained is not None]  # models with an official release


def _tiny(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **{**TINY[name], **kw})


def _wake_zero_init(model: nn.Module) -> None:
    """Give zero-initialised parameters the nonzero values they take after some training.

    The adapter's injector ``gamma`` starts at 0, and its deformable attentions start with zero
    ``sampling_offsets``/``attention_weights`` weights (official init): at init the parameters upstream of them
    (injector MSDA, query norms) therefore get an exactly-zero gradient, which is correct, not a bug. To check
    that the graph really reaches every parameter we move these to small nonzero values first.
    """
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 2)
            if name.endswith("injector.gamma") or (
                leaf[-1] == "weight" and leaf[-2] in ("sampling_offsets", "attention_weights")
            ):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_registry_lists_every_model():
    names = set(list_models())
    assert set(TINY) <= names
    assert set(MED_URWKV_VARIANTS) <= names


@pytest.mark.parametrize("name", list(TINY))
def test_model_contract(name, tmp_path):
    # 1-channel input, 4 classes, odd size: same-size logits.
    model = _tiny(name, in_channels=1, num_classes=4)
    x = torch.randn(2, 1, 97, 131)
    model.train()
    _wake_zero_init(model)
    y = model(x)
    assert y.shape == (2, 4, 97, 131)
    assert torch.isfinite(y).all()

    # Backward: every parameter is reached by a nonzero gradient.
    (y.square().mean() + y[:, 0].mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], f"parameters without gradient: {no_grad}"

    # 3 channels, 2 classes, another size.
    m3 = _tiny(name, in_channels=3, num_classes=2).eval()
    with torch.no_grad():
        assert m3(torch.randn(1, 3, 64, 40)).shape == (1, 2, 64, 40)
    with pytest.raises(ValueError, match="in_channels"):
        m3(torch.randn(1, 1, 64, 64))

    # model_spec round trip: create_model(**spec) + state dict gives identical outputs.
    model.eval()
    spec = model.model_spec
    assert spec["name"] == name
    rebuilt = create_model(spec["name"], **copy.deepcopy(spec["kwargs"])).eval()
    rebuilt.load_state_dict(model.state_dict())
    xe = torch.randn(1, 1, 70, 45)
    with torch.no_grad():
        ref = model(xe)
        assert torch.equal(rebuilt(xe), ref)

    # ... and through a checkpoint file.
    path = save_checkpoint(
        tmp_path / "m.pt", model, preprocess=dict(in_channels=1, num_classes=4, normalize="per_image")
    )
    loaded, ckpt = load_model(path)
    assert ckpt["model"]["name"] == name
    with torch.no_grad():
        assert torch.equal(loaded(xe), ref)


@pytest.mark.parametrize("name", MED)
def test_pretrained_from_synthetic_official_checkpoint(name, tmp_path):
    """An official-layout file (backbone.* + decode_head.*) loads into the encoder with a clean report."""
    from medurwkv.models.pretrained import load_pretrained

    src = _tiny(name, seed=1)
    target = src.pretrained_target()
    sd = {f"backbone.{k}": v.clone() for k, v in target.state_dict().items()}
    sd["decode_head.conv_seg.weight"] = torch.randn(150, 8, 1, 1)
    sd["decode_head.conv_seg.bias"] = torch.randn(150)
    sd["auxiliary_head.conv_seg.weight"] = torch.randn(150, 8, 1, 1)
    path = tmp_path / "official.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)

    dst = _tiny(name, seed=2)
    report = load_pretrained(dst, str(path), verbose=False)
    assert report.ok, str(report)
    assert not report.missing and not report.unexpected
    assert any(k.startswith("decode_head.") for k in report.skipped)
    for k, v in target.state_dict().items():
        assert torch.equal(dst.pretrained_target().state_dict()[k], v), k

    # create_model(..., pretrained=PATH) goes through the same loader; a 1-channel model sums the RGB stem.
    one = create_model(name, pretrained=str(path), in_channels=1, **TINY[name])
    stem = "patch_embed.projection.weight"
    rgb = target.state_dict()[stem]
    assert torch.allclose(one.pretrained_target().state_dict()[stem], rgb.sum(1, keepdim=True))


def test_registry_carries_the_encoder_release():
    assert get_model_entry("med_urwkv_t").pretrained.file == "upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth"
    assert (
        get_model_entry("med_urwkv_t_dagger").pretrained.file
        == "upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth"
    )
    assert get_model_entry("med_urwkv_s").pretrained.file == "upernet_vrwkv_adapter_small_512_160k_ade20k.pth"
    pure = get_model_entry("med_urwkv_t_pure").pretrained
    assert (pure.file, pure.wkv_token_split, pure.wkv_eps) == ("vrwkv_t_in1k_224.pth", 32, 1e-6)
    assert get_model_entry("unet").pretrained is None
    with pytest.raises(ValueError, match="official pretrained release"):
        create_model("unet", pretrained=True, base_channels=4)


@pytest.mark.parametrize("name", ["med_urwkv_t", "med_urwkv_t_pure"])
def test_freeze_encoder(name):
    model = _tiny(name)
    model.freeze_encoder(True)
    model.train()
    target = model.pretrained_target()
    bns = [m for m in target.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(not m.training for m in bns)
    if bns:  # frozen BN statistics do not move
        before = [m.running_mean.clone() for m in bns]
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("decoder."))
    if bns:
        assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    model.freeze_encoder(False)
    model.train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in bns)


def test_unet_encoder_api_is_explicit():
    model = _tiny("unet")
    assert model.pretrained_target() is None  # the contract: None when nothing is pretrained
    model.freeze_encoder(True)  # documented no-op
    assert all(p.requires_grad for p in model.parameters())
    assert model.pad_multiple == 16


@pytest.mark.parametrize("name", ["med_urwkv_t", "unet"])
def test_param_groups(name):
    model = _tiny(name)
    groups = model.param_groups(1e-3, encoder_lr_scale=0.1, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            no_decay = p.ndim <= 1 or any(k in n for k in ("pos_embed", "spatial_", "gamma", "level_embed"))
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), n
    if name != "unet":
        enc = {id(p) for p in model.pretrained_target().parameters()}
        for g in groups:
            scale = 0.1 if id(g["params"][0]) in enc else 1.0
            assert g["lr"] == pytest.approx(1e-3 * scale)
            assert all((id(p) in enc) == (scale == 0.1) for p in g["params"])
    torch.optim.AdamW(groups)  # accepted by the optimizer


def test_decoder_projection_and_pad_modes():
    # decoder width != encoder width -> 1x1 projections; reflect padding keeps the size contract.
    model = create_model(
        "med_urwkv_t_pure",
        encoder_overrides=dict(embed_dims=32, depth=4),
        decoder_dim=16,
        decoder_depths=[1, 1, 1],
        bottleneck_depth=1,
        pad_mode="reflect",
    ).eval()
    assert isinstance(model.proj[0], nn.Conv2d)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 70)).shape == (1, 2, 33, 70)
        assert model(torch.randn(1, 3, 5, 7)).shape == (1, 2, 5, 7)  # reflect falls back to replicate
    with pytest.raises(ValueError, match="pad_mode"):
        MedURWKV("vrwkv_t", dict(embed_dims=32, depth=4), pad_mode="wrap")


def test_crop_only_sees_the_image_with_zero_padding():
    # With zero padding the model's logits on an image equal those of the same image zero-padded by hand
    # to the next multiple of 32 (cropped back): the padding is bottom/right and nothing else changes.
    model = _tiny("med_urwkv_t_pure").eval()
    x = torch.randn(1, 3, 50, 40)
    xp = torch.nn.functional.pad(x, (0, 24, 0, 14))
    with torch.no_grad():
        assert torch.allclose(model(x), model(xp)[..., :50, :40], atol=1e-6)


@pytest.mark.parametrize("token_split", [None, 4])
def test_banded_decoder_blocks_compute_the_same_function(token_split):
    # Eval-mode decoder blocks process large grids in row bands (cache-friendly); the result must equal the
    # plain Block path, including Q-Shift across band borders and image borders.
    torch.manual_seed(0)
    blk = DecoderBlock(16, 4, 1, use_ln0=False, wkv_token_split=token_split, wkv_eps=0.0).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 11 * 9, 16)
    with torch.no_grad():
        blk.tile_tokens = 0
        ref = blk(x, (11, 9))
        for tile in (9, 20, 50):  # 1, 2 and 5 rows per band
            blk.tile_tokens = tile
            assert torch.allclose(blk(x, (11, 9)), ref, atol=1e-6), tile
    assert DecoderBlock.tile_tokens == 4096


def test_patch_expand_rearrangement():
    pe = PatchExpand(8, 2)
    x = torch.randn(1, 2 * 3, 8)  # (B, H*W, C) on a 2x3 grid
    y, hw = pe(x, (2, 3))
    assert hw == (4, 6) and y.shape == (1, 24, 4)
    lin = pe.expand(x).reshape(2, 3, 2, 2, 4)  # (h, w, p1, p2, c)
    expected = torch.empty(4, 6, 4)
    for i in range(2):
        for j in range(3):
            for p1 in range(2):
                for p2 in range(2):
                    expected[2 * i + p1, 2 * j + p2] = lin[i, j, p1, p2]
    assert torch.allclose(y, pe.norm(expected.reshape(1, 24, 4)), atol=1e-6)


def test_haar_dwt_matches_pywavelets_and_inverts():
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    bands = HaarDWT().double()(x)
    ca, (ch, cv, cd) = pywt.dwt2(x.numpy(), "haar", mode="periodization")
    for i, ref in enumerate((ca, ch, cv, cd)):
        np.testing.assert_allclose(bands[:, :, i].numpy(), ref, atol=1e-6)
    assert torch.allclose(HaarIDWT().double()(bands), x, atol=1e-6)
    with pytest.raises(ValueError, match="even"):
        HaarDWT()(torch.randn(1, 1, 5, 4))


def test_fawa_and_mscf():
    fawa = FAWA(8).eval()
    x = torch.randn(2, 8, 16, 12)
    y = fawa(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    # With the attention logit forced to 0 the gate is exactly 1: FAWA is the identity (perfect reconstruction).
    with torch.no_grad():
        fawa.attn[-1].weight.zero_()
        fawa.attn[-1].bias.zero_()
    assert torch.allclose(fawa(x), x, atol=1e-5)
    feats = [
        torch.randn(2, 4, 16, 16),
        torch.randn(2, 4, 8, 8),
        torch.randn(2, 4, 4, 4),
        torch.randn(2, 4, 2, 2),
    ]
    out = MSCF([4, 4, 4, 4])(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert out[3] is feats[3]
    ratio = out[0] / feats[0]  # one positive weight per (sample, channel), constant over space
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5) and (ratio > 0).all()


def test_dagger_has_its_modules_and_t_does_not():
    t, d = _tiny("med_urwkv_t"), _tiny("med_urwkv_t_dagger")
    assert t.fawa is None and t.mscf is None
    assert len(d.fawa) == 3 and isinstance(d.mscf, MSCF)


def test_full_size_parameter_counts():
    # Full-size configs on the meta device (no memory, no init cost): the adapter-T encoder has 8,404,592
    # parameters (docs/adapter.md) and the U-Net ~31 M (Ronneberger et al.).
    with torch.device("meta"):
        t = create_model("med_urwkv_t")
        u = create_model("unet")
    n_enc = sum(p.numel() for p in t.pretrained_target().parameters())
    assert n_enc == 8_404_592
    assert 30e6 < sum(p.numel() for p in u.parameters()) < 32e6
    assert t.pad_multiple == 32
