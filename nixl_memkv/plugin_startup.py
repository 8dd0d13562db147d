"""What every MemKV plugin does when its host creates it (NIXL backend,
LMCache storage backend, LMCache MP L2 adapter, sglang HiCache backend): the
config chain with the plugin's own parameters on top, the auth-key and
licence checks, transport choice, and the start-up lines operators grep for,
in the documented order (docs/compatibility.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .config import ClientConfig, load_client_config
from .errors import ConfigError, MemKVError
from .license import License, load_trusted_pubkeys, verify_license
from .transport import select_transport

log = logging.getLogger("memkv-client")


@dataclass(frozen=True)
class PluginStart:
    config: ClientConfig
    license: License
    transport: str  # "tcp" or "rdma"

    @property
    def rdma(self) -> bool:
        return self.transport == "rdma"


def ensure_log_handler() -> None:
    """Hosts such as NIXL demos or a bare LMCache process rarely configure
    logging for our logger; the start-up lines must still reach stderr."""
    root = logging.getLogger()
    lg = logging.getLogger("memkv-client")
    if not root.handlers and not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)


def start_plugin(overrides: Mapping[str, Any] | None, *, source: str) -> PluginStart:
    """Loads and checks everything a plugin needs before it opens a connection.
    `source` names where overrides came from in error messages ("backend
    param", "extra_config memkv.")."""
    ensure_log_handler()
    cfg = load_client_config(overrides, overrides_source=source)
    log.info("Creating memkv engine config=%r", cfg)
    if cfg.auth_key is None:
        raise ConfigError(f"no auth key: set MEMKV_AUTH_KEY or the {source} auth_key "
                          "(64 hex characters; generate one with `memkv keygen`)")
    lic = verify_license(cfg.license, load_trusted_pubkeys(cfg.license_pubkey))
    log.info("memkv-client license verified plan=%s licensee=%s expires=%s", lic.plan, lic.licensee,
             lic.expires_at.date().isoformat())
    return PluginStart(cfg, lic, select_transport(cfg))


def register_host_pool(client: Any, buffer: Any, what: str, length: int | None = None) -> bool:
    """Registers an engine's long-lived host pool (LMCache's CPU pool or L1
    arena, sglang's host KV pool) with the client's RDMA rails, so transfers
    from and to it are zero-copy from the first one on. A no-op over TCP; a
    failure (locked-memory limit) leaves transfers on the staged path."""
    if client.transport != "rdma" or buffer is None:
        return False
    try:
        ok = client.register_memory(buffer, length)
    except (MemKVError, ValueError) as exc:
        log.warning("%s stays unregistered for RDMA, so its transfers are staged: %s", what, exc)
        return False
    if ok:
        size = length if length is not None else _nbytes(buffer)
        log.info("%s registered for RDMA (%d bytes): its transfers are zero-copy", what, size)
    return ok


def _nbytes(buffer: Any) -> int:
    if hasattr(buffer, "element_size") and hasattr(buffer, "numel"):
        return buffer.numel() * buffer.element_size()
    return memoryview(buffer).nbytes


def split_plugin_options(given: Mapping[str, Any], own: Mapping[str, Callable[[str, Any], Any]], *,
                         source: str, prefix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a plugin's parameters into client-config overrides and the
    plugin's own options (parsed by `own[name](label, value)`). With a prefix
    (LMCache's "memkv."), keys without it are someone else's and ignored."""
    overrides: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in given.items():
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        if key in own:
            options[key] = own[key](f"{source} {prefix}{key}", value)
        else:
            overrides[key] = value
    return overrides, options
