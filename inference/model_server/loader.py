"""Finding and loading the TorchScript model named by MODEL_PATH.

MODEL_PATH is what the operator fetched: a TorchScript file (``torch.jit.save``), or a directory
holding one. In a directory, ``model.pt`` wins; otherwise it must hold exactly one ``*.pt``,
``*.pth`` or ``*.torchscript`` file, so that a model is never picked by accident.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import torch

MODEL_SUFFIXES = (".pt", ".pth", ".torchscript")
PREFERRED_NAME = "model.pt"


class ModelLoadError(Exception):
    """The model cannot be served; the message says which file and why."""


def find_model_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelLoadError(f"MODEL_PATH {path} does not exist")
    preferred = path / PREFERRED_NAME
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ModelLoadError(f"MODEL_PATH {path} holds no {PREFERRED_NAME} nor any *.pt, *.pth or *.torchscript file")
    names = ", ".join(p.name for p in candidates)
    raise ModelLoadError(f"MODEL_PATH {path} holds several model files ({names}); name one, or call it {PREFERRED_NAME}")


def wait_for_path(path: Path, wait_seconds: float, on_wait: Callable[[str], None], stop: threading.Event) -> None:
    """Waits up to ``wait_seconds`` for ``path`` to appear, or until ``stop`` is set; returns at
    once when it exists."""
    deadline = time.monotonic() + wait_seconds
    while not path.exists() and time.monotonic() < deadline:
        on_wait(f"waiting for MODEL_PATH {path} to appear")
        if stop.wait(0.2):
            raise ModelLoadError("the server stopped before MODEL_PATH appeared")


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    model_file = find_model_file(path)
    try:
        module = torch.jit.load(str(model_file), map_location=device)
    except (RuntimeError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{model_file} is not a TorchScript model: {first}") from None
    module.eval()
    return module
