"""Choices of model training, importable without torch (the CLI and the study protocol name
them at start-up)."""

from __future__ import annotations

from enum import StrEnum


class Init(StrEnum):
    """Initialisation of a network trained from scratch."""

    DEFAULT = "default"  # PyTorch's Kaiming-uniform convolution init
    NORMAL = "normal"  # every convolution weight from N(0, 1), as the paper
