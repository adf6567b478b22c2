"""VRWKVAdapter reproduces the official VRWKV_Adapter (golden ``vrwkv_adapter_mini.pt``, README §3-§4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import medurwkv.models.adapter as adapter_mod
from medurwkv.models.adapter import ADAPTER_CONFIGS, VRWKVAdapter

GOLDEN = "vrwkv_adapter_mini.pt"
TOL = {torch.float32: 1e-4, torch.float64: 1e-9}  # README tolerance table (adapter f1..f4)


def backbone_state_dict(pack: dict) -> dict:
    """mmseg checkpoint -> backbone entries without the ``backbone.`` prefix (decode/aux heads dropped)."""
    sd = pack["checkpoint"]["state_dict"]
    return {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}


def build_from_pack(pack: dict, dtype: torch.dtype = torch.float32) -> VRWKVAdapter:
    cfg = {k: v for k, v in pack["config"].items() if k != "pretrained"}  # mmseg-only loader argument
    model = VRWKVAdapter(**cfg, wkv_token_split=pack["kernel"]["token_split"], wkv_eps=pack["kernel"]["eps"])
    model.load_state_dict(backbone_state_dict(pack), strict=True)
    return model.eval().to(dtype)


def max_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    assert tuple(got.shape) == tuple(ref.shape)
    return (got.double() - ref).abs().max().item()


def test_state_dict_layout(load_golden):
    pack = load_golden(GOLDEN)
    sd = pack["checkpoint"]["state_dict"]
    assert any(k.startswith("decode_head.") for k in sd) and not any(
        k.startswith("backbone.ln1.") for k in sd
    )
    model = build_from_pack(pack)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == [[k, list(s)] for k, s in pack["state_dict_keys"]]  # names, shapes and ORDER
    assert sum(p.numel() for p in model.parameters()) == pack["num_params"]
    # BatchNorm running statistics are loaded too (they were randomly perturbed in the pack).
    ref_bn = sd["backbone.norm3.running_var"]
    assert torch.equal(model.norm3.running_var, ref_bn) and not torch.equal(ref_bn, torch.ones_like(ref_bn))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_match_official(load_golden, dtype):
    pack = load_golden(GOLDEN)
    model = build_from_pack(pack, dtype)
    tol = TOL[dtype]
    assert set(pack["runs"]) == {"64x64", "64x96", "96x128"}
    for name, run in pack["runs"].items():
        x = run["input"].to(dtype)
        with torch.no_grad():
            outs = model(x)
        assert len(outs) == 4
        H, W = x.shape[-2:]
        for f, stride, ref in zip(outs, model.strides, run["outs"], strict=True):
            assert f.dtype == dtype and tuple(f.shape) == (2, model.embed_dims, H // stride, W // stride)
            err = max_err(f, ref)
            assert err < tol, f"{name} stride {stride}: max abs diff {err:.3g} >= {tol}"


def test_intermediates_64x64(load_golden):
    # Localises a mismatch: SPM, deform inputs, every injector, block, stage output and extractor (float64).
    pack = load_golden(GOLDEN)
    model = build_from_pack(pack, torch.float64)
    run = pack["runs"]["64x64"]
    ref = run["intermediates"]
    x = run["input"].double()
    with torch.no_grad():
        _, rec = model.forward_debug(x)
        patch, _ = model.patch_embed(x)
    tol = TOL[torch.float64]
    for key in ("spm_c1", "spm_c2", "spm_c3", "spm_c4"):
        assert max_err(rec[key], ref[key]) < tol, key
    assert max_err((rec["embed"] - patch)[:1], ref["pos_embed_resized"]) < tol
    for mine, key in ((rec["deform_inputs1"], "deform_inputs1"), (rec["deform_inputs2"], "deform_inputs2")):
        r = ref[key]
        assert mine.reference_points.dtype == torch.float32
        assert torch.equal(mine.reference_points, r["reference_points"]), key  # bit-exact float32 centres
        assert [list(s) for s in mine.spatial_shapes] == r["spatial_shapes"].tolist(), key
        assert list(mine.level_start_index) == r["level_start_index"].tolist(), key
    for key in ("injector_out", "interaction_x", "interaction_c", "blocks"):
        assert len(rec[key]) == len(ref[key]), key
        for j, (a, b) in enumerate(zip(rec[key], ref[key])):
            err = max_err(a, b)
            assert err < tol, f"{key}[{j}]: max abs diff {err:.3g}"


def test_deform_inputs_exact_at_other_grids(load_golden):
    # Non-power-of-two grids are where float32 rounding of the centres matters (README §3).
    pack = load_golden(GOLDEN)
    ref = pack["runs"]["64x64"]["intermediates"]["deform_inputs2"]["reference_points"]
    ours = adapter_mod.deform_inputs(4, 4)[1].reference_points
    assert torch.equal(ours, ref)
    pts = adapter_mod.reference_points([(3, 5)])
    # Row-major, x first; the exact centres rounded once to float32.
    expected_x = (torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5], dtype=torch.float64) / 5).float()
    expected_y = (torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64) / 3).float()
    assert pts.dtype == torch.float32 and pts.shape == (1, 15, 1, 2)
    assert torch.equal(pts[0, :5, 0, 0], expected_x) and torch.equal(pts[0, ::5, 0, 1], expected_y)
    assert torch.equal(pts[0, 5:10, 0, 0], expected_x) and torch.all(pts[0, 5:10, 0, 1] == expected_y[1])


def reference_points_float64(shapes, device=None):
    """The pixel centres computed in float64 (the mistake the golden README warns about)."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
        refs.append(torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1).reshape(-1, 2))
    return torch.cat(refs)[None, :, None, :].to(device)


def test_float64_reference_points_would_fail(load_golden, monkeypatch):
    # The float64 tolerance detects reference points built in float64 (spec: ~5e-7 at 64x96).
    pack = load_golden(GOLDEN)
    model = build_from_pack(pack, torch.float64)
    monkeypatch.setattr(adapter_mod, "reference_points", reference_points_float64)
    run = pack["runs"]["64x96"]
    with torch.no_grad():
        outs = model(run["input"].double())
    err = max(max_err(a, b) for a, b in zip(outs, run["outs"]))
    assert 1e-3 > err > TOL[torch.float64]  # detected, yet small: only the rounding of the centres differs


def test_wrong_kernel_constants_are_detected(load_golden):
    pack = load_golden(GOLDEN)
    model = build_from_pack(pack, torch.float64)
    model.set_wkv_constants(32, 1e-6)  # the ImageNet kernel instead of the ADE20K one
    run = pack["runs"]["64x96"]
    with torch.no_grad():
        outs = model(run["input"].double())
    err = max(max_err(a, b) for a, b in zip(outs, run["outs"]))
    assert err > TOL[torch.float64]


def test_input_size_must_be_multiple_of_32():
    model = VRWKVAdapter(img_size=64, embed_dims=32, depth=4, conv_inplane=8, deform_num_heads=2).eval()
    with pytest.raises(ValueError, match=r"expected H and W multiples of 32, got 64x80; pad the input"):
        model(torch.zeros(1, 3, 64, 80))
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.zeros(1, 1, 64, 64))


def test_api_in_channels_and_fresh_init():
    torch.manual_seed(0)
    model = VRWKVAdapter(
        img_size=64, in_channels=1, embed_dims=32, depth=4, conv_inplane=8, deform_num_heads=2
    )
    model.eval()
    assert model.out_channels == [32] * 4 and model.strides == [4, 8, 16, 32] and model.pad_multiple == 32
    assert model.patch_embed.projection.weight.shape[1] == 1 and model.spm.stem[0].weight.shape[1] == 1
    assert model.ln1 is None and model.interaction_indexes == [[0, 0], [1, 1], [2, 2], [3, 3]]
    # Official init: injector gamma 0 (the injector starts as identity), offset-bias ring, uniform attention.
    inj = model.interactions[0].injector
    assert torch.all(inj.gamma == 0)
    ring = inj.attn.sampling_offsets.bias.view(2, 3, 4, 2)  # (M, L, P, xy)
    assert torch.allclose(ring[0, 0], torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0]]))
    assert torch.all(inj.attn.attention_weights.weight == 0)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        outs, rec = model.forward_debug(x)
    assert torch.equal(rec["injector_out"][0], rec["embed"])
    assert [tuple(f.shape) for f in outs] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    assert all(torch.isfinite(f).all() for f in outs)
    with pytest.raises(NotImplementedError):
        model.forward_intermediates(x)


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    kw = dict(img_size=64, embed_dims=32, depth=4, conv_inplane=8, deform_num_heads=2, init_values_inject=0.5)
    ref, cp = VRWKVAdapter(**kw), VRWKVAdapter(**kw, with_cp=True)
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for m in (ref.eval(), cp.eval()):
        sum(f.square().mean() for f in m(x)).backward()
        grads.append(m.interactions[1].injector.attn.value_proj.weight.grad)
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_syncbn_conversion_keeps_state_dict():
    model = VRWKVAdapter(img_size=64, embed_dims=32, depth=4, conv_inplane=8, deform_num_heads=2)
    keys = list(model.state_dict())
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(sync.norm1, nn.SyncBatchNorm) and isinstance(sync.spm.stem[1], nn.SyncBatchNorm)
    assert list(sync.state_dict()) == keys


def test_registry_tiny_matches_official_counts():
    from medurwkv import create_model, list_models

    assert {"vrwkv_adapter_t", "vrwkv_adapter_s"} <= set(list_models("vrwkv_adapter*"))
    with torch.device("meta"):
        model = create_model("vrwkv_adapter_t")
    sd = model.state_dict()
    # docs/adapter.md (state dict): 484 entries, 8,404,592 parameters, 3,210 BatchNorm buffer elements.
    assert len(sd) == 484
    assert sum(p.numel() for p in model.parameters()) == 8_404_592
    assert sum(v.numel() for k, v in sd.items() if "running_" in k or "num_batches" in k) == 3_210
    assert model.model_spec["name"] == "vrwkv_adapter_t"
    assert model.layers[0].att.wkv_token_split == 16 and model.layers[0].att.wkv_eps == 0.0
    assert ADAPTER_CONFIGS["vrwkv_adapter_t"][1].file == "upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth"


@pytest.mark.parametrize(
    "name,millions", [("vrwkv_adapter_s", 29.3), ("vrwkv_adapter_b", 106.6), ("vrwkv_adapter_l", 351.9)]
)
def test_registry_other_sizes_match_readme(name, millions):
    # The official README gives the backbone parameter counts rounded to 0.1M.
    from medurwkv import create_model

    with torch.device("meta"):
        model = create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions
