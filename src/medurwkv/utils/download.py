"""The one download of the project: on request only, to a temporary file, verified, then renamed into place.

Used for the official weights (``models/pretrained.py``) and the public datasets (``data/prepare.py``).
Nothing is downloaded at import or test time; tests serve files from a local HTTP server or ``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from ..errors import DownloadError
from .progress import progress_bar

__all__ = ["CACHE_ENV", "default_cache_dir", "download", "sha256_file"]

CACHE_ENV = "MEDURWKV_CACHE"


def default_cache_dir() -> Path:
    """``$MEDURWKV_CACHE`` if set, else ``~/.cache/medurwkv``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medurwkv"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    hint: str = "check the URL and the network, or download the file by hand",
) -> Path:
    """Fetch ``url`` (``http``, ``https`` or ``file``) to the file ``dest`` and return ``dest``.

    An existing ``dest`` is reused without network access when no ``sha256`` is given or when it matches (so a
    file copied there by hand works offline); one that fails its checksum is fetched again, with a warning.
    The bytes go to a temporary file beside ``dest`` that is renamed into place only when complete and verified,
    so an interrupted or corrupt download never leaves a file that a later call would trust.

    Raises :class:`~medurwkv.errors.DownloadError` (a user error) when the URL is not http(s)/file, the
    transfer fails (the message ends with ``hint``) or the checksum differs.
    """

    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise DownloadError(f"expected an http(s):// or file:// URL, got {url!r}")
    dest = Path(dest).expanduser()
    want = sha256.lower() if sha256 else None
    if dest.is_file():
        if want is None:
            return dest
        got = sha256_file(dest)
        if got == want:
            return dest
        warnings.warn(f"{dest} has sha256 {got}, expected {want}; downloading it again", stacklevel=2)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "medurwkv"})
                with urllib.request.urlopen(request, timeout=timeout) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with progress_bar(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        progress=progress,
                    ) as bar:
                        while block := resp.read(1 << 20):
                            f.write(block)
                            digest.update(block)
                            bar.update(len(block))
            except OSError as e:  # URLError, HTTPError and socket errors are all OSErrors
                raise DownloadError(f"could not download {url}: {e}; {hint}") from e
            f.flush()
            os.fsync(f.fileno())
        got = digest.hexdigest()
        if want is not None and got != want:
            raise DownloadError(
                f"expected sha256 {want} for {url}, got {got}; the download was deleted. The file is corrupt or "
                "changed upstream: retry, or pass the new sha256 if you trust it"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
