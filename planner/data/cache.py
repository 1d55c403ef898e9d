"""Token-length cache keyed by (file contents, tokenizer, template, format, sampling), so a repeated plan
reads 4 bytes per sample instead of tokenizing again.

Location: $VRAMPLAN_CACHE, else ~/.cache/vramplan. File hashes are memoized by (path, size, mtime) so an
unchanged multi-GB dataset is not re-read to find its key.

    >>> key = cache_key({"files": [...], "tokenizer": ..., "template": ...})
    >>> store(key, lengths, meta); load(key)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from array import array
from pathlib import Path
from typing import Any

CACHE_VERSION = 2  # bump when rendering or counting changes meaning (2: checksummed lengths, strict fields)
_HASH_CHUNK = 1 << 22


def cache_dir() -> Path:
    env = os.environ.get("VRAMPLAN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vramplan"


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, memoized by (resolved path, size, mtime_ns)."""
    path = path.resolve()
    st = path.stat()
    stamp = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
    memo = cache_dir() / "hashes" / (hashlib.sha256(stamp.encode()).hexdigest()[:32] + ".txt")
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    _write_atomic(memo, value.encode())
    return value


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _entry(key: str) -> Path:
    return cache_dir() / "lengths" / f"{key}.bin"


def store(key: str, lengths: array, meta: dict[str, Any]) -> None:
    """Write sorted lengths (array('I')) and a JSON header; failures only cost the speed-up."""
    data = array("I", lengths)
    if sys.byteorder != "little":
        data.byteswap()
    body = data.tobytes()
    # A checksum of the lengths: a flipped bit in the file would otherwise give a plausible, wrong plan.
    header = json.dumps({**meta, "lengths_sha256": hashlib.sha256(body).hexdigest()}).encode()
    try:
        _write_atomic(_entry(key), struct.pack("<Q", len(header)) + header + body)
    except OSError:
        pass


def load(key: str) -> tuple[array, dict[str, Any]] | None:
    try:
        blob = _entry(key).read_bytes()
    except OSError:
        return None
    try:
        (size,) = struct.unpack_from("<Q", blob)
        meta = json.loads(blob[8:8 + size])
        body = blob[8 + size:]
        if not isinstance(meta, dict) or meta.pop("lengths_sha256", None) != hashlib.sha256(body).hexdigest():
            return None  # damaged or from an older writer: recount
        data = array("I")
        data.frombytes(body)
    except (struct.error, ValueError):
        return None
    if sys.byteorder != "little":
        data.byteswap()
    return data, meta


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass
