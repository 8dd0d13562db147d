"""Logging set-up shared by the CLI, the node and the plugins' log lines."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup_logging(level: str | int = "INFO") -> None:
    """Configures the root handler once (plugins leave their host's logging alone)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT)
    else:
        root.setLevel(level)
    logging.getLogger("memkv").setLevel(level)
