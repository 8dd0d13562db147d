"""The MEMKV NIXL backend's control side, run by the plugin's embedded Python
runtime when NIXL creates a backend (never on the data path): the config
chain with the backend params on top, the licence check, transport choice and
the start-up log lines."""

from __future__ import annotations

import logging

from .config import split_server
from .errors import ConfigError
from .plugin_startup import split_plugin_options, start_plugin
from .transport import log_rails, native_transport_mode, usable_rails

log = logging.getLogger("memkv-client")


def _parse_workers(label: str, text: str) -> int:
    try:
        workers = int(text)
        if not 1 <= workers <= 64:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{label}={text!r} is not valid: expected an integer from 1 to 64") from None
    return workers


def configure_backend(params: dict[str, str]) -> dict:
    """Validates config and licence for create_backend("MEMKV", params)."""
    overrides, options = split_plugin_options(params, {"workers": _parse_workers}, source="backend param")
    workers = options.get("workers", 4)
    started = start_plugin(overrides, source="backend param")
    cfg = started.config
    rails = usable_rails(cfg, started.transport)
    servers = []
    for name in cfg.servers:
        host, port = split_server(name)
        servers.append((name, host, port))
    # The native client (made by the plugin after this returns) maps server i to rail i mod n.
    log_rails(cfg, lambda i: rails[i % len(rails)] if rails else "")
    log.info("MEMKV NIXL backend ready (servers=%s, rdma=%s, workers=%d)", list(cfg.servers), started.rdma, workers)
    return {"servers": servers, "auth_key": cfg.auth_key, "num_connections": cfg.num_connections,
            "connect_timeout_ms": cfg.connect_timeout_ms, "op_timeout_ms": cfg.op_timeout_ms,
            "namespace": cfg.namespace, "tenant": cfg.tenant, "workers": workers, "staging_size_mb": cfg.staging_size_mb,
            "staging_slot_mb": cfg.staging_slot_mb, "gpudirect": cfg.gpudirect == "auto",
            "transport": native_transport_mode(cfg, started.transport), "rdma_devices": ",".join(rails)}
