"""Test environment only: sglang's imports reach torchvision.transforms, and
the PyPI torchvision the test command installs is a CUDA build that cannot
import beside the CPU torch (nixl_memkv.engine.cpu_compat says why). Applied
before anything imports torchvision."""

from nixl_memkv.engine.cpu_compat import stand_in_for_cuda_torchvision

stand_in_for_cuda_torchvision()
