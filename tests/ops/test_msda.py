"""ms_deform_attn against an independent 4-neighbour bilinear reference (zero outside the map)."""

from __future__ import annotations

import pytest
import torch
from saved import saved_bytes

from medurwkv.ops import ms_deform_attn
from medurwkv.ops.msda import ms_deform_attn_pytorch

SHAPES = [(6, 5), (3, 4), (2, 2)]  # non-square, odd sizes, a tiny level


def reference_msda(value, shapes, starts, loc, attn):
    """Direct formula: gather the 4 integer neighbours of (x·W − 0.5, y·H − 0.5) with weights
    (1−|dx|)(1−|dy|); neighbours outside the map contribute zero."""
    B, _, M, Dh = value.shape
    _, Lq, _, L, P, _ = loc.shape
    out = value.new_zeros(B, Lq, M, Dh)
    b_idx = torch.arange(B).view(B, 1, 1, 1)
    m_idx = torch.arange(M).view(1, 1, M, 1)
    for lvl, ((h, w), s0) in enumerate(zip(shapes, starts)):
        v = value[:, s0 : s0 + h * w].reshape(B, h, w, M, Dh)
        px = loc[:, :, :, lvl, :, 0] * w - 0.5  # (B, Lq, M, P)
        py = loc[:, :, :, lvl, :, 1] * h - 0.5
        x0, y0 = torch.floor(px), torch.floor(py)
        for dx in (0, 1):
            for dy in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                wgt = (1 - (px - xi).abs()) * (1 - (py - yi).abs())
                inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
                xg = xi.clamp(0, w - 1).long()
                yg = yi.clamp(0, h - 1).long()
                g = v[b_idx, yg, xg, m_idx]  # (B, Lq, M, P, Dh)
                coef = attn[:, :, :, lvl, :] * wgt * inside.to(wgt.dtype)  # (B, Lq, M, P)
                out = out + (coef[..., None] * g).sum(3)
    return out.reshape(B, Lq, M * Dh)


def make_inputs(dtype=torch.float64, B=2, Lq=7, M=3, Dh=4, P=3, shapes=SHAPES, seed=0, lead=0):
    g = torch.Generator().manual_seed(seed)
    L = len(shapes)
    S = lead + sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, Dh, generator=g, dtype=dtype)
    # Locations beyond [0, 1] exercise the zero padding (partly and fully outside samples).
    loc = torch.rand(B, Lq, M, L, P, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    attn = torch.rand(B, Lq, M, L, P, generator=g, dtype=dtype)
    starts, acc = [], lead
    for h, w in shapes:
        starts.append(acc)
        acc += h * w
    return value, starts, loc, attn


def test_forward_matches_reference_float64():
    value, starts, loc, attn = make_inputs()
    got = ms_deform_attn(value, SHAPES, starts, loc, attn)
    ref = reference_msda(value, SHAPES, starts, loc, attn)
    assert got.shape == (2, 7, 3 * 4) and got.dtype == torch.float64
    assert (got - ref).abs().max().item() < 1e-12
    assert ref.abs().max().item() > 0.1  # the comparison is not between two zero tensors


def test_backward_matches_reference_float64():
    value, starts, loc, attn = make_inputs(seed=1)
    gy = torch.randn(2, 7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grads = []
    for fn in (ms_deform_attn, reference_msda):
        leaves = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        (fn(leaves[0], SHAPES, starts, leaves[1], leaves[2]) * gy).sum().backward()
        grads.append([t.grad for t in leaves])
    for name, a, b in zip(("value", "loc", "attn"), *grads):
        assert (a - b).abs().max().item() < 1e-10, name
        assert b.abs().max().item() > 0, name


def test_gradcheck_small():
    value, starts, loc, attn = make_inputs(B=1, Lq=3, M=2, Dh=2, P=2, shapes=[(3, 4), (2, 2)], seed=2)
    leaves = tuple(t.requires_grad_(True) for t in (value, loc, attn))
    assert torch.autograd.gradcheck(
        lambda v, lc, a: ms_deform_attn(v, [(3, 4), (2, 2)], starts, lc, a), leaves, eps=1e-6, atol=1e-6
    )


def test_training_keeps_only_the_inputs_for_the_backward():
    # the custom op's backward recomputes the samples; autograd over the plain ops would keep them all
    value, starts, loc, attn = make_inputs(Lq=40, P=4)
    value, loc, attn = (t.requires_grad_(True) for t in (value, loc, attn))
    inputs = value.nbytes + loc.nbytes + attn.nbytes
    assert saved_bytes(lambda: ms_deform_attn(value, SHAPES, starts, loc, attn)) == inputs
    assert saved_bytes(lambda: ms_deform_attn_pytorch(value, SHAPES, starts, loc, attn)) > 2 * inputs
    # without a gradient the plain ops run
    with torch.no_grad():
        got = ms_deform_attn(value, SHAPES, starts, loc, attn)
    assert torch.equal(got, ms_deform_attn_pytorch(value, SHAPES, starts, loc, attn).detach())


def test_float32_and_shape_forms_agree():
    value, starts, loc, attn = make_inputs()
    ref = reference_msda(value, SHAPES, starts, loc, attn)
    got32 = ms_deform_attn(value.float(), SHAPES, starts, loc.float(), attn.float())
    assert got32.dtype == torch.float32
    assert (got32.double() - ref).abs().max().item() < 1e-5
    # Tensor shapes / starts (Deformable-DETR style) and omitted starts give the same result.
    shapes_t = torch.tensor(SHAPES, dtype=torch.int64)
    starts_t = torch.tensor(starts, dtype=torch.int64)
    a = ms_deform_attn(value, shapes_t, starts_t, loc, attn)
    b = ms_deform_attn(value, SHAPES, None, loc, attn)
    assert torch.equal(a, b) and (a - ref).abs().max().item() < 1e-12


def test_level_start_index_is_honoured():
    # Leading tokens that belong to no level must be skipped through level_start_index.
    value, starts, loc, attn = make_inputs(lead=5)
    assert starts[0] == 5
    got = ms_deform_attn(value, SHAPES, starts, loc, attn)
    ref = reference_msda(value, SHAPES, starts, loc, attn)
    assert (got - ref).abs().max().item() < 1e-12


def test_half_inputs_keep_dtype():
    value, starts, loc, attn = make_inputs(dtype=torch.float32)
    out = ms_deform_attn(value.bfloat16(), SHAPES, starts, loc.bfloat16(), attn.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = reference_msda(
        value.bfloat16().double(), SHAPES, starts, loc.bfloat16().double(), attn.bfloat16().double()
    )
    assert (out.double() - ref).abs().max().item() < 0.05


def test_bad_shapes_raise():
    value, starts, loc, attn = make_inputs()
    with pytest.raises(ValueError, match="sampling_locations"):
        ms_deform_attn(value, SHAPES[:2], starts[:2], loc, attn)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, SHAPES, starts, loc, attn[..., :1])
    with pytest.raises(ValueError, match="inside value.s"):
        ms_deform_attn(value, [(6, 5), (3, 4), (4, 4)], starts, loc, attn)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    value, starts, loc, attn = make_inputs()
    ref = reference_msda(value, SHAPES, starts, loc, attn)
    got = ms_deform_attn(value.cuda(), SHAPES, starts, loc.cuda(), attn.cuda()).cpu()
    assert (got - ref).abs().max().item() < 1e-12


class _TwoLevel(torch.nn.Module):
    """Levels derived from the input map's (symbolic) size: (H, W) and (H/2, W/2)."""

    def forward(self, feat, loc, attn):
        B, C, H, W = feat.shape
        coarse = torch.nn.functional.avg_pool2d(feat, 2)
        tokens = torch.cat([feat.flatten(2), coarse.flatten(2)], dim=2).transpose(1, 2)  # (B, S, C)
        value = tokens.reshape(B, tokens.shape[1], 2, C // 2)
        shapes = [(H, W), (H // 2, W // 2)]
        return ms_deform_attn(value, shapes, [0, H * W], loc, attn)


def test_onnx_export_dynamic_hw(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _TwoLevel()
    g = torch.Generator().manual_seed(3)
    loc = torch.rand(1, 5, 2, 2, 3, 2, generator=g) * 1.2 - 0.1
    attn = torch.rand(1, 5, 2, 2, 3, generator=g)
    feat = torch.randn(1, 4, 6, 8, generator=g)
    path = tmp_path / "msda.onnx"
    hw = {2: torch.export.Dim("h2", min=1, max=64) * 2, 3: torch.export.Dim("w2", min=1, max=64) * 2}
    torch.onnx.export(
        model.eval(),
        (feat, loc, attn),
        path,
        dynamo=True,
        dynamic_shapes={"feat": hw, "loc": None, "attn": None},
        input_names=["feat", "loc", "attn"],
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for hw in [(6, 8), (10, 4)]:  # a second size proves H/W were not frozen at export
        f = torch.randn(1, 4, *hw, generator=g)
        (got,) = sess.run(None, {"feat": f.numpy(), "loc": loc.numpy(), "attn": attn.numpy()})
        ref = model(f, loc, attn)
        assert got.shape == tuple(ref.shape)
        assert abs(got - ref.numpy()).max() < 1e-5, hw
