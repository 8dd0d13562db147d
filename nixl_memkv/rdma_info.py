"""`memkv rdma-info`: the RDMA devices this host shows, their ports, state,
MTU and GIDs, as MEMKV_RDMA_DEVICES and --rdma-devices name them.

The facts come from pyverbs (rdma-core's Python binding) when it can be
imported: installed in this environment, or Debian/Ubuntu's
python3-pyverbs when it was built for this interpreter's ABI. PyPI's pyverbs
is an sdist that builds all of rdma-core, so it is not a dependency. Without
pyverbs the same facts are read from sysfs (/sys/class/infiniband), with the
active MTU derived from the port's network device.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from typing import Any

SYSFS = "/sys/class/infiniband"
_DIST_PACKAGES = ("/usr/lib/python3/dist-packages",)
_PORT_STATES = {1: "DOWN", 2: "INIT", 3: "ARMED", 4: "ACTIVE", 5: "ACTIVE_DEFER"}
_MTUS = {1: 256, 2: 512, 3: 1024, 4: 2048, 5: 4096}
_LINK_LAYERS = {0: "unspecified", 1: "InfiniBand", 2: "Ethernet"}


def load_pyverbs():
    """The pyverbs package, or None. Debian's copy is taken only when its
    extension modules carry this interpreter's ABI suffix."""
    try:
        import pyverbs  # noqa: F401
        return sys.modules["pyverbs"]
    except ImportError:
        pass
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ""
    for base in _DIST_PACKAGES:
        pkg = os.path.join(base, "pyverbs")
        if not os.path.isfile(os.path.join(pkg, "device" + suffix)):
            continue
        spec = importlib.util.spec_from_file_location("pyverbs", os.path.join(pkg, "__init__.py"),
                                                      submodule_search_locations=[pkg])
        module = importlib.util.module_from_spec(spec)
        sys.modules["pyverbs"] = module
        try:
            spec.loader.exec_module(module)
            import pyverbs.device  # noqa: F401  (its extension must load too)
        except Exception:  # noqa: BLE001 (a broken copy is the same as none)
            for name in [m for m in sys.modules if m == "pyverbs" or m.startswith("pyverbs.")]:
                del sys.modules[name]
            continue
        return module
    return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _gid_rows(dev: str, port: int, gids: list[tuple[int, str]]) -> list[dict]:
    rows = []
    for index, gid in gids:
        if not gid or set(gid.replace(":", "")) == {"0"}:
            continue
        base = f"{SYSFS}/{dev}/ports/{port}/gid_attrs"
        rows.append({"index": index, "gid": gid, "type": _read(f"{base}/types/{index}") or "IB",
                     "netdev": _read(f"{base}/ndevs/{index}")})
    return rows


def _sysfs_gids(dev: str, port: int) -> list[tuple[int, str]]:
    d = f"{SYSFS}/{dev}/ports/{port}/gids"
    try:
        names = sorted(os.listdir(d), key=int)
    except OSError:
        return []
    return [(int(n), _read(f"{d}/{n}")) for n in names]


def _netdev_mtu(gids: list[dict]) -> int | None:
    """The largest IB MTU that fits the port's network device (RoCE)."""
    for g in gids:
        if g["netdev"]:
            mtu = _read(f"/sys/class/net/{g['netdev']}/mtu")
            if mtu.isdigit():
                fits = [m for m in _MTUS.values() if m + 100 <= int(mtu)]  # headers: GRH/UDP/IP/BTH
                return max(fits) if fits else 256
    return None


def describe_sysfs() -> list[dict]:
    out = []
    try:
        devices = sorted(os.listdir(SYSFS))
    except OSError:
        return out
    for dev in devices:
        ports = []
        try:
            port_names = sorted(os.listdir(f"{SYSFS}/{dev}/ports"), key=int)
        except OSError:
            port_names = []
        for p in port_names:
            port = int(p)
            base = f"{SYSFS}/{dev}/ports/{port}"
            gids = _gid_rows(dev, port, _sysfs_gids(dev, port))
            state = _read(f"{base}/state")  # "4: ACTIVE"
            ports.append({"port": port, "state": state.split(":", 1)[-1].strip() or "unknown",
                          "link_layer": _read(f"{base}/link_layer") or "unknown", "active_mtu": _netdev_mtu(gids),
                          "gids": gids})
        out.append({"name": dev, "node_guid": _read(f"{SYSFS}/{dev}/node_guid"), "ports": ports})
    return out


def describe_pyverbs(pyverbs) -> list[dict]:
    import pyverbs.device as d
    from pyverbs.pyverbs_error import PyverbsError

    out = []
    try:
        devices = d.get_device_list()
    except PyverbsError:
        return out
    for dev in devices:
        name = dev.name.decode()
        with d.Context(name=name) as ctx:
            attr = ctx.query_device()
            ports = []
            for port in range(1, attr.phys_port_cnt + 1):
                pa = ctx.query_port(port)
                gids = []
                for i in range(pa.gid_tbl_len):
                    try:
                        gids.append((i, str(ctx.query_gid(port, i))))
                    except PyverbsError:
                        continue
                ports.append({"port": port, "state": _PORT_STATES.get(pa.state, str(pa.state)),
                              "link_layer": _LINK_LAYERS.get(pa.link_layer, str(pa.link_layer)),
                              "active_mtu": _MTUS.get(pa.active_mtu), "gids": _gid_rows(name, port, gids)})
        guid = _read(f"{SYSFS}/{name}/node_guid") or dev.guid
        out.append({"name": name, "node_guid": guid, "ports": ports})
    return out


def describe(source: str = "auto") -> tuple[str, list[dict]]:
    """(source used: "pyverbs" or "sysfs", devices)."""
    if source in ("auto", "pyverbs"):
        pv = load_pyverbs()
        if pv is not None:
            return "pyverbs", describe_pyverbs(pv)
        if source == "pyverbs":
            raise RuntimeError("pyverbs cannot be imported here: install rdma-core's python3-pyverbs "
                               "(Debian/Ubuntu) for this Python, or use --source sysfs")
    return "sysfs", describe_sysfs()


def usable_summary(devices: list[dict[str, Any]]) -> list[str]:
    """Devices with an active port: what MEMKV_RDMA_DEVICES can name."""
    return [d["name"] for d in devices if any(p["state"] == "ACTIVE" for p in d["ports"])]
