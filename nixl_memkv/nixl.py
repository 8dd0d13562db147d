"""Finding libplugin_MEMKV.so from NIXL.

NIXL loads backends by file name from ONE plugin directory: its own
(`.nixl_cu12.mesonpy.libs/plugins` in the PyPI wheel), or NIXL_PLUGIN_DIR,
which *replaces* it (read once, when the first agent is created). To use
MEMKV beside NIXL's built-in backends (UCX, POSIX, OBJ, ...), either

* `use_with_nixl()` (or `export NIXL_PLUGIN_DIR=$(memkv plugin-dir --with-nixl)`):
  a directory of symlinks to NIXL's plugins plus ours, nothing installed; or
* `install_into_nixl()` (`memkv plugin-install`): a symlink to our plugin in
  NIXL's own plugin directory (what Dynamo's bind mount of the .so does).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import tempfile
import uuid

from .errors import ConfigError

PLUGIN_FILE = "libplugin_MEMKV.so"


def plugin_dir() -> str:
    """The folder that holds libplugin_MEMKV.so."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")


def plugin_path() -> str:
    path = os.path.join(plugin_dir(), PLUGIN_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"{path} is missing: reinstall nixl-memkv (pip install .) to build the NIXL plugin")
    return path


def nixl_default_plugin_dir() -> str | None:
    """NIXL's own plugin directory in the installed wheel (cu12 preferred, as we import nixl_cu12)."""
    for pkg in ("nixl_cu12", "nixl_cu13"):
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.origin:
            continue
        site = os.path.dirname(os.path.dirname(spec.origin))
        d = os.path.join(site, f".{pkg}.mesonpy.libs", "plugins")
        if os.path.isdir(d):
            return d
    return None


def _link(src: str, link: str) -> None:
    if os.path.islink(link) and os.readlink(link) == src:
        return
    tmp = f"{link}.{uuid.uuid4().hex}.tmp"
    os.symlink(src, tmp)
    os.replace(tmp, link)  # atomic, so concurrent processes agree


def _private_dir(path: str) -> str:
    """Creates `path` (mode 0700) or checks that an existing one is ours and
    not writable by others: NIXL will load whatever .so files it holds."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if os.path.islink(path) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ConfigError(f"{path} is not a private directory of this user; remove it or set XDG_CACHE_HOME")
    return path


def merged_plugin_dir(nixl_dir: str | None = None, cache_root: str | None = None) -> str:
    """A plugin directory with every NIXL plugin plus MEMKV (created once, reused).

    NIXL's plugins find their libraries through $ORIGIN/.. and
    $ORIGIN/../../nixl_cu12.libs, so the merged directory mirrors that
    layout with symlinks: <base>/libs/plugins/ beside <base>/libs/*.so and
    <base>/nixl_cu12.libs."""
    nixl_dir = nixl_dir or nixl_default_plugin_dir()
    if nixl_dir is None:
        raise ConfigError("NIXL is not installed (pip install nixl-cu12), so there are no built-in plugins to merge")
    ours = plugin_path()
    libs_dir = os.path.dirname(nixl_dir)
    tag = hashlib.sha256(f"{nixl_dir}|{ours}".encode()).hexdigest()[:12]
    root = cache_root or os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    try:
        memkv_dir = _private_dir(os.path.join(root, "memkv"))
    except OSError:
        memkv_dir = _private_dir(os.path.join(tempfile.gettempdir(), f"memkv-{os.getuid()}"))
    base = os.path.join(memkv_dir, f"nixl-plugins-{tag}")
    target = os.path.join(base, "libs", "plugins")
    os.makedirs(target, mode=0o700, exist_ok=True)
    for old in os.listdir(target):  # plugins a NIXL upgrade removed
        p = os.path.join(target, old)
        if os.path.islink(p) and not os.path.exists(p):
            os.unlink(p)
    for lib in glob.glob(os.path.join(libs_dir, "*.so*")):
        _link(lib, os.path.join(base, "libs", os.path.basename(lib)))
    for sibling in glob.glob(os.path.join(os.path.dirname(libs_dir), "nixl_cu1*.libs")):
        _link(sibling, os.path.join(base, os.path.basename(sibling)))
    for plugin in glob.glob(os.path.join(nixl_dir, "*.so")):
        _link(plugin, os.path.join(target, os.path.basename(plugin)))
    _link(ours, os.path.join(target, PLUGIN_FILE))
    return target


def use_with_nixl() -> str:
    """Points NIXL_PLUGIN_DIR at the merged directory; call before creating the first NIXL agent."""
    d = merged_plugin_dir()
    os.environ["NIXL_PLUGIN_DIR"] = d
    return d


def install_into_nixl(nixl_dir: str | None = None) -> str:
    """Symlinks libplugin_MEMKV.so into NIXL's plugin directory; returns the link path."""
    nixl_dir = nixl_dir or nixl_default_plugin_dir()
    if nixl_dir is None:
        raise ConfigError("NIXL's plugin directory was not found: pip install nixl-cu12, or pass --nixl-dir")
    link = os.path.join(nixl_dir, PLUGIN_FILE)
    _link(plugin_path(), link)
    return link
