"""The VRWKV backbone reproduces the official implementation (golden tensors, shared/golden/README.md §4)."""

from __future__ import annotations

import pytest
import torch

from medurwkv.models.vrwkv import VRWKV

# (file, float32 absolute tolerance); float64 tolerance is 1e-9 for both (README table).
CASES = [("vrwkv_mini_pre.pt", 5e-5), ("vrwkv_mini_post.pt", 1e-4)]


def build_from_pack(pack: dict) -> VRWKV:
    cfg = dict(pack["config"])
    model = VRWKV(**cfg, wkv_token_split=pack["kernel"]["token_split"], wkv_eps=pack["kernel"]["eps"])
    sd = {
        k.removeprefix("backbone."): v
        for k, v in pack["checkpoint"]["state_dict"].items()
        if k.startswith("backbone.")
    }
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    return model.eval()


@pytest.mark.parametrize("fname,tol32", CASES)
def test_state_dict_layout(load_golden, fname, tol32):
    pack = load_golden(fname)
    model = build_from_pack(pack)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert got == [[k, list(s)] for k, s in pack["state_dict_keys"]]
    assert sum(p.numel() for p in model.parameters()) == pack["num_params"]


@pytest.mark.parametrize("fname,tol32", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_match_official(load_golden, fname, tol32, dtype):
    pack = load_golden(fname)
    model = build_from_pack(pack).to(dtype)
    tol = tol32 if dtype == torch.float32 else 1e-9
    for name, run in pack["runs"].items():
        x = run["input"].to(dtype)
        tokens, hw = model.embed(x)
        assert list(hw) == list(run["patch_resolution"]), name
        pos = tokens - model.patch_embed(x)[0]
        assert (pos[0:1].double() - run["pos_embed_resized"]).abs().max() < max(tol, 1e-6), name
        # Every block's token stream (the last one before the final norm).
        B = x.shape[0]
        h = tokens
        for i, (blk, ref) in enumerate(zip(model.layers, run["blocks"], strict=True)):
            h = blk(h, hw)
            err = (h.double() - ref).abs().max().item()
            assert err < tol, f"{name} block {i}: max abs diff {err:.3g} >= {tol}"
        outs = model.forward_intermediates(x, run["out_indices"])
        for got, ref in zip(outs, run["outs"], strict=True):
            assert got.shape == ref.shape
            err = (got.double() - ref).abs().max().item()
            assert err < tol, f"{name} outs: max abs diff {err:.3g} >= {tol}"
        assert outs[0].shape[0] == B


def test_wrong_kernel_constants_are_detected(load_golden):
    # The 80x112 run discriminates the chunking: the ideal kernel must fail the float64 tolerance.
    pack = load_golden("vrwkv_mini_pre.pt")
    model = build_from_pack(pack).double()
    model.set_wkv_constants(None, 1e-6)
    run = pack["runs"]["80x112"]
    outs = model.forward_intermediates(run["input"].double(), run["out_indices"])
    err = max((g - r).abs().max().item() for g, r in zip(outs, run["outs"], strict=True))
    assert err > 1e-6


@pytest.mark.parametrize(
    "name,expected", [("vrwkv_t", 5_962_176), ("vrwkv_s", 23_435_136), ("vrwkv_b", 92_876_544)]
)
def test_official_parameter_counts(name, expected):
    from medurwkv import create_model

    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected
