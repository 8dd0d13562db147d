"""Transport selection (MEMKV_TRANSPORT): the one place that decides between
RDMA and TCP, shared by the client and every plugin.

`auto` takes RDMA only when a device named in MEMKV_RDMA_DEVICES is visible,
else TCP (logged once); `rdma` fails loudly naming the devices it looked for.
This build carries the TCP data path; RDMA devices are detected, but the
RDMA data path is not built yet, so a visible device is reported and TCP used
(`auto`) or refused with that reason (`rdma`).
"""

from __future__ import annotations

import logging
import os

from .config import ClientConfig
from .errors import ConfigError

log = logging.getLogger("memkv-client")

SYSFS_INFINIBAND = "/sys/class/infiniband"
RDMA_DATA_PATH_BUILT = False


def visible_rdma_devices(sysfs_root: str = SYSFS_INFINIBAND) -> list[str]:
    try:
        return sorted(os.listdir(sysfs_root))
    except OSError:
        return []


def select_transport(cfg: ClientConfig, *, sysfs_root: str = SYSFS_INFINIBAND) -> str:
    """Returns the transport the client will use ("tcp" or "rdma")."""
    if cfg.transport == "tcp":
        return "tcp"
    visible = visible_rdma_devices(sysfs_root)
    wanted = list(cfg.rdma_devices)
    usable = [d for d in wanted if d in visible]
    if cfg.transport == "rdma":
        if not wanted:
            raise ConfigError(
                "MEMKV_TRANSPORT=rdma needs MEMKV_RDMA_DEVICES (e.g. mlx5_0,mlx5_1); "
                f"visible devices under {sysfs_root}: {visible or 'none'}")
        if not usable:
            raise ConfigError(
                f"MEMKV_TRANSPORT=rdma but none of MEMKV_RDMA_DEVICES={','.join(wanted)} is visible under "
                f"{sysfs_root} (visible: {', '.join(visible) or 'none'}); expose /dev/infiniband to the "
                "container or set MEMKV_TRANSPORT=auto to fall back to TCP")
        if not RDMA_DATA_PATH_BUILT:
            raise ConfigError(
                f"MEMKV_TRANSPORT=rdma: device(s) {', '.join(usable)} are visible but this build has no RDMA "
                "data path yet; use MEMKV_TRANSPORT=auto or tcp")
        return "rdma"
    # auto
    if usable and RDMA_DATA_PATH_BUILT:
        log.info("transport selected transport=rdma devices=%s", ",".join(usable))
        return "rdma"
    if usable:
        log.info("transport selected transport=tcp (RDMA device(s) %s visible, RDMA data path not in this build)",
                 ",".join(usable))
    else:
        log.info("transport selected transport=tcp (no RDMA device from MEMKV_RDMA_DEVICES=%s visible under %s)",
                 ",".join(wanted) or "<unset>", sysfs_root)
    return "tcp"
