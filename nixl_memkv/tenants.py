"""Tenants: the file a node loads with `--tenants FILE` (and reloads on
SIGHUP), and the credentials `memkv tenant add` makes.

A tenant has a name, its own 32-byte auth key, an S3 access key id and
secret, and optional DRAM and disk quotas. A client that sets MEMKV_TENANT
and that tenant's MEMKV_AUTH_KEY is bound to the tenant's keyspace on every
node that lists it; the cluster key keeps the keyspace it always had. The
file holds secrets: it is written with mode 0600, and nothing here prints a
key except `memkv tenant add`, once, for its new tenant.

    tenants:
      team-a:
        auth_key: 64 hex characters
        s3_access_key: MKAxxxxxxxxxxxxxxxxx
        s3_secret_key: 40 characters
        dram_quota: 8GiB      # optional; absent or 0: no limit
        disk_quota: 100GiB    # optional
"""

from __future__ import annotations

import os
import re
import secrets
import string
import tempfile
from dataclasses import dataclass

import yaml

from .auth import AUTH_KEY_BYTES, parse_auth_key
from .config import format_size, parse_size
from .errors import ConfigError

MAX_TENANT_LEN = 23  # what the handshake carries (docs/protocol.md §2)
TENANT_NAME_FORM = f"1-{MAX_TENANT_LEN} characters of A-Z a-z 0-9 . _ -"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,%d}" % MAX_TENANT_LEN)
_FIELDS = ("auth_key", "s3_access_key", "s3_secret_key", "dram_quota", "disk_quota")
_S3_SECRET = re.compile(r"[A-Za-z0-9/+]{40}")
_S3_ACCESS = re.compile(r"[A-Z0-9]{16,128}")


def tenant_name_ok(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


@dataclass(frozen=True)
class Tenant:
    name: str
    auth_key: bytes  # 32 bytes
    s3_access_key: str
    s3_secret_key: str
    dram_quota: int = 0  # bytes; 0: no limit
    disk_quota: int = 0

    def to_yaml(self) -> dict:
        out: dict = {"auth_key": self.auth_key.hex(), "s3_access_key": self.s3_access_key,
                     "s3_secret_key": self.s3_secret_key}
        if self.dram_quota:
            out["dram_quota"] = format_size(self.dram_quota) if _exact(self.dram_quota) else self.dram_quota
        if self.disk_quota:
            out["disk_quota"] = format_size(self.disk_quota) if _exact(self.disk_quota) else self.disk_quota
        return out

    def credentials(self) -> dict:
        """What `memkv tenant add` prints, once."""
        return {"tenant": self.name, "auth_key": self.auth_key.hex(), "s3_access_key": self.s3_access_key,
                "s3_secret_key": self.s3_secret_key}


def _exact(n: int) -> bool:
    return parse_size(format_size(n), "size") == n


def new_tenant(name: str, *, dram_quota: int = 0, disk_quota: int = 0) -> Tenant:
    """A tenant with fresh credentials (a CSPRNG key, S3 key id and secret)."""
    check_name(name, "tenant name")
    access = "MKA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(17))
    secret = "".join(secrets.choice(string.ascii_letters + string.digits + "/+") for _ in range(40))
    return Tenant(name, secrets.token_bytes(AUTH_KEY_BYTES), access, secret, dram_quota, disk_quota)


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not tenant_name_ok(name):
        raise ConfigError(f"{what} {name!r} is not a tenant name: use {TENANT_NAME_FORM}")
    return name


def load_tenants(path: str) -> dict[str, Tenant]:
    """Reads and validates a tenants file; every error names the file, the tenant and the field."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"tenants file {path} does not exist (create it with `memkv tenant add NAME "
                          f"--file {path}`)") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"tenants file {path} cannot be read: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict) or set(doc) - {"tenants"}:
        raise ConfigError(f"tenants file {path}: expected one top-level key `tenants` mapping names to tenants")
    entries = doc.get("tenants") or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"tenants file {path}: `tenants` must map tenant names to their settings")
    out: dict[str, Tenant] = {}
    access_keys: dict[str, str] = {}
    for name, body in entries.items():
        check_name(name, f"tenants file {path}:")
        where = f"tenants file {path}, tenant {name}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping with {', '.join(_FIELDS[:3])}")
        unknown = sorted(set(map(str, body)) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(_FIELDS)})")
        for field in _FIELDS[:3]:
            if field not in body:
                raise ConfigError(f"{where}: missing {field} (`memkv tenant add` writes all three)")
        key = parse_auth_key(body["auth_key"], f"{where}: auth_key")
        access, secret = body["s3_access_key"], body["s3_secret_key"]
        if not isinstance(access, str) or not _S3_ACCESS.fullmatch(access):
            raise ConfigError(f"{where}: s3_access_key must be 16-128 characters of A-Z 0-9")
        if not isinstance(secret, str) or not _S3_SECRET.fullmatch(secret):
            raise ConfigError(f"{where}: s3_secret_key must be 40 characters of A-Z a-z 0-9 / +")
        if access in access_keys:
            raise ConfigError(f"{where}: s3_access_key is also tenant {access_keys[access]}'s; each tenant needs "
                              "its own")
        access_keys[access] = name
        quotas = [parse_size(body.get(q) or 0, f"{where}: {q}") for q in ("dram_quota", "disk_quota")]
        out[name] = Tenant(name, key, access, secret, *quotas)
    return out


def save_tenants(path: str, tenants: dict[str, Tenant]) -> None:
    """Writes the file atomically, readable by its owner only."""
    doc = {"tenants": {name: t.to_yaml() for name, t in sorted(tenants.items())}}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tenants.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("# MemKV tenants: edited by `memkv tenant add|remove`; a node reloads it on SIGHUP.\n")
            yaml.safe_dump(doc, f, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def native_specs(tenants: dict[str, Tenant]) -> list[tuple[str, bytes, int, int, str, str]]:
    """What NativeNode.set_tenants takes."""
    return [(t.name, t.auth_key, t.dram_quota, t.disk_quota, t.s3_access_key, t.s3_secret_key)
            for t in tenants.values()]


def load_or_empty(path: str) -> dict[str, Tenant]:
    """For `memkv tenant add`: a file that does not exist yet has no tenants."""
    return load_tenants(path) if os.path.exists(path) else {}


def describe(t: Tenant) -> dict:
    """A tenant without its secrets (`memkv tenant list`)."""
    return {"tenant": t.name, "s3_access_key": t.s3_access_key,
            "dram_quota": format_size(t.dram_quota) if t.dram_quota else None,
            "disk_quota": format_size(t.disk_quota) if t.disk_quota else None}


