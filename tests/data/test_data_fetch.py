"""fetch_hc18 against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest
from data_synth import save
from scipy import ndimage as ndi

from medurwkv.data import discover, fetch_hc18
from medurwkv.errors import DownloadError
from medurwkv.utils import download


@pytest.fixture
def server(http_server):
    """The local HTTP server of tests/conftest.py: (base URL, folder it serves)."""
    return http_server


def _tiny_hc18_zip(www, tmp_path):
    yy, xx = np.mgrid[0:40, 0:50]
    filled = ((yy - 20) / 10) ** 2 + ((xx - 25) / 14) ** 2 <= 1
    outline = filled & ~ndi.binary_erosion(filled)
    save(tmp_path / "ts" / "007_HC.png", np.full((40, 50), 100, np.uint8))
    save(tmp_path / "ts" / "007_HC_Annotation.png", outline.astype(np.uint8) * 255)
    archive = www / "training_set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in (tmp_path / "ts").iterdir():
            zf.write(p, f"training_set/{p.name}")
    (www / "training_set_pixel_size_and_HC.csv").write_text(
        "filename,pixel size(mm),head circumference (mm)\n007_HC.png,0.125,40.5\n"
    )
    return hashlib.sha256(archive.read_bytes()).hexdigest(), filled


def test_fetch_hc18_downloads_verifies_and_prepares(server, tmp_path):
    base, www = server
    sha, filled = _tiny_hc18_zip(www, tmp_path)
    keep = tmp_path / "downloads"
    dst = fetch_hc18(
        tmp_path / "hc18",
        url=f"{base}/training_set.zip",
        sha256=sha,
        csv_url=f"{base}/training_set_pixel_size_and_HC.csv",
        download_dir=keep,
        progress=False,
    )
    index = discover(dst)
    assert index.ids == ["007_HC"] and index.spacing["007_HC"] == 0.125
    np.testing.assert_array_equal(index.load_mask("007_HC").astype(bool), filled)
    assert (keep / "training_set.zip").is_file() and not list(keep.glob("*.part"))


def test_fetch_rejects_wrong_checksum_and_missing_files(server, tmp_path):
    base, www = server
    _tiny_hc18_zip(www, tmp_path)
    # the one download helper (medurwkv.utils.download) words it "expected sha256 X for URL, got Y"
    with pytest.raises(DownloadError, match="expected sha256 0{64} for"):
        fetch_hc18(
            tmp_path / "a", url=f"{base}/training_set.zip", sha256="0" * 64, csv_url=None, progress=False
        )
    assert not (tmp_path / "a").exists()
    with pytest.raises(DownloadError, match="404"):
        download(f"{base}/nothing.zip", tmp_path / "x.zip", progress=False)
    assert not (tmp_path / "x.zip").exists() and not [p for p in tmp_path.iterdir() if ".part" in p.name]
