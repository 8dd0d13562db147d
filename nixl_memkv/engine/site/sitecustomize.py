"""Put on PYTHONPATH by nixl_memkv.engine.cpu_compat.environment_with_stand_in:
applies the torchvision stand-in in every interpreter started with it, then
runs the sitecustomize this one shadows, if the installation has one."""

import importlib.machinery
import importlib.util
import os
import sys

from nixl_memkv.engine.cpu_compat import stand_in_for_cuda_torchvision

stand_in_for_cuda_torchvision()

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _here])
if _spec is not None and _spec.loader is not None:
    _shadowed = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_shadowed)
