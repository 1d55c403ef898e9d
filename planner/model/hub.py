"""Is the model hub reachable? Asked once per process, answered in at most ~2 s.

huggingface_hub retries failed requests with back-off (about 25 s before it gives up), which would make
every plan on an offline laptop slow. One quick TCP probe decides instead; HF_HUB_OFFLINE=1 (or
`--offline`) skips it.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 2.0


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@cache
def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """False when offline was asked for or the hub endpoint does not accept a connection."""
    if offline_requested():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return _reachable(url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80))
