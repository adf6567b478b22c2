"""Shared test fixtures.

Tests run on 2 shared cores: keep torch to one intra-op thread so parallel jobs do not oversubscribe.
Data from ``../shared`` is required in CI (``CI=true``): a missing folder fails the test loudly there, and is
skipped with a reason only on a developer machine.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDURWKV_SHARED", REPO.parent / "shared"))


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
