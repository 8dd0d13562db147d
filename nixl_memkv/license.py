"""Signed MemKV license files: issue them with an Ed25519 key, verify them against trusted keys.

A license file is UTF-8 text::

    -----BEGIN MEMKV LICENSE-----
    <base64 of the JSON payload>
    -----END MEMKV LICENSE-----
    -----BEGIN MEMKV SIGNATURE-----
    <base64 of the Ed25519 signature over the exact payload bytes>
    -----END MEMKV SIGNATURE-----

The payload holds: format (1), license_id (uuid4), licensee, plan,
issued_at and expires_at (ISO-8601 UTC with "Z"), max_nodes (0 = unlimited)
and issuer_key_id (first 16 hex of SHA-256 of the issuer's raw public key).

The signature covers the decoded payload bytes as they stand, so verifying
never re-serialises JSON. Issuing writes canonical JSON (sorted keys, no
spaces) so the same inputs always give the same payload bytes.

Every failure raises LicenseError with a message that says which check
failed and how to fix it (including bad arguments to `issue_license`, so
the CLI can catch a single error type).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import LicenseError

__all__ = [
    "LICENSE_FORMAT",
    "CLOCK_SKEW",
    "License",
    "generate_issuer_key",
    "load_private_key",
    "issuer_public_key",
    "key_id",
    "issue_license",
    "verify_license",
    "load_trusted_pubkeys",
]

LICENSE_FORMAT = 1
# How far ahead of our clock issued_at may be before we call the license "not yet valid".
CLOCK_SKEW = timedelta(minutes=5)

_PAYLOAD_LABEL = "MEMKV LICENSE"
_SIGNATURE_LABEL = "MEMKV SIGNATURE"
_BLOCK_RE = re.compile(r"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", re.S)
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
# A real license is well under 1 KiB; this only stops us reading a wrong, huge file.
_MAX_FILE_BYTES = 1 << 20
_NO_LICENSE = (
    "no license configured: set MEMKV_LICENSE to the license file path "
    "(issue one with `memkv license issue`)"
)
_NO_PUBKEY = (
    "no trusted license key configured: set MEMKV_LICENSE_PUBKEY to the issuer's "
    "public key (64 hex characters) or to a file holding it"
)


@dataclass(frozen=True)
class License:
    """A verified license."""

    license_id: str
    licensee: str
    plan: str
    issued_at: datetime  # timezone-aware, UTC
    expires_at: datetime  # timezone-aware, UTC
    max_nodes: int  # 0 = unlimited
    issuer_key_id: str


# --------------------------------------------------------------------------
# Keys.


def key_id(pubkey_hex: str) -> str:
    """First 16 hex of SHA-256 of the raw 32-byte public key: names a key without showing it."""
    return hashlib.sha256(bytes.fromhex(pubkey_hex)).hexdigest()[:16]


def _raw_public_hex(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def generate_issuer_key() -> tuple[bytes, str]:
    """A new issuer key pair: (private key as unencrypted PKCS#8 PEM, public key as 64 hex)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, _raw_public_hex(private.public_key())


def _private_key_from_pem(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        # cryptography raises TypeError when the PEM is password-protected.
        raise LicenseError(f"{where} is encrypted; expected an unencrypted Ed25519 private key PEM") from None
    except (ValueError, UnsupportedAlgorithm):
        raise LicenseError(f"{where} is not a PEM private key; expected an Ed25519 private key PEM") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LicenseError(f"{where} is a {type(key).__name__}; expected an Ed25519 private key")
    return key


def load_private_key(path: str | os.PathLike) -> bytes:
    """Read an issuer private key file and return its PEM bytes, checked to be Ed25519."""
    path = os.path.expanduser(os.fspath(path))
    try:
        with open(path, "rb") as fh:
            pem = fh.read(_MAX_FILE_BYTES)
    except FileNotFoundError:
        raise LicenseError(f"issuer private key file {path} not found") from None
    except OSError as exc:
        raise LicenseError(f"cannot read issuer private key file {path}: {exc.strerror or exc}") from None
    _private_key_from_pem(pem, f"issuer private key file {path}")
    return pem


def issuer_public_key(private_key_pem: bytes) -> str:
    """The 64-hex public key that verifies licenses signed with this private key."""
    return _raw_public_hex(_private_key_from_pem(private_key_pem, "the issuer private key").public_key())


def load_trusted_pubkeys(spec: str | None) -> list[str]:
    """Trusted issuer public keys (lowercase 64 hex) from a MEMKV_LICENSE_PUBKEY-style spec.

    `spec` is 64 hex characters, or a path to a file that holds either a PEM
    public key or hex keys one per line (blank lines and ``#`` comments are
    ignored; several keys allow rotating the issuer). None or "" gives [].
    """
    if spec is None or not str(spec).strip():
        return []
    text = os.fspath(spec).strip()
    if _HEX64.fullmatch(text):
        return [text.lower()]
    path = os.path.expanduser(text)
    named = f"MEMKV_LICENSE_PUBKEY file {path}"
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_FILE_BYTES)
    except FileNotFoundError:
        raise LicenseError(
            f"MEMKV_LICENSE_PUBKEY={text!r} is neither 64 hex characters (an Ed25519 public key) "
            "nor an existing key file"
        ) from None
    except OSError as exc:
        raise LicenseError(f"cannot read {named}: {exc.strerror or exc}") from None
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LicenseError(f"{named} is not text; expected a PEM public key or hex keys, one per line") from None

    if "-----BEGIN" in content:
        if "PRIVATE KEY" in content:
            # Handing the private key to every node would let any node issue licenses.
            raise LicenseError(f"{named} holds a private key; give the issuer's public key instead")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise LicenseError(f"{named} is not a valid PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise LicenseError(f"{named} holds a {type(key).__name__}; expected an Ed25519 public key")
        return [_raw_public_hex(key)]

    keys: list[str] = []
    for number, line in enumerate(content.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not _HEX64.fullmatch(line):
            raise LicenseError(
                f"{named}, line {number}, is not valid: expected 64 hex characters (an Ed25519 public key)"
            )
        if line.lower() not in keys:
            keys.append(line.lower())
    if not keys:
        raise LicenseError(f"{named} holds no keys; expected a PEM public key or hex keys, one per line")
    return keys


# --------------------------------------------------------------------------
# Issuing.


def _utc(moment: datetime, what: str) -> datetime:
    if not isinstance(moment, datetime):
        raise LicenseError(f"{what} must be a datetime, not {type(moment).__name__}")
    # A naive datetime is taken as UTC: licenses only ever speak UTC.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _armor(label: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    # 64-character lines, as in PEM, keep the file friendly to email and editors.
    lines = [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def issue_license(
    private_key_pem: bytes,
    *,
    licensee: str,
    plan: str,
    expires_at: datetime,
    max_nodes: int = 0,
    now: datetime | None = None,
) -> str:
    """Sign a new license and return the file text.

    Times are truncated to whole seconds; naive datetimes are taken as UTC.
    """
    key = _private_key_from_pem(private_key_pem, "the issuer private key")
    if not isinstance(licensee, str) or not licensee.strip():
        raise LicenseError("licensee must be a non-empty name")
    if not isinstance(plan, str) or not plan.strip():
        raise LicenseError("plan must be a non-empty name such as 'enterprise' or 'developer'")
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 0:
        raise LicenseError(f"max_nodes must be an integer >= 0 (0 = unlimited), not {max_nodes!r}")
    issued = _utc(now if now is not None else datetime.now(timezone.utc), "now").replace(microsecond=0)
    expires = _utc(expires_at, "expires_at").replace(microsecond=0)
    if expires <= issued:
        raise LicenseError(
            f"expires_at {_format_time(expires)} is not after the issue time {_format_time(issued)}"
        )
    payload = {
        "format": LICENSE_FORMAT,
        "license_id": str(uuid.uuid4()),
        "licensee": licensee.strip(),
        "plan": plan.strip(),
        "issued_at": _format_time(issued),
        "expires_at": _format_time(expires),
        "max_nodes": max_nodes,
        "issuer_key_id": key_id(_raw_public_hex(key.public_key())),
    }
    payload_bytes = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signature = key.sign(payload_bytes)
    return _armor(_PAYLOAD_LABEL, payload_bytes) + _armor(_SIGNATURE_LABEL, signature)


# --------------------------------------------------------------------------
# Verifying.


def _read_license_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise LicenseError(
            f"license file {path} not found: check MEMKV_LICENSE (issue one with `memkv license issue`)"
        ) from None
    except OSError as exc:
        raise LicenseError(f"cannot read license file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise LicenseError(f"license file {path} is malformed: it is far too large to be a license")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LicenseError(f"license file {path} is malformed: it is not UTF-8 text") from None


def _decode_block(blocks: list[tuple[str, str]], label: str, malformed) -> bytes:
    bodies = [body for name, body in blocks if name == label]
    if len(bodies) != 1:
        what = "has no" if not bodies else "has more than one"
        raise malformed(f"it {what} -----BEGIN {label}----- block")
    try:
        return base64.b64decode("".join(bodies[0].split()), validate=True)
    except (binascii.Error, ValueError):
        raise malformed(f"the {label} block is not valid base64") from None


def _parse_time(payload: dict, name: str, malformed) -> datetime:
    value = payload[name]
    try:
        if not isinstance(value, str) or not value.endswith("Z"):
            raise ValueError
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise malformed(f"{name} is not an ISO-8601 UTC time such as 2030-01-31T00:00:00Z") from None
    return moment.astimezone(timezone.utc)


def _parse_payload(payload_bytes: bytes, malformed) -> dict:
    try:
        payload = json.loads(payload_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise malformed("the license payload is not valid JSON") from None
    if not isinstance(payload, dict):
        raise malformed("the license payload is not a JSON object")
    required = ("format", "license_id", "licensee", "plan", "issued_at", "expires_at",
                "max_nodes", "issuer_key_id")
    missing = [name for name in required if name not in payload]
    if missing:
        raise malformed(f"the payload lacks {', '.join(missing)}")
    if type(payload["format"]) is not int or payload["format"] != LICENSE_FORMAT:
        raise malformed(f"format {payload['format']!r} is not supported (this MemKV reads format {LICENSE_FORMAT})")
    try:
        if not isinstance(payload["license_id"], str):
            raise ValueError
        uuid.UUID(payload["license_id"])
    except ValueError:
        raise malformed("license_id is not a UUID") from None
    for name in ("licensee", "plan"):
        if not isinstance(payload[name], str) or not payload[name].strip():
            raise malformed(f"{name} is not a non-empty string")
    nodes = payload["max_nodes"]
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 0:
        raise malformed("max_nodes is not an integer >= 0")
    if not isinstance(payload["issuer_key_id"], str) or not _HEX16.fullmatch(payload["issuer_key_id"]):
        raise malformed("issuer_key_id is not 16 lowercase hex characters")
    return payload


def verify_license(
    path: str | os.PathLike | None,
    trusted_pubkeys: Sequence[str],
    *,
    now: datetime | None = None,
) -> License:
    """Check a license file and return what it grants.

    Checks, in order: a path is configured; the file is readable; it is well
    formed; a trusted key is configured; the signature verifies with one of
    the trusted keys; issued_at is not more than CLOCK_SKEW in the future;
    the license has not expired. `now` (naive = UTC) is for tests.
    """
    if path is None or not os.fspath(path).strip():
        raise LicenseError(_NO_LICENSE)
    path = os.path.expanduser(os.fspath(path).strip())
    text = _read_license_text(path)

    def malformed(what: str) -> LicenseError:
        return LicenseError(f"license file {path} is malformed: {what}")

    blocks = [(name, body) for name, body in _BLOCK_RE.findall(text)]
    payload_bytes = _decode_block(blocks, _PAYLOAD_LABEL, malformed)
    signature = _decode_block(blocks, _SIGNATURE_LABEL, malformed)
    if len(signature) != 64:
        raise malformed(f"the signature is {len(signature)} bytes; an Ed25519 signature is 64")
    # Parsing before the signature check only serves clearer messages; nothing
    # from the payload is trusted until the signature verifies below.
    payload = _parse_payload(payload_bytes, malformed)
    issued = _parse_time(payload, "issued_at", malformed)
    expires = _parse_time(payload, "expires_at", malformed)

    # A bare string is a Sequence[str] too; iterating it would give characters.
    keys = [trusted_pubkeys] if isinstance(trusted_pubkeys, str) else list(trusted_pubkeys or [])
    if not keys:
        raise LicenseError(_NO_PUBKEY)
    signer: str | None = None
    for number, key_hex in enumerate(keys, start=1):
        if not isinstance(key_hex, str) or not _HEX64.fullmatch(key_hex.strip()):
            raise LicenseError(
                f"trusted license key #{number} is not valid: expected 64 hex characters "
                "(check MEMKV_LICENSE_PUBKEY)"
            )
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex.strip()))
        try:
            public.verify(signature, payload_bytes)
        except InvalidSignature:
            continue
        signer = key_hex.strip().lower()
        break
    if signer is None:
        trusted_ids = ", ".join(key_id(k.strip()) for k in keys)
        raise LicenseError(
            f"license file {path} does not verify: it was tampered or not issued by a trusted key "
            f"(its issuer key id is {payload['issuer_key_id']}; trusted key ids: {trusted_ids})"
        )
    if payload["issuer_key_id"] != key_id(signer):
        # Signed by a trusted key but naming another: an issuing-tool bug, not a valid license.
        raise malformed("issuer_key_id does not match the key that signed it")

    current = _utc(now, "now") if now is not None else datetime.now(timezone.utc)
    who = f"license {payload['license_id']} for {payload['licensee']}"
    if issued > current + CLOCK_SKEW:
        raise LicenseError(
            f"{who} is not valid yet: it was issued at {_format_time(issued)}, after this machine's "
            f"time {_format_time(current)}; check the system clock"
        )
    if current >= expires:
        raise LicenseError(
            f"{who} expired on {_format_time(expires)}: install a renewed license (MEMKV_LICENSE={path})"
        )
    return License(
        license_id=str(payload["license_id"]),
        licensee=payload["licensee"],
        plan=payload["plan"],
        issued_at=issued,
        expires_at=expires,
        max_nodes=payload["max_nodes"],
        issuer_key_id=payload["issuer_key_id"],
    )


def write_throwaway_license(directory: str, licensee: str, plan: str = "developer",
                            days: int = 1) -> tuple[str, str]:
    """Issues a licence from a fresh issuer key into `directory` (demos,
    benchmarks, tests): returns its path and the public key that verifies it."""
    pem, pubkey = generate_issuer_key()
    path = os.path.join(directory, "minio.license")
    with open(path, "w", encoding="utf-8") as f:
        f.write(issue_license(pem, licensee=licensee, plan=plan,
                              expires_at=datetime.now(timezone.utc) + timedelta(days=days)))
    return path, pubkey
