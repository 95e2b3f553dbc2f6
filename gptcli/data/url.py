"""URL sources: downloaded once into the cache, with a record of size and sha256 beside it.

The downloaded file is then read by the format its name gives, like a local file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from gptcli import console
from gptcli.console import UserError
from gptcli.data.streams import READ_CHUNK
from gptcli.files import cache_dir, sha256_file, write_atomic
from gptcli.recipe import DataConfig, SourceConfig

# cached downloads verified by this process: path -> (size, mtime_ns, sha256); a corpus is read
# several times per command, and one check of a file that has not changed is enough
_verified: dict[Path, tuple[int, int, str]] = {}


class _NetworkError(Exception):
    """The download could not be made (no network, refused, cut): the cache may still help."""


def _cache_path(url: str) -> Path:
    """cache_dir()/HASH-NAME: the URL's hash keeps URLs apart, NAME (its last part, made a
    plain file name) tells a person what it is."""
    base = url.split("#")[0].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:80] or "download"
    return cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _write_record(target: Path, url: str, digest: str) -> None:
    record = {"url": url, "bytes": target.stat().st_size, "sha256": digest}
    write_atomic(_record_path(target), json.dumps(record, indent=2).encode())
    st = target.stat()
    _verified[target] = (st.st_size, st.st_mtime_ns, digest)


def _cache_problem(target: Path, url: str, sha256: str) -> str | None:
    """None when the cached file is the download its record describes (and has the pinned
    sha256, if any); else what is wrong with it."""
    st = target.stat()
    seen = _verified.get(target)
    if seen is None or seen[:2] != (st.st_size, st.st_mtime_ns):
        try:
            record = json.loads(_record_path(target).read_text())
        except (OSError, ValueError):
            record = None
        digest = sha256_file(target)
        if not isinstance(record, dict) or record.get("url") != url:
            if not sha256 or digest != sha256.lower():  # else: cached before records, and pinned
                return "has no record of its download"
        elif record.get("bytes") != st.st_size or record.get("sha256") != digest:
            return "does not match the size and sha256 recorded when it was downloaded"
        _verified[target] = seen = (st.st_size, st.st_mtime_ns, digest)
    if sha256 and seen[2] != sha256.lower():
        return f"has sha256 {seen[2]}, not data.sha256 {sha256}"
    return None


def fetch(url: str, sha256: str = "", max_mb: float = 10240.0, allow_html: bool = False) -> Path:
    """Download url once into the cache (temp name, renamed when complete and verified), with
    a record of its size and sha256 beside it.

    Later calls check the cached file against that record (and against sha256 when pinned)
    and use it without the network; a file that fails the check is downloaded again.
    """
    target = _cache_path(url)
    problem = _cache_problem(target, url, sha256) if target.is_file() else None
    if target.is_file() and problem is None:
        return target
    try:
        _download(url, target, sha256, max_mb, allow_html)
    except _NetworkError as e:
        if problem:
            raise UserError(
                f"{target} (cached {url}) {problem}, and downloading it again failed ({e}); "
                "restore the network, or set data.source to a local copy"
            ) from None
        raise UserError(
            f"{url}: download failed ({e}); check the URL and the network, "
            "or set data.source to a local copy"
        ) from None
    if problem:
        console.warn(f"{target} (cached {url}) {problem}; it was downloaded again")
    return target


def files(src: SourceConfig, cfg: DataConfig, run_dir: Path | None) -> list[Path]:
    """The source's one file: its download, made or checked once."""
    return [fetch(src.path, src.sha256, cfg.max_download_mb, cfg.allow_html)]


def _is_html(content_type: str, head: bytes) -> bool:
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:15].lower()
    return content_type in ("text/html", "application/xhtml+xml") or start.startswith(
        (b"<!doctype html", b"<html")
    )


def _download(url: str, target: Path, sha256: str, max_mb: float, allow_html: bool) -> None:
    """Stream url into a temp file beside target; rename it when it is complete, within
    data.max_download_mb, not an HTML page (unless allowed) and has the pinned sha256."""
    import http.client
    import urllib.error
    import urllib.request

    limit = int(max_mb * 1e6)
    too_big = UserError(
        f"{url}: larger than data.max_download_mb ({max_mb:g} MB); raise it if this is the "
        "file you mean"
    )
    with console.writing(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    console.info(f"tokenize: downloading {url}")
    h, n = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            expected = int(resp.headers.get("Content-Length") or 0)
            if expected > limit:
                raise too_big
            content_type = resp.headers.get_content_type()
            with console.writing(tmp):
                f = open(tmp, "wb")  # closed by the with below
            with f, console.progress(unit="bytes") as bar:
                task = bar.add_task("download", total=expected or None)
                while chunk := resp.read(READ_CHUNK):
                    if n == 0 and not allow_html and _is_html(content_type, chunk):
                        raise UserError(
                            f"{url}: the server sent an HTML page, not text (link the raw "
                            "file, or set data.allow_html: true if the page is the corpus)"
                        )
                    n += len(chunk)
                    if n > limit:
                        raise too_big
                    with console.writing(tmp):  # a full disk is not a network failure
                        f.write(chunk)
                    h.update(chunk)
                    bar.advance(task, len(chunk))
        if expected and n != expected:
            raise UserError(f"{url}: download ended after {n} of {expected} bytes (try again)")
        if sha256 and h.hexdigest() != sha256.lower():
            raise UserError(
                f"{url}: downloaded file has sha256 {h.hexdigest()}, not data.sha256 {sha256} "
                "(fix data.sha256 or the URL)"
            )
        with console.writing(target):
            tmp.replace(target)
    except urllib.error.HTTPError as e:
        raise UserError(f"{url}: HTTP {e.code} {e.reason} (check the URL)") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        raise _NetworkError(getattr(e, "reason", None) or type(e).__name__) from None
    finally:
        tmp.unlink(missing_ok=True)
    _write_record(target, url, h.hexdigest())
    pin = "" if sha256 else " (set data.sha256 to it to pin this download)"
    console.info(f"tokenize: downloaded {n:,} bytes, sha256 {h.hexdigest()}{pin}")
