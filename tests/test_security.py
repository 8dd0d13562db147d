"""Authentication and frame integrity against a real node: wrong or missing
keys, tampered frames, frames replayed on another connection or twice."""

from __future__ import annotations

import struct

import pytest

from nixl_memkv import AuthError, Client, ConfigError
from nixl_memkv._client import _RawSession
from nixl_memkv.auth import generate_auth_key

PUT, GET = 0x01, 0x02
STATUS_OK, STATUS_CHECKSUM = 0, 5


def put_meta(key: bytes, value: bytes) -> bytes:
    return struct.pack("<H", len(key)) + key + struct.pack("<QI", len(value), 0)


def put_frame(s: _RawSession, key: bytes, value: bytes) -> bytes:
    """A PUT as the client sends it: header, metadata, value, then the seal (CRC + MAC)."""
    return s.encode_sealed(PUT, put_meta(key, value), [value])


def test_wrong_key_gets_auth_error_and_no_data(node, client_for):
    client_for([node]).put("secret", b"payload")
    bad = client_for([node], auth_key=generate_auth_key())
    with pytest.raises(AuthError, match="different auth key"):
        bad.get("secret")
    with pytest.raises(AuthError):
        bad.batch_get(["secret"])
    assert node.status()["auth_failures"] >= 1
    assert client_for([node]).get("secret") == b"payload"


def test_missing_key_is_a_config_error(node, monkeypatch):
    monkeypatch.delenv("MEMKV_AUTH_KEY", raising=False)
    with pytest.raises(ConfigError, match="MEMKV_AUTH_KEY"):
        Client(servers=[node.address])


def test_raw_session_round_trip_baseline(node, auth_key):
    s = _RawSession("127.0.0.1", node.port, bytes.fromhex(auth_key))
    s.send_raw(put_frame(s, b"raw", b"hello"))
    assert s.recv_status() == STATUS_OK


def test_tampered_header_closes_connection(node, auth_key, client_for):
    s = _RawSession("127.0.0.1", node.port, bytes.fromhex(auth_key))
    frame = bytearray(put_frame(s, b"tamper", b"hello"))
    frame[64 + 2] ^= 0x01  # the key's first byte (after its u16 length), in the MAC-covered metadata
    errors = node.status()["protocol_errors"]
    s.send_raw(bytes(frame))
    assert s.recv_status() == -1
    # Neither the key that was sealed nor the one the tampered frame names was stored.
    assert client_for([node]).get("tamper") is None
    assert client_for([node]).get(bytes([ord("t") ^ 0x01]) + b"amper") is None
    assert node.status()["protocol_errors"] == errors + 1


def test_tampered_payload_is_rejected_not_stored(node, auth_key, client_for):
    s = _RawSession("127.0.0.1", node.port, bytes.fromhex(auth_key))
    frame = bytearray(put_frame(s, b"payload", b"hello world"))
    frame[-37] ^= 0x20  # last value byte (before its 36-byte seal): covered by the CRC, not a MAC
    s.send_raw(bytes(frame))
    assert s.recv_status() == STATUS_CHECKSUM
    assert client_for([node]).get("payload") is None
    # The connection stays usable: framing was intact.
    s.send_raw(put_frame(s, b"payload", b"hello world"))
    assert s.recv_status() == STATUS_OK


def test_tampered_seal_closes_connection(node, auth_key, client_for):
    s = _RawSession("127.0.0.1", node.port, bytes.fromhex(auth_key))
    frame = bytearray(put_frame(s, b"sealed", b"hello world"))
    frame[-36] ^= 0x01  # the CRC inside the seal: a forged checksum fails the seal's MAC
    s.send_raw(bytes(frame))
    assert s.recv_status() == -1
    assert client_for([node]).get("sealed") is None


def test_frame_replayed_on_another_connection_is_rejected(node, auth_key, client_for):
    key = bytes.fromhex(auth_key)
    a = _RawSession("127.0.0.1", node.port, key)
    b = _RawSession("127.0.0.1", node.port, key)
    frame = put_frame(a, b"replay", b"v1")
    b.send_raw(frame)
    assert b.recv_status() == -1
    assert client_for([node]).get("replay") is None


def test_frame_replayed_on_same_connection_is_rejected(node, auth_key, client_for):
    s = _RawSession("127.0.0.1", node.port, bytes.fromhex(auth_key))
    frame = put_frame(s, b"twice", b"v1")
    s.send_raw(frame)
    assert s.recv_status() == STATUS_OK
    client_for([node]).remove("twice")
    s.send_raw(frame)  # same bytes again: old sequence number
    assert s.recv_status() == -1
    assert client_for([node]).get("twice") is None


def test_reordered_frames_are_rejected(node, auth_key):
    s = _RawSession("127.0.0.1", node.port, bytes.fromhex(auth_key))
    first = put_frame(s, b"o1", b"a")
    second = put_frame(s, b"o2", b"b")
    s.send_raw(second)
    assert s.recv_status() == -1
    del first


def test_garbage_and_non_memkv_peers_are_dropped(node, client_for):
    import socket
    rejected = node.status()["auth_failures"]
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"x" * 100)
        sock.settimeout(5)
        try:
            assert sock.recv(1024) == b""  # closed, nothing leaked
        except ConnectionResetError:  # closed with our junk unread: also a refusal
            pass
    assert node.status()["auth_failures"] == rejected + 1  # refused at the handshake, and counted
    c = client_for([node])  # and the node still serves
    c.put("after-garbage", b"ok")
    assert c.get("after-garbage") == b"ok"


def test_tampered_request_without_values_is_rejected(node, auth_key):
    """Frames that carry no values (GET here) are covered by the header MAC alone."""
    s = _RawSession("127.0.0.1", node.port, bytes.fromhex(auth_key))
    meta = struct.pack("<H", 3) + b"abc" + struct.pack("<QQ", 0, 2**64 - 1)
    s.send_raw(s.encode(GET, meta))
    assert s.recv_status() == 1  # a well-formed GET of a missing key: not found
    frame = bytearray(s.encode(GET, meta))
    frame[8] ^= 0x01  # the sequence number
    s.send_raw(bytes(frame))
    assert s.recv_status() == -1
