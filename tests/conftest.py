"""Test-wide setup: every test session writes into its own data directory, never the user's; tiny models
(real torchvision blocks) and the digits loaders shared by the optimization tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock

ROOT = Path(__file__).resolve().parents[1]
_SESSION_DATA = Path(tempfile.mkdtemp(prefix="dlas-test-data-"))
os.environ.setdefault("DLAS_DATA_DIR", str(_SESSION_DATA))
os.environ.setdefault("TVM_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def registry():
    from dlas_host.devices import load

    return load(ROOT / "devices.yaml")


@pytest.fixture(scope="session")
def local_device(registry):
    return registry.get("local")


@pytest.fixture()
def tracker():
    """A TVM RPC tracker on a free loopback port (its process group is killed afterwards)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                             "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    yield port
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.fixture()
def store(tmp_path):
    from dlas_host.store import ResultStore

    return ResultStore(tmp_path / "results.sqlite")



torch.set_num_threads(2)


def tiny_resnet(num_classes: int = 10) -> nn.Module:
    """A 2-block ResNet built from torchvision's BasicBlock (identity and downsample skips)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        BasicBlock(16, 16),
        BasicBlock(16, 32, stride=2, downsample=nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def tiny_mobilenet(num_classes: int = 10) -> nn.Module:
    """Stem + two torchvision InvertedResidual blocks (expansion, depthwise, projection; one residual)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))


@pytest.fixture(scope="session")
def digits_loaders():
    from dlas_host import data

    return data.loaders("digits", batch_size=32)


@pytest.fixture(scope="session")
def trained_tiny_resnet(digits_loaders):
    """tiny_resnet trained 2 epochs on digits (~97 % top-1); tests copy it before changing it."""
    from dlas_host import train

    model = tiny_resnet()
    train.train(model, digits_loaders[0], train.TrainConfig(epochs=2, lr=0.1, progress=False))
    return model
