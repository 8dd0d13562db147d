"""Test environment only: sglang's imports reach torchvision.transforms, and
PyPI's torchvision 0.28.0 is a CUDA build whose operator registrations fail
against the CPU torch this machine runs. Nothing here uses torchvision's
operators, so its registrations module is stood in for before any import."""

import sys
import types

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
