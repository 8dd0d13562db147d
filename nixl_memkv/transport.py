"""Transport selection (MEMKV_TRANSPORT): the one place that decides between
RDMA and TCP, shared by the client and every plugin.

- `tcp`: every connection is TCP.
- `rdma`: RDMA or a loud error: MEMKV_RDMA_DEVICES must name devices this
  host shows, this build must carry the RDMA transport, and (checked by the
  native client when it connects) every node must offer RDMA.
- `auto`: RDMA when a device from MEMKV_RDMA_DEVICES is visible, else TCP
  (one log line). With RDMA chosen, each node that offers no RDMA is still
  reached over TCP (one native log line per node).

The decision here is what the control side logs and reports; the native
client then opens the devices and sets up one queue pair per connection.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from . import _client
from .config import ClientConfig
from .errors import ConfigError

log = logging.getLogger("memkv-client")

SYSFS_INFINIBAND = "/sys/class/infiniband"


def visible_rdma_devices(sysfs_root: str = SYSFS_INFINIBAND) -> list[str]:
    try:
        return sorted(os.listdir(sysfs_root))
    except OSError:
        return []


def rdma_unavailable_reason() -> str:
    """Why this process cannot use RDMA at all ("" when it can)."""
    return _client.rdma_build_info()[1]


def select_transport(cfg: ClientConfig, *, sysfs_root: str = SYSFS_INFINIBAND) -> str:
    """Returns the transport the client will use ("tcp" or "rdma")."""
    if cfg.transport == "tcp":
        return "tcp"
    visible = visible_rdma_devices(sysfs_root)
    wanted = list(cfg.rdma_devices)
    usable = [d for d in wanted if d in visible]
    why_not = rdma_unavailable_reason()
    if cfg.transport == "rdma":
        if not wanted:
            raise ConfigError(
                "MEMKV_TRANSPORT=rdma needs MEMKV_RDMA_DEVICES (e.g. mlx5_0,mlx5_1); "
                f"visible devices under {sysfs_root}: {', '.join(visible) or 'none'}")
        missing = [d for d in wanted if d not in visible]
        if missing:
            which = (f"none of MEMKV_RDMA_DEVICES={','.join(wanted)} is visible" if not usable else
                     f"MEMKV_RDMA_DEVICES={','.join(wanted)} names {', '.join(missing)}, which is not visible")
            raise ConfigError(
                f"MEMKV_TRANSPORT=rdma but {which} under {sysfs_root} (visible: {', '.join(visible) or 'none'}); "
                "expose /dev/infiniband to the container, fix the names, or set MEMKV_TRANSPORT=auto to fall back to TCP")
        if why_not:
            raise ConfigError(f"MEMKV_TRANSPORT=rdma: device(s) {', '.join(usable)} are visible but {why_not}; "
                              "or set MEMKV_TRANSPORT=auto to fall back to TCP")
        log.info("transport selected transport=rdma devices=%s", ",".join(usable))
        return "rdma"
    # auto
    if usable and not why_not:
        log.info("transport selected transport=rdma devices=%s", ",".join(usable))
        return "rdma"
    if usable:
        log.info("transport selected transport=tcp (RDMA device(s) %s visible, but %s)", ",".join(usable), why_not)
    else:
        log.info("transport selected transport=tcp (no RDMA device from MEMKV_RDMA_DEVICES=%s visible under %s)",
                 ",".join(wanted) or "<unset>", sysfs_root)
    return "tcp"


def native_transport_mode(cfg: ClientConfig, chosen: str) -> str:
    """What the native client is told: tcp; rdma (every node must offer it);
    auto (RDMA to the nodes that offer it)."""
    if chosen != "rdma":
        return "tcp"
    return "rdma" if cfg.transport == "rdma" else "auto"


def usable_rails(cfg: ClientConfig, chosen: str) -> list[str]:
    """The devices the native client opens as rails (in MEMKV_RDMA_DEVICES order)."""
    if chosen != "rdma":
        return []
    visible = set(visible_rdma_devices())
    return [d for d in cfg.rdma_devices if d in visible] or list(cfg.rdma_devices)


def log_rails(cfg: ClientConfig, device_of: Callable[[int], str]) -> None:
    """The documented start-up line (docs/compatibility.md), one per server,
    naming the device it uses (`device_of(rail)`, "" over TCP)."""
    for rail, name in enumerate(cfg.servers):
        device = device_of(rail)
        if device:
            log.info('Server mapped to rail server="%s" rail=%d device=%s', name, rail, device)
        else:
            log.info('Server mapped to rail server="%s" rail=%d', name, rail)
