"""Shared test fixtures.

Tests run on 2 shared cores: keep torch to one intra-op thread so parallel jobs do not oversubscribe.
Data from ``../shared`` is required in CI (``CI=true``): a missing folder fails the test loudly there, and is
skipped with a reason only on a developer machine. Tests never download from the internet (only from local
servers) and see an empty weight cache (:func:`_no_internet_empty_cache`).
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDURWKV_SHARED", REPO.parent / "shared"))


_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@pytest.fixture(scope="session", autouse=True)
def _no_internet_empty_cache(tmp_path_factory: pytest.TempPathFactory):
    """``MEDURWKV_CACHE`` is an empty folder (subprocesses inherit it) and urllib refuses every host but this
    machine: a weight file a developer cached cannot make a test pass, and a training of a model with an
    official release that forgot ``pretrained=False`` fails at once with the could-not-get-the-weights error
    instead of downloading the release."""
    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        full = url.full_url if isinstance(url, urllib.request.Request) else str(url)
        parsed = urllib.parse.urlparse(full)
        if parsed.scheme in ("http", "https") and parsed.hostname not in _LOCAL_HOSTS:
            raise urllib.error.URLError(
                f"the tests never download from the internet, got a request for {full}"
            )
        return real_urlopen(url, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDURWKV_CACHE", str(tmp_path_factory.mktemp("medurwkv_cache")))
        mp.setenv("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for its latest version
        mp.setattr(urllib.request, "urlopen", local_only)
        yield


def _require(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"expected shared test data at {path}, found nothing; put the project's shared/ folder beside the repo"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return _require(SHARED / "golden")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    return _require(SHARED / "data")


@pytest.fixture(scope="session")
def load_golden(golden_dir: Path):
    """``load_golden("vrwkv_mini_pre.pt")`` -> the golden pack (cached per session)."""
    cache: dict[str, dict] = {}

    def load(name: str) -> dict:
        if name not in cache:
            cache[name] = torch.load(golden_dir / name, weights_only=True)
        return cache[name]

    return load


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the request log would land in the captured stderr
        pass


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Serve ``tmp_path/www`` on an ephemeral 127.0.0.1 port (never the internet); yields (base URL, folder)."""
    for var in ("no_proxy", "NO_PROXY"):  # a configured HTTP proxy must not intercept localhost
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    finally:
        httpd.shutdown()
        httpd.server_close()
