"""Logging set-up shared by the command line and the child processes it starts."""

from __future__ import annotations

import logging


def setup_logging(verbose: bool = False) -> None:
    """Warnings from libraries, INFO (DEBUG with ``verbose``) from hf_finetune, one timestamped format."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.WARNING
    )
    logging.getLogger("hf_finetune").setLevel(logging.DEBUG if verbose else logging.INFO)
