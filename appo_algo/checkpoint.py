"""Atomic training checkpoints: everything ``--resume`` needs to continue with identical metrics."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


def rng_states() -> dict[str, Any]:
    """Global RNG states of python, numpy and torch (the trainer's own draws are seeded per step)."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``folder/checkpoint.pt`` via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(folder) / CHECKPOINT_NAME
    tmp = path.with_name(f".{CHECKPOINT_NAME}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(folder: str | Path, device: torch.device) -> dict[str, Any]:
    path = Path(folder) / CHECKPOINT_NAME
    if not path.exists():
        raise ValueError(f"no checkpoint at {path}: --resume needs the log_dir of a run that saved one")
    return torch.load(path, map_location=device, weights_only=False)
