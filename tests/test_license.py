"""Tests for signed license files (nixl_memkv.license): real files in tmp_path, real Ed25519 keys."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization

from nixl_memkv.errors import LicenseError
from nixl_memkv.license import (
    License,
    generate_issuer_key,
    issue_license,
    issuer_public_key,
    load_private_key,
    load_trusted_pubkeys,
    verify_license,
)

NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
EXPIRES = datetime(2031, 6, 1, tzinfo=timezone.utc)

# Key generation is cheap, but sharing one pair keeps the module fast and simple.
ISSUER_PEM, ISSUER_PUB = generate_issuer_key()
OTHER_PEM, OTHER_PUB = generate_issuer_key()


def write(tmp_path, text, name="memkv.lic"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def issue(**kw):
    args = dict(licensee="Acme Corp", plan="enterprise", expires_at=EXPIRES, max_nodes=8, now=NOW)
    args.update(kw)
    return issue_license(ISSUER_PEM, **args)


def blocks(text):
    """(payload bytes, signature bytes) of a license file text, decoded here independently."""
    found = dict(re.findall(r"-----BEGIN MEMKV (\w+)-----\n(.*?)\n-----END MEMKV \1-----", text, re.S))
    return (base64.b64decode("".join(found["LICENSE"].split())),
            base64.b64decode("".join(found["SIGNATURE"].split())))


def assemble(payload: bytes, signature: bytes) -> str:
    """A license file from raw parts, per the documented format."""
    return (
        "-----BEGIN MEMKV LICENSE-----\n" + base64.b64encode(payload).decode() + "\n-----END MEMKV LICENSE-----\n"
        "-----BEGIN MEMKV SIGNATURE-----\n" + base64.b64encode(signature).decode() + "\n-----END MEMKV SIGNATURE-----\n"
    )


def signed(payload: bytes, pem: bytes = ISSUER_PEM) -> str:
    """Sign arbitrary payload bytes with an issuer key (to build validly signed malformed files)."""
    key = serialization.load_pem_private_key(pem, password=None)
    return assemble(payload, key.sign(payload))


def verify_error(path, keys=(ISSUER_PUB,), now=NOW) -> str:
    with pytest.raises(LicenseError) as exc:
        verify_license(path, list(keys), now=now)
    return str(exc.value)


# --------------------------------------------------------------------------
# Valid licenses.


def test_valid_license_round_trip(tmp_path):
    path = write(tmp_path, issue())
    lic = verify_license(path, [ISSUER_PUB], now=NOW)
    assert isinstance(lic, License)
    assert (lic.licensee, lic.plan, lic.max_nodes) == ("Acme Corp", "enterprise", 8)
    assert lic.issued_at == NOW and lic.expires_at == EXPIRES
    assert lic.issued_at.tzinfo is not None
    assert uuid.UUID(lic.license_id).version == 4
    assert lic.issuer_key_id == hashlib.sha256(bytes.fromhex(ISSUER_PUB)).hexdigest()[:16]


def test_file_format_and_payload_fields():
    text = issue(max_nodes=0, plan="developer")
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN MEMKV LICENSE-----"
    assert "-----END MEMKV LICENSE-----" in lines
    assert lines[-1] == "-----END MEMKV SIGNATURE-----"
    payload, signature = blocks(text)
    data = json.loads(payload)
    assert data == {
        "format": 1,
        "license_id": data["license_id"],
        "licensee": "Acme Corp",
        "plan": "developer",
        "issued_at": "2030-06-01T12:00:00Z",
        "expires_at": "2031-06-01T00:00:00Z",
        "max_nodes": 0,
        "issuer_key_id": hashlib.sha256(bytes.fromhex(ISSUER_PUB)).hexdigest()[:16],
    }
    # Canonical JSON: sorted keys, no spaces.
    assert payload == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert len(signature) == 64


def test_any_trusted_key_may_verify(tmp_path):
    path = write(tmp_path, issue())
    assert verify_license(path, [OTHER_PUB, ISSUER_PUB.upper()], now=NOW).licensee == "Acme Corp"
    # A single hex string is accepted as one key, not iterated character by character.
    assert verify_license(path, ISSUER_PUB, now=NOW).plan == "enterprise"


def test_default_now_is_the_real_clock(tmp_path):
    text = issue_license(ISSUER_PEM, licensee="x", plan="developer",
                         expires_at=datetime.now(timezone.utc) + timedelta(days=1))
    assert verify_license(write(tmp_path, text), [ISSUER_PUB]).licensee == "x"


def test_clock_skew_tolerance(tmp_path):
    path = write(tmp_path, issue())
    # Issued 4 minutes "in the future" of a slow clock: still fine.
    assert verify_license(path, [ISSUER_PUB], now=NOW - timedelta(minutes=4))
    msg = verify_error(path, now=NOW - timedelta(minutes=10))
    assert "not valid yet" in msg and "2030-06-01T12:00:00Z" in msg and "clock" in msg


def test_issuer_public_key_matches():
    assert issuer_public_key(ISSUER_PEM) == ISSUER_PUB


# --------------------------------------------------------------------------
# Failures, each with its own message.


def test_no_license_configured():
    msg = verify_error(None)
    assert msg == ("no license configured: set MEMKV_LICENSE to the license file path "
                   "(issue one with `memkv license issue`)")


def test_missing_file_names_path(tmp_path):
    path = str(tmp_path / "absent.lic")
    msg = verify_error(path)
    assert path in msg and "not found" in msg


def test_unreadable_file_names_path(tmp_path):
    msg = verify_error(str(tmp_path))  # a directory
    assert str(tmp_path) in msg and "cannot read" in msg


def test_tampered_payload(tmp_path):
    payload, signature = blocks(issue())
    data = json.loads(payload)
    data["max_nodes"] = 0  # try to lift the node limit
    forged = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    msg = verify_error(write(tmp_path, assemble(forged, signature)))
    assert "tampered or not issued by a trusted key" in msg


def test_tampered_payload_whitespace_only(tmp_path):
    # The signature covers exact bytes: even a harmless-looking change breaks it.
    payload, signature = blocks(issue())
    msg = verify_error(write(tmp_path, assemble(payload + b" ", signature)))
    assert "tampered or not issued by a trusted key" in msg


def test_tampered_signature(tmp_path):
    payload, signature = blocks(issue())
    bad = bytes([signature[0] ^ 1]) + signature[1:]
    msg = verify_error(write(tmp_path, assemble(payload, bad)))
    assert "tampered or not issued by a trusted key" in msg


def test_wrong_issuer_key(tmp_path):
    text = issue_license(OTHER_PEM, licensee="Mallory", plan="enterprise", expires_at=EXPIRES, now=NOW)
    msg = verify_error(write(tmp_path, text))
    assert "tampered or not issued by a trusted key" in msg
    other_id = hashlib.sha256(bytes.fromhex(OTHER_PUB)).hexdigest()[:16]
    trusted_id = hashlib.sha256(bytes.fromhex(ISSUER_PUB)).hexdigest()[:16]
    assert other_id in msg and trusted_id in msg


def test_expired(tmp_path):
    path = write(tmp_path, issue())
    msg = verify_error(path, now=EXPIRES + timedelta(seconds=1))
    assert "expired on 2031-06-01T00:00:00Z" in msg and "Acme Corp" in msg
    # Exactly at the expiry instant the license is over.
    assert "expired" in verify_error(path, now=EXPIRES)
    assert verify_license(path, [ISSUER_PUB], now=EXPIRES - timedelta(seconds=1))


def test_no_trusted_key(tmp_path):
    msg = verify_error(write(tmp_path, issue()), keys=())
    assert "MEMKV_LICENSE_PUBKEY" in msg


def test_bad_trusted_key(tmp_path):
    msg = verify_error(write(tmp_path, issue()), keys=("abc",))
    assert "trusted license key #1" in msg and "64 hex" in msg


def _good_payload() -> dict:
    return json.loads(blocks(issue())[0])


@pytest.mark.parametrize("text, fragment", [
    ("", "has no -----BEGIN MEMKV LICENSE----- block"),
    ("hello\n", "has no -----BEGIN MEMKV LICENSE----- block"),
    ("-----BEGIN MEMKV LICENSE-----\nAAAA\n-----END MEMKV LICENSE-----\n",
     "has no -----BEGIN MEMKV SIGNATURE----- block"),
    ("-----BEGIN MEMKV LICENSE-----\n!!notbase64!!\n-----END MEMKV LICENSE-----\n"
     "-----BEGIN MEMKV SIGNATURE-----\nAAAA\n-----END MEMKV SIGNATURE-----\n",
     "LICENSE block is not valid base64"),
    (assemble(b"{}", b"short"), "signature is 5 bytes"),
])
def test_malformed_structure(tmp_path, text, fragment):
    msg = verify_error(write(tmp_path, text))
    assert "malformed" in msg and fragment in msg


def test_malformed_truncated_file(tmp_path):
    text = issue()
    msg = verify_error(write(tmp_path, text[: text.index("-----END MEMKV SIGNATURE")]))
    assert "malformed" in msg and "SIGNATURE" in msg


def test_malformed_not_utf8(tmp_path):
    path = tmp_path / "bin.lic"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "not UTF-8" in verify_error(str(path))


def test_malformed_bad_json(tmp_path):
    msg = verify_error(write(tmp_path, signed(b"{not json")))
    assert "malformed" in msg and "not valid JSON" in msg


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.pop("expires_at"), "lacks expires_at"),
    (lambda d: (d.pop("licensee"), d.pop("plan")), "lacks licensee, plan"),
    (lambda d: d.update(format=2), "format 2 is not supported"),
    (lambda d: d.update(max_nodes=-1), "max_nodes"),
    (lambda d: d.update(max_nodes="8"), "max_nodes"),
    (lambda d: d.update(expires_at="next year"), "expires_at is not an ISO-8601"),
    (lambda d: d.update(issued_at="2030-06-01T12:00:00"), "issued_at is not an ISO-8601"),
    (lambda d: d.update(license_id="abc"), "license_id is not a UUID"),
    (lambda d: d.update(licensee=""), "licensee"),
])
def test_malformed_fields(tmp_path, change, fragment):
    data = _good_payload()
    change(data)
    msg = verify_error(write(tmp_path, signed(json.dumps(data).encode())))
    assert "malformed" in msg and fragment in msg


def test_payload_not_an_object(tmp_path):
    assert "not a JSON object" in verify_error(write(tmp_path, signed(b"[1, 2]")))


def test_issuer_key_id_must_match_signer(tmp_path):
    data = _good_payload()
    data["issuer_key_id"] = "0" * 16
    msg = verify_error(write(tmp_path, signed(json.dumps(data).encode())))
    assert "issuer_key_id does not match" in msg


# --------------------------------------------------------------------------
# Issuing.


def test_issue_rejects_bad_arguments():
    with pytest.raises(LicenseError, match="not after the issue time"):
        issue(expires_at=NOW - timedelta(days=1))
    with pytest.raises(LicenseError, match="max_nodes"):
        issue(max_nodes=-1)
    with pytest.raises(LicenseError, match="licensee"):
        issue(licensee=" ")
    with pytest.raises(LicenseError, match="not a PEM private key"):
        issue_license(b"nonsense", licensee="a", plan="b", expires_at=EXPIRES, now=NOW)


def test_naive_datetimes_are_utc(tmp_path):
    text = issue(now=NOW.replace(tzinfo=None), expires_at=EXPIRES.replace(tzinfo=None))
    lic = verify_license(write(tmp_path, text), [ISSUER_PUB], now=NOW.replace(tzinfo=None))
    assert lic.issued_at == NOW and lic.expires_at == EXPIRES


# --------------------------------------------------------------------------
# Keys from files.


def test_load_private_key(tmp_path):
    path = tmp_path / "issuer.pem"
    path.write_bytes(ISSUER_PEM)
    assert load_private_key(str(path)) == ISSUER_PEM
    with pytest.raises(LicenseError, match="not found"):
        load_private_key(str(tmp_path / "nope.pem"))
    path.write_text("not a key")
    with pytest.raises(LicenseError, match="not a PEM private key"):
        load_private_key(str(path))


def test_load_trusted_pubkeys_hex_and_none():
    assert load_trusted_pubkeys(None) == []
    assert load_trusted_pubkeys("") == []
    assert load_trusted_pubkeys(ISSUER_PUB.upper()) == [ISSUER_PUB]


def test_load_trusted_pubkeys_hex_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"# current issuer\n{ISSUER_PUB}\n\n{OTHER_PUB.upper()}  # old issuer\n{ISSUER_PUB}\n")
    assert load_trusted_pubkeys(str(path)) == [ISSUER_PUB, OTHER_PUB]


def test_load_trusted_pubkeys_pem_file(tmp_path):
    public = serialization.load_pem_private_key(ISSUER_PEM, password=None).public_key()
    path = tmp_path / "issuer.pub.pem"
    path.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert load_trusted_pubkeys(str(path)) == [ISSUER_PUB]


def test_load_trusted_pubkeys_errors(tmp_path):
    with pytest.raises(LicenseError, match="neither 64 hex characters .* nor an existing key file"):
        load_trusted_pubkeys(str(tmp_path / "missing.pub"))
    private = tmp_path / "private.pem"
    private.write_bytes(ISSUER_PEM)
    with pytest.raises(LicenseError, match="holds a private key"):
        load_trusted_pubkeys(str(private))
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{ISSUER_PUB}\nnot-a-key\n")
    with pytest.raises(LicenseError, match="line 2"):
        load_trusted_pubkeys(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    with pytest.raises(LicenseError, match="holds no keys"):
        load_trusted_pubkeys(str(empty))


def test_end_to_end_with_key_file(tmp_path):
    keys = tmp_path / "trusted.txt"
    keys.write_text(ISSUER_PUB + "\n")
    path = write(tmp_path, issue())
    lic = verify_license(path, load_trusted_pubkeys(str(keys)), now=NOW)
    assert lic.max_nodes == 8
