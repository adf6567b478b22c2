"""load_pretrained: official checkpoint layouts, stem / pos-grid conversions, strictness, download cache."""

from __future__ import annotations

import hashlib
import http.server
import sys
import threading
import types
from collections import OrderedDict
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from medurwkv import create_model
from medurwkv.errors import DownloadError
from medurwkv.models import LoadReport, SegmentationModel, load_pretrained
from medurwkv.models.layers import resize_pos_embed
from medurwkv.models.pretrained import fetch_weights as download
from medurwkv.models.registry import get_model_entry
from medurwkv.models.releases import HF_BASE, find_release, official_releases
from medurwkv.models.vrwkv import VRWKV

# Small enough for 2 shared cores: 2 blocks of width 32 on a 2x2 .. 5x5 token grid.
TINY = dict(embed_dims=32, depth=2, img_size=32)


def tiny(seed: int = 0, **kw) -> VRWKV:
    torch.manual_seed(seed)
    return VRWKV(**{**TINY, **kw}).eval()


def randomize(model: nn.Module, seed: int) -> nn.Module:
    # Every entry random so that a key that is not copied cannot pass by coincidence of the init.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
    return model


def mmcls_checkpoint(model: nn.Module, num_classes: int = 5) -> dict:
    """What torch.load of an official ImageNet (mmcls) file returns for ``model``."""
    sd = OrderedDict(("backbone." + k, v.clone()) for k, v in model.state_dict().items())
    C = model.embed_dims
    sd["head.fc.weight"] = torch.randn(num_classes, C)
    sd["head.fc.bias"] = torch.randn(num_classes)
    return {"meta": {"mmcls_version": "0.25.0", "CLASSES": ["a"] * num_classes}, "state_dict": sd}


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ----------------------------------------------------------------------------------------------------
# Golden checkpoints: what the official code saves loads strictly and reproduces its outputs
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fname,run_name,tol", [("vrwkv_mini_pre.pt", "80x112", 5e-5), ("vrwkv_mini_post.pt", "72x88", 1e-4)]
)
def test_golden_checkpoint_file_loads_strictly_and_matches(load_golden, tmp_path, fname, run_name, tol):
    pack = load_golden(fname)
    path = tmp_path / fname.replace(".pt", ".pth")
    torch.save(pack["checkpoint"], path)
    model = VRWKV(
        **pack["config"], wkv_token_split=pack["kernel"]["token_split"], wkv_eps=pack["kernel"]["eps"]
    )
    report = load_pretrained(model.eval(), path, verbose=False)
    assert isinstance(report, LoadReport) and report.ok
    assert report.skipped == ["head.fc.weight", "head.fc.bias"]
    assert report.loaded == [k for k, _ in pack["state_dict_keys"]]
    assert not report.resized and not report.adapted
    run = pack["runs"][run_name]
    with torch.no_grad():
        outs = model(run["input"])
    for got, ref in zip(outs, run["outs"], strict=True):
        assert got.shape == ref.shape
        err = (got.double() - ref).abs().max().item()
        assert err < tol, f"{fname} {run_name}: max abs diff {err:.3g} >= {tol}"


# ----------------------------------------------------------------------------------------------------
# Dict layouts and prefixes
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["state_dict", "model", "module", "raw", "module_prefix", "ddp_raw"])
def test_dict_layouts_load(layout, tmp_path):
    src = randomize(tiny(), seed=1)
    ckpt = mmcls_checkpoint(src)
    sd = ckpt["state_dict"]
    if layout == "state_dict":
        obj = ckpt
    elif layout in ("model", "module"):
        obj = {layout: sd, "epoch": 3, "config": "text"}
    elif layout == "raw":
        obj = dict(sd)
    elif layout == "module_prefix":  # DDP-wrapped detector/segmentor: module.backbone.<key>
        obj = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    else:  # a plain DDP backbone state dict: module.<key>
        obj = {"module." + k: v for k, v in src.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    dst = tiny(seed=2)
    report = load_pretrained(dst, path, verbose=False)
    assert report.ok
    assert_same_state(dst, src)
    # An already-loaded dict behaves the same.
    dst2 = tiny(seed=3)
    assert load_pretrained(dst2, obj, verbose=False).source == "<dict>"
    assert_same_state(dst2, src)


def test_report_text_lists_nonempty_groups(capsys):
    src = randomize(tiny(), seed=1)
    report = load_pretrained(tiny(seed=2), mmcls_checkpoint(src), verbose=True)
    printed = capsys.readouterr().out
    assert printed.strip() == str(report)
    assert f"{len(report.loaded)} loaded" in printed and "2 skipped" in printed
    assert "head.fc.weight" in printed and "missing:" not in printed


# ----------------------------------------------------------------------------------------------------
# Stem adaptation to in_channels
# ----------------------------------------------------------------------------------------------------


def test_in_channels_1_sums_rgb_filters_and_matches_gray_rgb():
    src = randomize(tiny(), seed=4)
    dst = tiny(seed=5, in_channels=1)
    report = load_pretrained(dst, mmcls_checkpoint(src), verbose=False)
    assert report.adapted == ["patch_embed.projection.weight"] and report.ok
    w3 = src.patch_embed.projection.weight
    assert torch.allclose(dst.patch_embed.projection.weight, w3.sum(1, keepdim=True))
    gray = torch.rand(2, 1, 48, 64)
    with torch.no_grad():
        out1 = dst(gray)[-1]
        out3 = src(gray.expand(-1, 3, -1, -1))[-1]
    assert torch.allclose(out1, out3, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n", [2, 4, 5, 6])
def test_in_channels_n_repeats_rgb_filters_scaled(n):
    src = randomize(tiny(), seed=6)
    dst = tiny(seed=7, in_channels=n)
    report = load_pretrained(dst, mmcls_checkpoint(src), verbose=False)
    assert report.adapted == ["patch_embed.projection.weight"]
    w3 = src.patch_embed.projection.weight
    wn = dst.patch_embed.projection.weight
    for i in range(n):
        assert torch.allclose(wn[:, i], w3[:, i % 3] * 3 / n), i
    # n a multiple of 3: each RGB filter appears n/3 times at weight 3/n; a constant image responds the same.
    if n % 3 == 0:
        assert torch.allclose(wn.sum(1), w3.sum(1), atol=1e-6)


class _Encoder(nn.Module):
    """An adapter-like encoder: a plain patch stem plus a conv/BN spatial-prior stem (``spm.stem``)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(in_channels, 8, 4, 4)
        self.spm = nn.Module()
        self.spm.stem = nn.Sequential(
            nn.Conv2d(in_channels, 6, 3, 2, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU()
        )


class _SegModel(SegmentationModel):
    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.encoder = _Encoder(in_channels)
        self.decoder = nn.Conv2d(8, 2, 1)

    def pretrained_target(self) -> nn.Module:
        return self.encoder


def _mmseg_checkpoint(enc: _Encoder) -> dict:
    sd = OrderedDict(("backbone." + k, v.clone()) for k, v in enc.state_dict().items())
    sd["decode_head.conv_seg.weight"] = torch.randn(150, 8, 1, 1)
    sd["auxiliary_head.conv_seg.bias"] = torch.randn(150)
    return {"meta": {}, "state_dict": sd}


def test_pretrained_target_bn_buffers_and_spm_stem_adaptation():
    src = _Encoder(3)
    randomize(src, seed=8)
    bn = src.spm.stem[1]
    bn.running_var.abs_().add_(0.1)
    bn.num_batches_tracked.fill_(1234)
    model = _SegModel(in_channels=1)
    dec_before = model.decoder.weight.clone()
    report = load_pretrained(model, _mmseg_checkpoint(src), verbose=False)
    assert report.ok and report.target.startswith("_Encoder")
    assert report.skipped == ["decode_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"]
    assert set(report.adapted) == {"patch_embed.projection.weight", "spm.stem.0.weight"}
    assert torch.allclose(model.encoder.spm.stem[0].weight, src.spm.stem[0].weight.sum(1, keepdim=True))
    got_bn = model.encoder.spm.stem[1]
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(got_bn, name), getattr(bn, name)), name
        assert f"spm.stem.1.{name}" in report.loaded
    assert torch.equal(model.decoder.weight, dec_before)  # outside the target: untouched


def test_golden_adapter_mmseg_checkpoint(load_golden):
    # The ADE20K (mmseg) layout: BN buffers, decode/auxiliary heads, no final ln1 (golden README §2).
    from medurwkv.models import adapter

    pack = load_golden("vrwkv_adapter_mini.pt")
    cfg = {k: v for k, v in pack["config"].items() if k != "pretrained"}
    kernel = dict(wkv_token_split=pack["kernel"]["token_split"], wkv_eps=pack["kernel"]["eps"])
    model = adapter.VRWKVAdapter(**cfg, **kernel).eval()
    report = load_pretrained(model, pack["checkpoint"], verbose=False)
    assert report.ok and len(report.loaded) == len(pack["state_dict_keys"])
    assert report.skipped and all(k.startswith(("decode_head.", "auxiliary_head.")) for k in report.skipped)
    assert any(k.endswith("num_batches_tracked") for k in report.loaded)
    run = pack["runs"]["64x96"]
    with torch.no_grad():
        outs = model(run["input"])
    for got, ref in zip(outs, run["outs"], strict=True):
        assert (got.double() - ref).abs().max().item() < 1e-4
    gray = adapter.VRWKVAdapter(**cfg, **kernel, in_channels=1)
    report = load_pretrained(gray, pack["checkpoint"], verbose=False)
    assert report.adapted == ["patch_embed.projection.weight", "spm.stem.0.weight"] and report.ok
    w = pack["checkpoint"]["state_dict"]["backbone.spm.stem.0.weight"]
    assert torch.allclose(gray.spm.stem[0].weight, w.sum(1, keepdim=True))


def test_full_model_checkpoint_goes_to_the_whole_model():
    # Our own training checkpoints hold the whole model's keys (encoder.* and decoder.*), not backbone.*.
    src = randomize(_SegModel(), seed=9)
    dst = _SegModel()
    report = load_pretrained(dst, {"format": "x", "state_dict": src.state_dict()}, verbose=False)
    assert report.ok and report.target == "_SegModel"
    assert_same_state(dst, src)


# ----------------------------------------------------------------------------------------------------
# Position grid resize
# ----------------------------------------------------------------------------------------------------


def test_pos_embed_grid_is_resized_bicubically():
    src = randomize(tiny(img_size=64), seed=10)  # 4x4 grid
    dst = tiny(seed=11, img_size=80)  # 5x5 grid
    report = load_pretrained(dst, mmcls_checkpoint(src), verbose=False)
    assert report.resized == ["pos_embed"] and report.ok
    assert dst.pos_embed.shape == (1, 25, 32)
    want = resize_pos_embed(src.pos_embed.detach(), (4, 4), (5, 5), mode="bicubic")
    assert torch.allclose(dst.pos_embed, want, atol=1e-6)
    assert not torch.allclose(dst.pos_embed[:, :16], src.pos_embed)  # really interpolated, not truncated


# ----------------------------------------------------------------------------------------------------
# Wrong architecture, strictness
# ----------------------------------------------------------------------------------------------------


def test_wrong_width_names_both_architectures():
    src = tiny(embed_dims=64)
    model = create_model("vrwkv_t", embed_dims=32, depth=2, img_size=32)
    with pytest.raises(ValueError) as e:
        load_pretrained(model, mmcls_checkpoint(src), verbose=False)
    msg = str(e.value)
    assert "checkpoint has embed_dims=64, depth=2" in msg
    assert "model has embed_dims=32, depth=2 (vrwkv_t)" in msg
    # Shape mismatches are never loaded partially, also not with strict=False.
    with pytest.raises(ValueError, match="embed_dims=64"):
        load_pretrained(model, mmcls_checkpoint(src), strict=False, verbose=False)


def test_known_variant_is_recognised_in_message():
    with torch.device("meta"):  # only shapes matter
        model = create_model("vrwkv_t")
        # The VRWKV-S keys that identify it: width from the stem, depth from the block indices.
        sd = {"backbone.patch_embed.projection.weight": torch.empty(384, 3, 16, 16)}
        sd.update({f"backbone.layers.{i}.ln1.weight": torch.empty(384) for i in range(12)})
    with pytest.raises(
        ValueError, match=r"looks like VRWKV-S\) but the model has embed_dims=192, depth=12 \(vrwkv_t\)"
    ):
        load_pretrained(model, sd, verbose=False)


def test_missing_keys_strict_and_non_strict():
    src = randomize(tiny(depth=2), seed=12)
    model = tiny(seed=13, depth=3)
    with pytest.raises(ValueError, match=r"missing from the checkpoint .*layers\.2\."):
        load_pretrained(model, mmcls_checkpoint(src), verbose=False)
    report = load_pretrained(model, mmcls_checkpoint(src), strict=False, verbose=False)
    assert not report.ok and report.missing and all(k.startswith("layers.2.") for k in report.missing)
    assert not report.unexpected
    assert torch.equal(model.layers[1].att.key.weight, src.layers[1].att.key.weight)


def test_layer_scale_missing_like_in1k_t_into_adapter():
    # VRWKV-T ImageNet weights have no gamma1/2; an init_values=1 model keeps them at 1 with strict=False.
    src = randomize(tiny(), seed=14)
    model = tiny(seed=15, init_values=1.0)
    report = load_pretrained(model, mmcls_checkpoint(src), strict=False, verbose=False)
    assert report.missing == [f"layers.{i}.gamma{j}" for i in range(2) for j in (1, 2)]
    assert all(torch.all(model.layers[i].gamma1 == 1) for i in range(2))
    assert "layers.{0-1}.gamma1" in str(report)


def test_unexpected_keys_strict_and_non_strict():
    src = randomize(tiny(), seed=16)
    ckpt = mmcls_checkpoint(src)
    ckpt["state_dict"]["backbone.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected in the checkpoint \(1\): extra\.weight"):
        load_pretrained(tiny(), ckpt, verbose=False)
    report = load_pretrained(tiny(), ckpt, strict=False, verbose=False)
    assert report.unexpected == ["extra.weight"] and not report.missing and not report.ok


def test_non_tensor_objects_need_trust(tmp_path, monkeypatch):
    # A trainer config object of a package we do not have (e.g. yacs in the internimage VRWKV-L files).
    mod = types.ModuleType("fake_trainer_cfg")

    class Cfg(dict):
        pass

    Cfg.__module__, Cfg.__qualname__ = mod.__name__, "Cfg"
    mod.Cfg = Cfg
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    src = randomize(tiny(), seed=17)
    cfg = Cfg(lr=1.0)
    cfg.note = "x"
    path = tmp_path / "with_cfg.pth"
    torch.save({"model": src.state_dict(), "config": cfg}, path)
    monkeypatch.delitem(sys.modules, mod.__name__)  # the package is not installed when loading
    with pytest.raises(ValueError, match="trust_pickle=True"):
        load_pretrained(tiny(), path, verbose=False)
    dst = tiny(seed=18)
    with pytest.warns(UserWarning, match="non-tensor"):
        report = load_pretrained(dst, path, trust_pickle=True, verbose=False)
    assert report.ok
    assert_same_state(dst, src)


# ----------------------------------------------------------------------------------------------------
# Kernel constants of official releases
# ----------------------------------------------------------------------------------------------------


def test_kernel_constants_warning_names_both(tmp_path):
    src = randomize(tiny(), seed=19)
    path = tmp_path / "upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth"  # official name: 16 chunks, EPS 0
    torch.save(mmcls_checkpoint(src), path)
    model = tiny(seed=20)  # 32 chunks, EPS 1e-6
    with pytest.warns(
        UserWarning, match=r"token_split=16, eps=0 but the model uses token_split=32, eps=1e-06"
    ):
        load_pretrained(model, path, verbose=False)
    assert model.layers[0].att.wkv_token_split == 32 and model.layers[0].att.wkv_eps == 1e-6  # not changed


def test_no_kernel_warning_when_constants_match(tmp_path, recwarn):
    src = randomize(tiny(), seed=21)
    path = tmp_path / "vrwkv_t_in1k_224.pth"
    torch.save(mmcls_checkpoint(src), path)
    load_pretrained(tiny(seed=22), path, verbose=False)
    assert not [w for w in recwarn if "token_split" in str(w.message)]


# ----------------------------------------------------------------------------------------------------
# Download cache (local HTTP server only)
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """Serve ``tmp_path/'srv'`` on 127.0.0.1; yields (folder, base URL, list of requested paths)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = tmp_path / "srv"
    srv.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(srv)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv, f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _serve_tiny(srv: Path, name: str, seed: int = 23) -> tuple[VRWKV, str]:
    src = randomize(tiny(), seed=seed)
    torch.save(mmcls_checkpoint(src), srv / name)
    return src, hashlib.sha256((srv / name).read_bytes()).hexdigest()


def test_url_download_is_cached(http_dir, tmp_path):
    srv, base, requests = http_dir
    src, digest = _serve_tiny(srv, "tiny.pth")
    cache = tmp_path / "cache"
    dst = tiny(seed=24)
    report = load_pretrained(dst, base + "tiny.pth", cache_dir=cache, progress=False, verbose=False)
    assert report.ok and report.source == base + "tiny.pth"
    assert_same_state(dst, src)
    assert requests == ["/tiny.pth"]
    assert (cache / "tiny.pth").is_file() and not list(cache.glob("*.part"))
    load_pretrained(tiny(seed=25), base + "tiny.pth", cache_dir=cache, progress=False, verbose=False)
    assert requests == ["/tiny.pth"]  # second call served from the cache
    assert download(base + "tiny.pth", sha256=digest, cache_dir=cache, progress=False) == cache / "tiny.pth"
    assert requests == ["/tiny.pth"]


def test_sha256_mismatch_deletes_and_raises(http_dir, tmp_path):
    srv, base, requests = http_dir
    _, digest = _serve_tiny(srv, "tiny.pth")
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"expected sha256 {wrong} for .*, got {digest}"):
        download(base + "tiny.pth", sha256=wrong, cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []  # neither the file nor a partial download is left
    path = download(base + "tiny.pth", sha256=digest.upper(), cache_dir=cache, progress=False)
    assert path == cache / "tiny.pth" and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert len(requests) == 2


def test_corrupt_cached_file_is_fetched_again(http_dir, tmp_path):
    srv, base, requests = http_dir
    _, digest = _serve_tiny(srv, "tiny.pth")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.pth").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="downloading it again"):
        path = download(base + "tiny.pth", sha256=digest, cache_dir=cache, progress=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest and len(requests) == 1


def test_cache_env_and_create_model_with_url(http_dir, tmp_path, monkeypatch):
    srv, base, requests = http_dir
    src, _ = _serve_tiny(srv, "tiny_t.pth")
    monkeypatch.setenv("MEDURWKV_CACHE", str(tmp_path / "envcache"))
    model = create_model("vrwkv_t", embed_dims=32, depth=2, img_size=32, pretrained=base + "tiny_t.pth")
    assert_same_state(model, src)
    assert (tmp_path / "envcache" / "tiny_t.pth").is_file() and requests == ["/tiny_t.pth"]


def test_pretrained_true_uses_a_file_already_in_the_cache(tmp_path, monkeypatch):
    # Offline use: the official file copied into the cache by hand is used without any network access.
    src = randomize(tiny(), seed=28)
    monkeypatch.setenv("MEDURWKV_CACHE", str(tmp_path))
    torch.save(mmcls_checkpoint(src), tmp_path / "vrwkv_t_in1k_224.pth")
    model = create_model("vrwkv_t", embed_dims=32, depth=2, img_size=32, pretrained=True)
    assert_same_state(model, src)


def test_download_errors_are_clear(http_dir, tmp_path):
    _, base, _ = http_dir
    with pytest.raises(DownloadError, match="pretrained=PATH"):
        download(base + "nothere.pth", cache_dir=tmp_path / "c", progress=False)
    assert not list((tmp_path / "c").iterdir())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tiny(), tmp_path / "nope.pth", verbose=False)


def test_file_url_and_local_sha256(tmp_path):
    src = randomize(tiny(), seed=26)
    path = tmp_path / "local.pth"
    torch.save(mmcls_checkpoint(src), path)
    dst = tiny(seed=27)
    load_pretrained(dst, path.as_uri(), cache_dir=tmp_path / "cache", progress=False, verbose=False)
    assert_same_state(dst, src)
    assert (tmp_path / "cache" / "local.pth").is_file()
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_pretrained(tiny(), path, sha256="f" * 64, verbose=False)
    assert path.is_file()  # a user's own file is never deleted


# ----------------------------------------------------------------------------------------------------
# Release table
# ----------------------------------------------------------------------------------------------------


def test_official_releases_table():
    rel = official_releases()
    files = [r.file for r in rel]
    sizes = ("tiny", "small", "base", "large")
    expected = (
        [f"vrwkv_{s}_in1k_224.pth" for s in "tsb"]
        + ["vrwkv_l_in22k_192.pth", "vrwkv_l_22kto1k_384.pth"]
        + [f"upernet_vrwkv_adapter_{s}_512_160k_ade20k.pth" for s in sizes]
        + [f"mask_rcnn_vrwkv_adapter_{s}_fpn_1x_coco.pth" for s in sizes]
    )
    assert sorted(files) == sorted(expected) and len(files) == len(set(files))
    for r in rel:
        assert (
            r.url == "https://huggingface.co/OpenGVLab/Vision-RWKV/resolve/main/" + r.file == HF_BASE + r.file
        )
        if r.file.startswith("vrwkv_l"):
            assert (r.layout, r.wkv_token_split, r.wkv_eps) == ("mmcls", 16, 1e-6)
        elif r.file.startswith("vrwkv_"):
            assert (r.layout, r.wkv_token_split, r.wkv_eps) == ("mmcls", 32, 1e-6)
        elif r.file.startswith("upernet_"):
            assert (r.layout, r.wkv_token_split, r.wkv_eps) == ("mmseg", 16, 0.0)
        else:
            assert (r.layout, r.wkv_token_split, r.wkv_eps) == ("mmdet", 32, 0.0)
    # The registry's variants point at entries of this table, with the same constants.
    for name in ("vrwkv_t", "vrwkv_s", "vrwkv_b", "vrwkv_l"):
        cfg = get_model_entry(name).pretrained
        assert cfg is not None
        (match,) = [r for r in rel if r.file == cfg.file]
        assert (cfg.url, cfg.layout, cfg.wkv_token_split, cfg.wkv_eps) == (
            match.url,
            match.layout,
            match.wkv_token_split,
            match.wkv_eps,
        )
    assert find_release(HF_BASE + "vrwkv_t_in1k_224.pth").file == "vrwkv_t_in1k_224.pth"
    assert find_release("/some/dir/mask_rcnn_vrwkv_adapter_base_fpn_1x_coco.pth").layout == "mmdet"
    assert find_release("my_weights.pth") is None
