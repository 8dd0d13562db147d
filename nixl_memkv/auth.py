"""The cluster-wide auth key: parse, generate and fingerprint it.

Every op on the wire is HMAC-authenticated with one 32-byte key shared by all
nodes and clients, written as 64 hex characters (`MEMKV_AUTH_KEY`). The key is
a secret, so nothing in this module puts the key, or any part of it, into a
message; `fingerprint` gives a short value that is safe to log instead.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from .errors import ConfigError

__all__ = [
    "AUTH_KEY_BYTES",
    "AUTH_KEY_FORM",
    "parse_auth_key",
    "generate_auth_key",
    "fingerprint",
]

AUTH_KEY_BYTES = 32
# The accepted form, quoted in every error so the user knows how to fix it.
AUTH_KEY_FORM = "64 hex characters (32 bytes); generate one with `memkv keygen`"

_HEX = re.compile(r"[0-9a-fA-F]*")


def parse_auth_key(text: str, source: str) -> bytes:
    """Decode a 64-hex-character key to 32 bytes.

    `source` names where the text came from (e.g. ``MEMKV_AUTH_KEY``) and is
    the only thing the error quotes: the text itself may be a real key with a
    typo, so it is never echoed.
    """
    if not isinstance(text, str):
        detail = f"got a {type(text).__name__}, not text"
    else:
        # Keys read from files or `$(cat key)` often carry a trailing newline.
        stripped = text.strip()
        if not _HEX.fullmatch(stripped):
            detail = "it contains characters that are not hex digits"
        elif len(stripped) != 2 * AUTH_KEY_BYTES:
            detail = f"got {len(stripped)} characters"
        else:
            return bytes.fromhex(stripped)
    raise ConfigError(f"{source} is not valid ({detail}): expected {AUTH_KEY_FORM}")


def generate_auth_key() -> str:
    """A fresh random key as 64 lowercase hex characters."""
    return secrets.token_hex(AUTH_KEY_BYTES)


def fingerprint(key: bytes) -> str:
    """First 8 hex characters of SHA-256 of the key.

    Lets operators check that two machines hold the same key without either
    log revealing it (32 bits of a hash say nothing useful about 256 bits of
    key).
    """
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"fingerprint() takes the key bytes, not {type(key).__name__}")
    return hashlib.sha256(bytes(key)).hexdigest()[:8]
