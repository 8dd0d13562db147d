"""The MemKV configuration chain, shared by the node, the Python client and every plugin.

Client settings (`load_client_config`), highest precedence first:

1. overrides passed in by the caller: NIXL backend params, LMCache or sglang
   ``extra_config``, or the keyword arguments of ``Client(...)``;
2. the YAML file named by ``MEMKV_CONFIG``;
3. ``MEMKV_*`` environment variables;
4. the defaults on `ClientConfig`.

Note that the YAML file beats the environment. The integration guides say
"MEMKV_CONFIG yaml first, then MEMKV_* env vars" (docs/compatibility.md), so a deployment's config
file stays authoritative over whatever a container image happens to export.

Node settings (`load_node_config`) use the same order: CLI flags, then the
``node:`` section of the YAML file (plus its top-level ``auth_key``, shared
with clients), then ``MEMKV_*`` variables, then the defaults on `NodeConfig`.

Rules shared by every source:

- A value that is None or an empty (or all-blank) string counts as unset, so
  the next source down is consulted. An empty env var therefore counts as
  unset, and a CLI flag that was not given (None) does too.
- Values may be strings (env vars, plugin params) or native types (YAML,
  Python callers): ``"8"`` and ``8`` are both fine for an integer, and
  ``"a:1,b:2"`` and ``["a:1", "b:2"]`` are both fine for a list.
- Only the value that wins is validated; a bad value shadowed by a
  higher-precedence source does no harm.
- Relative paths in the YAML file (``license``, ``license_pubkey``,
  ``node.data_dir``) are relative to the YAML file's folder; elsewhere they
  are relative to the working directory. ``~`` is expanded everywhere.
- Every bad value raises `ConfigError` naming where it came from and the
  accepted form. The auth key is never echoed in any message or repr.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from dataclasses import MISSING, dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping

import yaml

from .auth import AUTH_KEY_BYTES, AUTH_KEY_FORM, parse_auth_key
from .errors import ConfigError

__all__ = [
    "DEFAULT_PORT",
    "TRANSPORTS",
    "FSYNC_MODES",
    "LOG_LEVELS",
    "ClientConfig",
    "NodeConfig",
    "load_client_config",
    "load_node_config",
    "resolve_disk_capacity",
    "parse_size",
    "format_size",
    "split_server",
    "format_server",
]

DEFAULT_PORT = 9900
TRANSPORTS = ("auto", "rdma", "tcp")
GPUDIRECT_MODES = ("auto", "off")
FSYNC_MODES = ("always", "interval", "never")
ADMIN_AUTH_MODES = ("local", "key", "none")  # see nixl_memkv.admin
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_ENV_PREFIX = "MEMKV_"
_CONFIG_ENV = "MEMKV_CONFIG"
_NODE_SECTION = "node"

_SERVERS_FORM = (
    "a comma-separated list of host:port "
    f"(port 1-65535, default {DEFAULT_PORT}; IPv6 as [::1]:{DEFAULT_PORT})"
)
_DEVICES_FORM = "a comma-separated list of RDMA device names such as mlx5_0,mlx5_1"
_SIZE_FORM = "a size in bytes such as 1048576, 512MiB, 4GiB or 1.5GB"
_PUBKEY_FORM = "64 hex characters (an Ed25519 public key) or a path to a key file"


# --------------------------------------------------------------------------
# Where a value came from, so errors can name it.


@dataclass(frozen=True)
class _Source:
    label: str  # e.g. "MEMKV_PORT", "port in /etc/memkv.yaml", "backend param port", "--port"
    base_dir: str | None = None  # relative paths resolve against this (the YAML file's folder)

    def invalid(self, value: object, expected: str, detail: str | None = None,
                *, secret: bool = False) -> ConfigError:
        if secret:
            # Secrets are named, never shown.
            shown = self.label
        else:
            # "MEMKV_X='v'" reads well; "x in /p.yaml='v'" does not, so pad labels with spaces.
            sep = " = " if " " in self.label else "="
            shown = f"{self.label}{sep}{_show(value)}"
        why = f" ({detail})" if detail else ""
        return ConfigError(f"{shown} is not valid{why}: expected {expected}")


def _show(value: object) -> str:
    text = repr(value)
    # A pasted blob should not flood the log line.
    return text if len(text) <= 100 else text[:97] + "..."


def _is_unset(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _where(src: _Source | None) -> str:
    return src.label if src is not None else "the default"


# --------------------------------------------------------------------------
# Value parsers: each takes (raw value, source) and returns the typed value.

_Parser = Callable[[Any, _Source], Any]


def _as_int(value: object) -> int | None:
    # bool is an int subclass, but `num_connections: true` is a mistake.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        return int(value)
    return None


def _int_parser(lo: int, hi: int | None = None) -> _Parser:
    if hi is not None:
        expected = f"an integer from {lo} to {hi}"
    elif lo == 1:
        expected = "a positive integer"
    else:
        expected = f"an integer of at least {lo}"

    def parse(value: object, src: _Source) -> int:
        n = _as_int(value)
        if n is None or n < lo or (hi is not None and n > hi):
            raise src.invalid(value, expected)
        return n

    return parse


def _choice_parser(options: tuple[str, ...], *, upper: bool = False,
                   aliases: Mapping[str, str] | None = None) -> _Parser:
    expected = "one of " + ", ".join(options)

    def parse(value: object, src: _Source) -> str:
        if not isinstance(value, str):
            raise src.invalid(value, expected)
        text = value.strip()
        text = text.upper() if upper else text.lower()
        text = (aliases or {}).get(text, text)
        if text not in options:
            raise src.invalid(value, expected)
        return text

    return parse


def _split_list(value: object, src: _Source, expected: str) -> list[str]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
        if not all(isinstance(item, str) for item in items):
            raise src.invalid(value, expected, "every entry must be a string")
    else:
        raise src.invalid(value, expected)
    # Blank entries (a trailing comma, "a,,b") are dropped rather than rejected.
    return [item.strip() for item in items if item.strip()]


def split_server(entry: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``host[:port]`` or ``[ipv6][:port]`` into (host, port).

    Raises ValueError with the reason; callers wrap it in a ConfigError that
    names the source.
    """
    text = entry.strip()
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{entry!r} has '[' without a closing ']'")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{entry!r} has unexpected text after ']'")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        # "fe80::1:9900" is ambiguous; brackets say where the address ends.
        raise ValueError(f"{entry!r} looks like a bare IPv6 address; write it as [address]:port")
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            port_text = None
    if not host:
        raise ValueError(f"{entry!r} has an empty host")
    if any(ch.isspace() or ch in "[]/," for ch in host):
        raise ValueError(f"{entry!r} has an invalid host")
    if port_text is None:
        return host, default_port
    if not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise ValueError(f"the port of {entry!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} of {entry!r} is out of range")
    return host, port


def format_server(host: str, port: int) -> str:
    """The canonical ``host:port`` text (IPv6 addresses in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_servers(value: object, src: _Source) -> tuple[str, ...]:
    servers: list[str] = []
    for item in _split_list(value, src, _SERVERS_FORM):
        try:
            canonical = format_server(*split_server(item))
        except ValueError as exc:
            raise src.invalid(value, _SERVERS_FORM, str(exc)) from None
        # Keys route by hashing over this list, so a repeated server would
        # silently take twice its share: refuse it.
        if canonical in servers:
            raise src.invalid(value, _SERVERS_FORM, f"{canonical} is listed twice")
        servers.append(canonical)
    return tuple(servers)


def _parse_devices(value: object, src: _Source) -> tuple[str, ...]:
    devices = _split_list(value, src, _DEVICES_FORM)
    for dev in devices:
        if any(ch.isspace() for ch in dev):
            raise src.invalid(value, _DEVICES_FORM, f"{dev!r} contains a space")
    return tuple(dict.fromkeys(devices))  # repeated devices add nothing; keep first order


def _parse_path(value: object, src: _Source) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise src.invalid(value, "a file system path")
    path = os.path.expanduser(value.strip())
    if src.base_dir is not None and not os.path.isabs(path):
        path = os.path.join(src.base_dir, path)
    return path


def _parse_pubkey(value: object, src: _Source) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        return value.strip().lower()
    if not isinstance(value, (str, os.PathLike)):
        raise src.invalid(value, _PUBKEY_FORM)
    # Anything else is a path; the license module reads and checks the file.
    return _parse_path(value, src)


def _parse_key(value: object, src: _Source) -> bytes:
    # Python callers may hand over the raw 32 bytes instead of hex.
    if isinstance(value, (bytes, bytearray)):
        if len(value) != AUTH_KEY_BYTES:
            raise src.invalid(value, AUTH_KEY_FORM, f"got {len(value)} bytes", secret=True)
        return bytes(value)
    if not isinstance(value, str):
        raise src.invalid(value, AUTH_KEY_FORM, f"got a {type(value).__name__}", secret=True)
    return parse_auth_key(value, src.label)


def _parse_namespace(value: object, src: _Source) -> str:
    if not isinstance(value, str):
        raise src.invalid(value, "a string (the key prefix)")
    return value.strip()


def _parse_tenant(value: object, src: _Source) -> str:
    from .tenants import TENANT_NAME_FORM, tenant_name_ok

    name = value.strip() if isinstance(value, str) else value
    if not isinstance(name, str) or (name and not tenant_name_ok(name)):
        raise src.invalid(value, TENANT_NAME_FORM + " (or empty for the cluster key)")
    return name


def _parse_host(value: object, src: _Source) -> str:
    expected = "a host name or IP address to listen on, such as 0.0.0.0 or ::"
    if not isinstance(value, str):
        raise src.invalid(value, expected)
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # allow "[::]" as written in server lists
    if not host or any(ch.isspace() or ch in "[]/," for ch in host):
        raise src.invalid(value, expected)
    return host


def _parse_node_id(value: object, src: _Source) -> str:
    expected = "1 to 128 printable characters without spaces"
    if not isinstance(value, str):
        raise src.invalid(value, expected)
    text = value.strip()
    if len(text) > 128 or not text.isprintable() or any(ch.isspace() for ch in text):
        raise src.invalid(value, expected)
    return text


def _size_parser(*, allow_zero: bool) -> _Parser:
    def parse(value: object, src: _Source) -> int:
        n = _parse_size(value, src)
        if n == 0 and not allow_zero:
            raise src.invalid(value, _SIZE_FORM, "it must be more than 0")
        return n

    return parse


# --------------------------------------------------------------------------
# Sizes.

# Single letters and "Ki"-style suffixes are binary (as in dd, docker and
# the JVM); "KB"/"MB"/"GB" are decimal, "KiB"/"MiB"/"GiB" binary.
_SIZE_UNITS = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgtp", start=1):
    _SIZE_UNITS[_letter] = 1024 ** _i
    _SIZE_UNITS[_letter + "i"] = 1024 ** _i
    _SIZE_UNITS[_letter + "ib"] = 1024 ** _i
    _SIZE_UNITS[_letter + "b"] = 1000 ** _i
del _i, _letter

_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")


def _parse_size(value: object, src: _Source) -> int:
    if isinstance(value, bool):
        raise src.invalid(value, _SIZE_FORM)
    if isinstance(value, int):
        if value < 0:
            raise src.invalid(value, _SIZE_FORM, "it is negative")
        return value
    if isinstance(value, float):
        # YAML turns "1.5e9" into a float; accept it when it is a real size.
        if value != value or value in (float("inf"), float("-inf")) or value < 0:
            raise src.invalid(value, _SIZE_FORM)
        return int(value)
    if not isinstance(value, str):
        raise src.invalid(value, _SIZE_FORM)
    match = _SIZE_RE.fullmatch(value)
    if not match:
        raise src.invalid(value, _SIZE_FORM)
    unit = _SIZE_UNITS.get(match.group(2).lower())
    if unit is None:
        raise src.invalid(value, _SIZE_FORM, f"unknown unit {match.group(2)!r}")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        raise src.invalid(value, _SIZE_FORM) from None
    # Decimal keeps "1.5GB" exact; a fractional byte is rounded down.
    return int(number * unit)


def parse_size(text: str | int, source: str) -> int:
    """Parse a byte count such as ``"4GiB"``, ``"512MiB"``, ``"1.5GB"`` or ``"1048576"``.

    Binary units: KiB/MiB/GiB/TiB/PiB, also written Ki/Mi/Gi or K/M/G.
    Decimal units: KB/MB/GB/TB/PB. Case-insensitive; a space before the unit
    is fine. `source` names the setting for the ConfigError.
    """
    return _parse_size(text, _Source(source))


def format_size(n: int) -> str:
    """Human-readable binary size, e.g. ``4GiB``, ``1.5GiB``, ``512MiB``, ``100B``.

    The output is accepted by `parse_size` (rounded to two decimals).
    """
    if n < 0:
        return "-" + format_size(-n)
    for unit, factor in (("PiB", 1024 ** 5), ("TiB", 1024 ** 4), ("GiB", 1024 ** 3),
                         ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= factor:
            text = f"{n / factor:.2f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{n}B"


# --------------------------------------------------------------------------
# The config objects.


def _render(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else "''"
    return str(value)


def _render_block(title: str, redacted: Mapping[str, object]) -> str:
    return title + " {" + ", ".join(f"{k}={_render(v)}" for k, v in redacted.items()) + "}"


@dataclass(frozen=True, repr=False)
class ClientConfig:
    """Settings of a MemKV client (the Python client and every plugin)."""

    servers: tuple[str, ...]  # canonical "host:port"; IPv6 as "[::1]:9900"
    auth_key: bytes | None  # the 32-byte HMAC key
    transport: str = "auto"  # auto | rdma | tcp
    rdma_devices: tuple[str, ...] = ()
    license: str | None = None  # path to the license file
    license_pubkey: str | None = None  # 64 hex, or a path to a key file
    staging_size_mb: int = 256
    staging_slot_mb: int = 16  # 1 <= slot <= staging_size_mb
    registration_cache_mb: int = 1024  # RDMA: reused Python buffers registered on second use; 0 = off
    gpudirect: str = "auto"  # NIXL VRAM_SEG over RDMA: auto (GPUDirect when it registers) | off (always staged)
    num_connections: int = 4  # per server, 1..256
    connect_timeout_ms: int = 5000
    op_timeout_ms: int = 30000
    namespace: str = ""  # key prefix
    tenant: str = ""  # the tenant whose key auth_key is; "" = the cluster key

    def redacted(self) -> dict:
        """Every field, safe to log: the auth key shows only as "<set>" or "<unset>"."""
        out: dict[str, object] = {}
        for f in fields(self):
            if f.name == "dram_capacity_source":
                continue
            value = getattr(self, f.name)
            if f.name == "auth_key":
                value = "<set>" if value is not None else "<unset>"
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        # "PluginConfig {" is the prefix our log tooling looks for.
        return _render_block("PluginConfig", self.redacted())


def usable_memory_bytes() -> int | None:
    """Physical RAM, capped by a cgroup memory limit when one is set (None:
    sysconf cannot tell)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = -1
    if total <= 0:
        return None
    limit = _cgroup_memory_limit()
    if limit is not None and 0 < limit < total:
        total = limit
    return total


def _default_dram_capacity() -> int:
    """25% of usable memory (a cgroup limit counts).

    Without the cgroup cap, a node in a container limited to a few GiB on a
    big host would size its cache from the host's RAM and be OOM-killed.
    """
    total = usable_memory_bytes() or 4 * 1024 ** 3  # sysconf unavailable: assume a modest 4 GiB machine
    return total // 4


def dram_capacity_warning(cfg: "NodeConfig") -> str | None:
    """Why a DRAM tier larger than this machine's (or cgroup's) memory will
    fail, naming the setting it came from; None when it fits."""
    usable = usable_memory_bytes()
    if usable is None or cfg.dram_capacity <= usable:
        return None
    where = cfg.dram_capacity_source or "dram_capacity"
    return (f"DRAM tier {format_size(cfg.dram_capacity)} (from {where}) is larger than the memory this node can "
            f"use ({format_size(usable)}: RAM, or the cgroup limit when lower): it is killed for lack of memory "
            f"once the tier fills; give at most {format_size(usable * 3 // 4)} or so")


def _cgroup_memory_limit() -> int | None:
    # cgroup v2 first, then v1; "max" or a huge v1 number means no limit.
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text.isdigit():
            return int(text)
        return None
    return None


@dataclass(frozen=True, repr=False, kw_only=True)
class NodeConfig:
    """Settings of a MemKV node (`memkv server`)."""

    data_dir: str
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    admin_port: int | None = None  # None: port + 1
    dram_capacity: int = field(default_factory=_default_dram_capacity)  # bytes
    disk_capacity: int | None = None  # bytes; None: 80% of free space at start; 0: DRAM only
    fsync: str = "interval"  # always | interval | never
    fsync_interval_ms: int = 1000
    max_connections: int = 10000
    admin_auth: str = "local"  # who may read /v1/status: local | key | none (nixl_memkv.admin)
    io_timeout_ms: int = 60000  # a client silent this long mid-message (handshake, frame, value) is dropped
    rdma_devices: tuple[str, ...] = ()  # RDMA devices served to clients that ask; empty: TCP only
    tenants: str | None = None  # tenants file (nixl_memkv.tenants); None: the cluster key only
    s3_port: int | None = None  # the S3 door (tenants' S3 credentials); None: no door
    auth_key: bytes
    node_id: str | None = None  # None: generated and persisted by the node
    log_level: str = "INFO"
    # Where dram_capacity came from ("--dram-capacity", "MEMKV_DRAM_CAPACITY", ...), for warnings.
    dram_capacity_source: str | None = field(default=None, compare=False)

    @property
    def effective_admin_port(self) -> int:
        return self.admin_port if self.admin_port is not None else self.port + 1

    def redacted(self) -> dict:
        """Every field, safe to log: the auth key shows only as "<set>"."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "auth_key":
                value = "<set>" if value is not None else "<unset>"
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        return _render_block("NodeConfig", self.redacted())


# --------------------------------------------------------------------------
# The chain.

_CLIENT_PARSERS: dict[str, _Parser] = {
    "servers": _parse_servers,
    "auth_key": _parse_key,
    "transport": _choice_parser(TRANSPORTS),
    "rdma_devices": _parse_devices,
    "license": _parse_path,
    "license_pubkey": _parse_pubkey,
    "staging_size_mb": _int_parser(1),
    "staging_slot_mb": _int_parser(1),
    "registration_cache_mb": _int_parser(0),
    "gpudirect": _choice_parser(GPUDIRECT_MODES),
    "num_connections": _int_parser(1, 256),
    "connect_timeout_ms": _int_parser(1),
    "op_timeout_ms": _int_parser(1),
    "namespace": _parse_namespace,
    "tenant": _parse_tenant,
}

_NODE_PARSERS: dict[str, _Parser] = {
    "data_dir": _parse_path,
    "host": _parse_host,
    "port": _int_parser(1, 65535),
    "admin_port": _int_parser(1, 65535),
    "dram_capacity": _size_parser(allow_zero=False),
    "disk_capacity": _size_parser(allow_zero=True),
    "fsync": _choice_parser(FSYNC_MODES),
    "fsync_interval_ms": _int_parser(1),
    "max_connections": _int_parser(1),
    "io_timeout_ms": _int_parser(100),
    "admin_auth": _choice_parser(ADMIN_AUTH_MODES),
    "rdma_devices": _parse_devices,
    "tenants": _parse_path,
    "s3_port": _int_parser(0, 65535),
    "auth_key": _parse_key,
    "node_id": _parse_node_id,
    "log_level": _choice_parser(LOG_LEVELS, upper=True, aliases={"WARN": "WARNING"}),
}

# Keys allowed in the node: section (auth_key is top level, shared with clients).
_NODE_SECTION_KEYS = tuple(k for k in _NODE_PARSERS if k != "auth_key")
# Keys allowed at the top level of the YAML file, which both loaders share.
_TOP_LEVEL_KEYS = tuple(_CLIENT_PARSERS) + (_NODE_SECTION,)
# CLI-only override: the CLI may hand over the key file's path instead of the key.
_AUTH_KEY_FILE = "auth_key_file"


def _check_keys(mapping: Mapping[Any, object], known: tuple[str, ...], what: str) -> None:
    """Reject unknown keys, naming the key, the known ones and a likely intended one."""
    for key in mapping:
        if isinstance(key, str) and key in known:
            continue
        hint = ""
        if isinstance(key, str):
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
        raise ConfigError(
            f"unknown {what} {key!r}{hint}: known keys are {', '.join(sorted(known))}"
        )


def _read_yaml(env: Mapping[str, str]) -> tuple[dict, str | None]:
    """The parsed MEMKV_CONFIG file (or {} when unset) and its path."""
    raw = env.get(_CONFIG_ENV)
    if _is_unset(raw):
        return {}, None
    path = os.path.expanduser(raw.strip())
    named = f"{_CONFIG_ENV}={path!r}"
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{named}: no such file; expected the path of a YAML config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{named}: the file is not UTF-8 text; expected a YAML config file") from None
    except OSError as exc:
        raise ConfigError(
            f"{named}: cannot read it ({exc.strerror or exc}); expected a readable YAML config file"
        ) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # str(exc) quotes the offending line, which may hold the auth key;
        # report only the problem and its position.
        problem = getattr(exc, "problem", None) or "syntax error"
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{named} is not valid YAML: {problem}{where}") from None
    if doc is None:
        return {}, path  # an empty file sets nothing
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{named} is not valid: expected a YAML mapping of settings "
            f"(servers: ..., auth_key: ...), got a {type(doc).__name__}"
        )
    return doc, path


def _pick(parser: _Parser, candidates: list[tuple[object, _Source]]) -> tuple[Any, _Source | None]:
    """Parse the first set value among candidates (highest precedence first)."""
    for value, src in candidates:
        if not _is_unset(value):
            return parser(value, src), src
    return None, None


def _env_name(name: str) -> str:
    return _ENV_PREFIX + name.upper()


def load_client_config(
    overrides: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    require_servers: bool = True,
    overrides_source: str = "backend param",
    override_labels: Mapping[str, str] | None = None,
    servers_hint: str | None = None,
) -> ClientConfig:
    """Build a ClientConfig from overrides > MEMKV_CONFIG YAML > MEMKV_* env > defaults.

    `env` defaults to os.environ; pass ``{}`` to ignore the environment (and
    MEMKV_CONFIG) entirely, e.g. for ``Client(servers=..., auth_key=...)``.
    `overrides_source` is how errors name an override key (``"backend param"``
    gives "backend param num_connections"; LMCache might pass "extra_config").
    `override_labels` names single overrides as the user typed them (the CLI
    passes ``{"servers": "--servers"}``); `servers_hint` is how the "no
    servers" error says to give them through the caller (default: the
    override key).
    """
    override_labels = dict(override_labels or {})
    env = os.environ if env is None else env
    overrides = dict(overrides or {})
    doc, yaml_path = _read_yaml(env)
    if yaml_path is not None:
        _check_keys(doc, _TOP_LEVEL_KEYS, f"key in {yaml_path}")
    _check_keys(overrides, tuple(_CLIENT_PARSERS), overrides_source)
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path)) if yaml_path else None

    values: dict[str, Any] = {}
    sources: dict[str, _Source | None] = {}
    # servers and auth_key have no dataclass default: unset means empty / None.
    defaults = {"servers": (), "auth_key": None}
    defaults.update({f.name: f.default for f in fields(ClientConfig) if f.default is not MISSING})
    for name, parser in _CLIENT_PARSERS.items():
        candidates = [
            (overrides.get(name), _Source(override_labels.get(name, f"{overrides_source} {name}"))),
            (doc.get(name), _Source(f"{name} in {yaml_path}", base_dir=yaml_dir)),
            (env.get(_env_name(name)), _Source(_env_name(name))),
        ]
        value, src = _pick(parser, candidates)
        values[name] = value if src is not None else defaults[name]
        sources[name] = src

    if require_servers and not values["servers"]:
        raise ConfigError(
            f"no servers configured: set MEMKV_SERVERS, servers in MEMKV_CONFIG, "
            f"or {servers_hint or f'the {overrides_source} servers'}; expected {_SERVERS_FORM}"
        )
    if values["staging_slot_mb"] > values["staging_size_mb"]:
        raise ConfigError(
            f"staging_slot_mb={values['staging_slot_mb']} (from {_where(sources['staging_slot_mb'])}) "
            f"is larger than staging_size_mb={values['staging_size_mb']} "
            f"(from {_where(sources['staging_size_mb'])}): expected 1 <= staging_slot_mb <= staging_size_mb"
        )
    return ClientConfig(**values)


def _read_key_file(value: object) -> bytes:
    label = "--auth-key-file"
    path = _parse_path(value, _Source(label))
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{label} {path!r}: no such file; expected a file holding {AUTH_KEY_FORM}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{label} {path!r}: cannot read it ({reason}); expected a file holding {AUTH_KEY_FORM}") from None
    return parse_auth_key(text, f"{label} {path!r}")


def load_node_config(
    overrides: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Build a NodeConfig from CLI flags > YAML (`node:` section) > MEMKV_* env > defaults.

    `overrides` are the CLI flags by field name; None means "flag not given".
    Besides the field names it accepts ``auth_key_file``: a path whose
    contents are the hex key (the CLI's ``--auth-key-file``).
    """
    env = os.environ if env is None else env
    overrides = dict(overrides or {})
    doc, yaml_path = _read_yaml(env)
    section: Mapping[Any, object] = {}
    if yaml_path is not None:
        _check_keys(doc, _TOP_LEVEL_KEYS, f"key in {yaml_path}")
        section = doc.get(_NODE_SECTION) or {}
        if not isinstance(section, dict):
            raise ConfigError(
                f"{_NODE_SECTION} in {yaml_path} is not valid: expected a mapping of node settings "
                f"({', '.join(_NODE_SECTION_KEYS)}), got a {type(section).__name__}"
            )
        _check_keys(section, _NODE_SECTION_KEYS, f"key in the {_NODE_SECTION}: section of {yaml_path}")
    _check_keys(overrides, tuple(_NODE_PARSERS) + (_AUTH_KEY_FILE,), "option")
    yaml_dir = os.path.dirname(os.path.abspath(yaml_path)) if yaml_path else None

    key_file = overrides.pop(_AUTH_KEY_FILE, None)
    if not _is_unset(key_file):
        if not _is_unset(overrides.get("auth_key")):
            raise ConfigError("give either --auth-key-file or an auth key option, not both")
        overrides["auth_key"] = _read_key_file(key_file)

    values: dict[str, Any] = {}
    sources: dict[str, _Source | None] = {}
    for name, parser in _NODE_PARSERS.items():
        if name == "auth_key":
            yaml_value, yaml_label = doc.get(name), f"{name} in {yaml_path}"
        else:
            yaml_value, yaml_label = section.get(name), f"{_NODE_SECTION}.{name} in {yaml_path}"
        candidates = [
            (overrides.get(name), _Source("--" + name.replace("_", "-"))),
            (yaml_value, _Source(yaml_label, base_dir=yaml_dir)),
            (env.get(_env_name(name)), _Source(_env_name(name))),
        ]
        value, src = _pick(parser, candidates)
        if src is not None:
            values[name] = value  # unset fields keep the dataclass default
        sources[name] = src

    if "data_dir" not in values:
        raise ConfigError(
            "no data directory configured: pass --data-dir, set MEMKV_DATA_DIR, "
            "or set data_dir under node: in MEMKV_CONFIG"
        )
    if "auth_key" not in values:
        raise ConfigError(
            "no auth key configured: set MEMKV_AUTH_KEY, auth_key in MEMKV_CONFIG, "
            f"or pass --auth-key-file; expected {AUTH_KEY_FORM}"
        )
    if sources["dram_capacity"] is not None:
        values["dram_capacity_source"] = sources["dram_capacity"].label
    cfg = NodeConfig(**values)
    if cfg.admin_port is None and cfg.port == 65535:
        raise ConfigError(
            f"port=65535 (from {_where(sources['port'])}) leaves no room for the default admin port "
            "(port + 1): expected a lower port, or set the admin port explicitly"
        )
    if cfg.effective_admin_port == cfg.port:
        raise ConfigError(
            f"admin port {cfg.admin_port} (from {_where(sources['admin_port'])}) is the same as the "
            f"data port (from {_where(sources['port'])}): expected two different ports"
        )
    return cfg


def resolve_disk_capacity(cfg: NodeConfig) -> int:
    """The disk budget in bytes: the configured one, or 80% of free space under data_dir.

    data_dir may not exist yet on first start, so the nearest existing parent
    stands in for it (it is on the same file system unless a mount intervenes).
    """
    if cfg.disk_capacity is not None:
        return cfg.disk_capacity
    probe = os.path.abspath(cfg.data_dir)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return shutil.disk_usage(probe).free * 8 // 10



def client_setting_names() -> frozenset[str]:
    """The client settings a plugin's own parameters may override."""
    return frozenset(_CLIENT_PARSERS)
