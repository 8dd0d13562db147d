"""The MEMKV NIXL backend's control side, run by the plugin's embedded Python
runtime when NIXL creates a backend (never on the data path): the config
chain with the backend params on top, the licence check, transport choice and
the start-up log lines."""

from __future__ import annotations

import logging

from .config import load_client_config, split_server
from .errors import ConfigError
from .license import load_trusted_pubkeys, verify_license
from .transport import select_transport

log = logging.getLogger("memkv-client")

# Params the plugin understands besides the client config keys.
PLUGIN_PARAMS = ("workers",)


def _ensure_log_handler() -> None:
    # Hosts such as NIXL demos rarely configure logging; the start-up lines
    # operators look for must still reach stderr.
    root = logging.getLogger()
    lg = logging.getLogger("memkv-client")
    if not root.handlers and not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)


def configure_backend(params: dict[str, str]) -> dict:
    """Validates config and licence for create_backend("MEMKV", params)."""
    _ensure_log_handler()
    overrides = {k: v for k, v in params.items() if k not in PLUGIN_PARAMS}
    workers_text = params.get("workers") or "4"
    try:
        workers = int(workers_text)
        if not 1 <= workers <= 64:
            raise ValueError
    except ValueError:
        raise ConfigError(f"backend param workers={workers_text!r} is not valid: expected an integer from 1 to 64") \
            from None
    cfg = load_client_config(overrides, overrides_source="backend param")
    log.info("Creating memkv engine config=%r", cfg)
    if cfg.auth_key is None:
        raise ConfigError("no auth key: set MEMKV_AUTH_KEY or the backend param auth_key "
                          "(64 hex characters; generate one with `memkv keygen`)")
    lic = verify_license(cfg.license, load_trusted_pubkeys(cfg.license_pubkey))
    log.info("memkv-client license verified plan=%s licensee=%s expires=%s", lic.plan, lic.licensee,
             lic.expires_at.date().isoformat())
    transport = select_transport(cfg)
    servers = []
    for rail, name in enumerate(cfg.servers):
        host, port = split_server(name)
        servers.append((name, host, port))
        log.info('Server mapped to rail server="%s" rail=%d', name, rail)
    log.info("MEMKV NIXL backend ready (servers=%s, rdma=%s, workers=%d)", list(cfg.servers),
             transport == "rdma", workers)
    return {"servers": servers, "auth_key": cfg.auth_key, "num_connections": cfg.num_connections,
            "connect_timeout_ms": cfg.connect_timeout_ms, "op_timeout_ms": cfg.op_timeout_ms,
            "namespace": cfg.namespace, "workers": workers, "staging_size_mb": cfg.staging_size_mb,
            "staging_slot_mb": cfg.staging_slot_mb}
