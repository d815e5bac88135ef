"""Checkpoints: the artifact-compatible ``{"state_dict", "config", "meta"}`` format, read,
written (atomically) and turned back into a network.

``config`` records the architecture (name and hyperparameters), the input (crop, grid spacing,
HU window) and the label names, so a model can be rebuilt and used without its training code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lvtl.data.crops import HU_WINDOW
from lvtl.errors import ArtifactError, ConfigError
from lvtl.io.atomic import atomic_path
from lvtl.labels import NAMES
from lvtl.model.network import LVNet4d

if TYPE_CHECKING:  # for the annotation only; train imports this module
    from lvtl.model.train import TrainConfig


def model_checkpoint(model: torch.nn.Module, train_cfg: TrainConfig, meta: dict) -> dict:
    """The artifact-compatible checkpoint ``{"state_dict", "config", "meta"}`` of ``model``
    trained with ``train_cfg`` (its crop and grid spacing are recorded)."""
    net = getattr(model, "_orig_mod", model)
    return {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "config": {"architecture": {"name": type(net).__name__,
                                    "hyperparameters": dict(net.config)},
                   "input": {"crop_tzyx": list(train_cfg.crop),
                             "spacing_mm": [float(train_cfg.spacing_mm)] * 3,
                             "hu_window": list(HU_WINDOW), "channels": 1},
                   "labels": dict(NAMES)},
        "meta": meta,
    }


def save(obj: dict, path: Path) -> None:
    """``torch.save`` atomically (a crash leaves the previous file)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """``(state_dict, config, meta)`` of a checkpoint file: the format above or a bare state
    dict. Loaded with ``weights_only`` (plain tensors; no code runs); anything else is refused
    with :class:`~lvtl.errors.ArtifactError`."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, ValueError, EOFError,
            TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{path}: refused: not a plain tensor checkpoint "
                            f"(torch.load weights_only: {first})") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: a checkpoint must be a dict, got {type(obj).__name__}")
    if "state_dict" in obj:
        extra = sorted(set(obj) - {"state_dict", "config", "meta"})
        if extra:
            raise ArtifactError(f"{path}: unknown checkpoint key {extra[0]!r}; "
                                "allowed: state_dict, config, meta")
        sd, config, meta = obj["state_dict"], obj.get("config") or {}, obj.get("meta") or {}
    else:
        sd, config, meta = obj, {}, {}
    if not isinstance(sd, dict) or not sd:
        raise ArtifactError(f"{path}: the state dict is empty or not a dict")
    for k, v in sd.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ArtifactError(f"{path}: state dict entry {k!r} is not a named tensor")
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ArtifactError(f"{path}: checkpoint 'config' and 'meta' must be dicts")
    return sd, config, meta


def load_checkpoint_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load the weights of a checkpoint written by training (``best.pt``) into ``model``."""
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return model


def build_model(config: dict, state_dict: dict | None = None) -> torch.nn.Module:
    """The network a checkpoint's (or an artifact manifest's) ``config`` describes, with
    ``state_dict`` loaded when given."""
    arch = config["architecture"]
    if arch.get("name") != "LVNet4d":
        raise ConfigError(f"unsupported architecture {arch.get('name')!r}")
    hp = dict(arch["hyperparameters"])
    hp["blocks_down"] = tuple(hp["blocks_down"])
    model = LVNet4d(**hp)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
