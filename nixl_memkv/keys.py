"""Key shaping shared by the plugins: host-engine keys become MemKV keys of
at most 512 bytes (with the client's namespace prefix). Keys longer than 480
bytes collapse to the deterministic `memkv-h2:<blake2b-256 hex>` form users
already know (docs/compatibility.md), so every process derives the same key."""

from __future__ import annotations

import hashlib

MAX_KEY_BYTES = 512
DIGEST_THRESHOLD = 480
DIGEST_PREFIX = b"memkv-h2:"


def fit_key(key: str | bytes, namespace: str = "") -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    room = MAX_KEY_BYTES - len(namespace.encode("utf-8"))
    if len(raw) > DIGEST_THRESHOLD or len(raw) > room:
        raw = DIGEST_PREFIX + hashlib.blake2b(raw, digest_size=32).hexdigest().encode()
    return raw
