"""Shared fixtures: real TorchScript models written by the tests themselves."""

import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_server.app import Settings, create_app  # noqa: E402


class Affine(torch.nn.Module):
    """y = 2x + 1 on one feature: predictions are easy to check by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(2.0)
            self.linear.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Total(torch.nn.Module):
    """Returns a 0-d tensor, to show that predictions are still a list."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum()


def save_scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


@pytest.fixture
def affine_model(tmp_path: Path) -> Path:
    return save_scripted(Affine(), tmp_path / "model.pt")


def settings_for(path: Path, *, name: str = "affine", wait_seconds: float = 0) -> Settings:
    return Settings(model_path=path, model_name=name, model_version="v1", wait_seconds=wait_seconds)


def wait_for_state(client, state: str, timeout: float = 20.0) -> dict:
    """Polls readiness until the model reaches `state`; fails with the last answer otherwise."""
    deadline = time.monotonic() + timeout
    body = {}
    while time.monotonic() < deadline:
        body = client.get("/v2/health/ready").json()
        if body["state"] == state:
            return body
        time.sleep(0.05)
    raise AssertionError(f"model never reached {state}; last readiness answer: {body}")


__all__ = ["create_app", "save_scripted", "settings_for", "wait_for_state", "Affine", "Total"]
