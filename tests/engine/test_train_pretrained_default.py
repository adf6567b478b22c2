"""``pretrained`` defaults to ``auto``: the model's official release when it has one (engine/config.py).

Nothing is downloaded: the release is either put into an empty cache folder (``MEDURWKV_CACHE``) by hand, as an
offline user would, or its URL points at a local server that answers 404 or at a closed local port.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch
import yaml
from engine_testing import make_disks

from medurwkv.engine.checkpoint import load_checkpoint
from medurwkv.engine.config import (
    PRETRAINED_AUTO,
    TrainConfig,
    effective_pretrained,
    resolve_config,
    resolve_pretrained,
    resume_changes,
)
from medurwkv.engine.train import fit
from medurwkv.errors import UserError
from medurwkv.models import QUICK_OVERRIDES, create_model, get_model_entry, registry

TINY_URWKV = QUICK_OVERRIDES["med_urwkv_t"]
RELEASE = get_model_entry("med_urwkv_t").pretrained
QUIET = dict(img_size=32, batch_size=4, num_workers=0, progress=False, eval_test=False, tensorboard=False)


@pytest.fixture
def disks(tmp_path: Path) -> Path:
    return make_disks(tmp_path / "disks", n=8)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MEDURWKV_CACHE", str(folder))
    return folder


def _release_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """med_urwkv_t's release served from ``url`` instead of Hugging Face (same file name)."""
    entry = get_model_entry("med_urwkv_t")
    moved = dataclasses.replace(entry, pretrained=dataclasses.replace(RELEASE, url=url))
    monkeypatch.setitem(registry._REGISTRY, "med_urwkv_t", moved)


def _closed_port_url() -> str:
    with socket.socket() as s:  # bound then closed: nothing listens there, the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{RELEASE.file}"


# ------------------------------------------------------------------------------------------- the resolution


def test_default_is_auto_and_resolves_by_the_model_release():
    assert TrainConfig().pretrained == PRETRAINED_AUTO == "auto"
    assert resolve_config(None, pretrained="AUTO").pretrained == "auto"  # the CLI string, any case
    assert effective_pretrained("med_urwkv_t", "auto") is True  # has the ADE20K adapter-T release
    assert effective_pretrained("med_urwkv_t_pure", "auto") is True
    for name in ("unet", "monai_unet"):  # no official release
        assert get_model_entry(name).pretrained is None
        assert effective_pretrained(name, "auto") is False
    # explicit values are kept as they are
    assert effective_pretrained("med_urwkv_t", False) is False
    assert effective_pretrained("unet", "w/unet.pt") == "w/unet.pt"


def test_resolve_pretrained_without_downloading(tmp_path: Path, cache: Path):
    data = make_disks(tmp_path / "d", n=2)
    unet = TrainConfig(model="unet", data=str(data))
    assert resolve_pretrained(unet).pretrained is False
    # a model passed to fit(net=...) is trained as given: auto loads nothing into it and freezes nothing
    assert resolve_pretrained(TrainConfig(data=str(data)), net_given=True).pretrained is False
    assert resolve_pretrained(TrainConfig(data=str(data), pretrained=True), net_given=True).pretrained is True
    # the release copied into the cache by hand: auto becomes true, offline (the tests refuse the internet)
    cache.mkdir()
    (cache / RELEASE.file).write_bytes(b"not read here")
    assert resolve_pretrained(TrainConfig(data=str(data))).pretrained is True
    # a saved run's config records what was used; a hand-written "auto" is resolved on resume, no download
    saved = TrainConfig(model="unet", data=str(data), out=str(tmp_path / "run"))
    assert resume_changes(saved, {}, tmp_path / "run").pretrained is False


def test_explicit_true_without_release_and_missing_path_stop_early(disks: Path, tmp_path: Path):
    with pytest.raises(
        UserError, match=r"official release for --pretrained true, got 'unet'.*--pretrained false"
    ):
        fit(data=disks, out=tmp_path / "a", model="unet", pretrained=True, **QUIET)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope.pth' which does not exist.*--pretrained false"):
        fit(data=disks, out=tmp_path / "b", model="unet", pretrained=str(missing), **QUIET)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not (disks / "splits.json").exists()  # stopped before the data was prepared


# ------------------------------------------------------------------------------------------- the release missing


@pytest.mark.parametrize("where", ["404", "closed port"])
def test_missing_undownloadable_release_stops_fit_before_any_work(
    where: str, disks: Path, tmp_path: Path, cache: Path, http_server, monkeypatch: pytest.MonkeyPatch
):
    url = f"{http_server[0]}/{RELEASE.file}" if where == "404" else _closed_port_url()
    _release_at(monkeypatch, url)
    out = tmp_path / "run"
    with pytest.raises(UserError) as ei:
        fit(data=disks, out=out, model="med_urwkv_t", model_kwargs=TINY_URWKV, **QUIET)
    msg = str(ei.value)
    assert "\n" not in msg
    dest = cache / RELEASE.file
    assert f"downloading {url} failed" in msg and f"Copy the file to {dest}," in msg
    assert "--pretrained PATH" in msg and "--pretrained false to train from scratch" in msg
    assert "--pretrained auto (the default)" in msg  # says why weights were wanted at all
    assert not out.exists() and not (disks / "splits.json").exists()  # no run folder, no split: no work
    assert not dest.exists() and not list(cache.glob("*.part"))  # nothing partial left in the cache


def test_default_loads_the_cached_release_freezes_and_records_true(
    disks: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
):
    # an official-layout file for the tiny model under the release's name, copied into the cache by hand
    _release_at(monkeypatch, _closed_port_url())  # would the loader try the network, it would fail
    torch.manual_seed(7)
    donor = create_model("med_urwkv_t", in_channels=1, num_classes=2, **TINY_URWKV)
    cache.mkdir()
    sd = {f"backbone.{k}": v.clone() for k, v in donor.pretrained_target().state_dict().items()}
    torch.save({"state_dict": sd}, cache / RELEASE.file)
    out = tmp_path / "run"
    fit(
        data=disks,
        out=out,
        model="med_urwkv_t",
        model_kwargs=TINY_URWKV,
        epochs=1,
        freeze_encoder_epochs=1,
        max_train_batches=1,
        max_val_batches=1,
        **QUIET,
    )
    log = (out / "train.log").read_text()
    assert f"encoder: pretrained (official release {RELEASE.file}); frozen for epochs 1-1" in log
    assert yaml.safe_load((out / "config.yaml").read_text())["pretrained"] is True  # what was used
    ck = load_checkpoint(out / "last.pt")
    assert ck["train_config"]["pretrained"] is True and ck["preprocess"]["normalize"] == "imagenet"
    enc = {k.removeprefix("encoder."): v for k, v in ck["state_dict"].items() if k.startswith("encoder.")}
    assert all(torch.equal(enc[k], v) for k, v in donor.pretrained_target().state_dict().items())  # frozen
