"""Shared test set-up: the repository's ``examples`` importable wherever pytest is started, one torch
thread per pytest-xdist worker, and the ``qnnpack_engine`` fixture.

Under pytest-xdist each worker computes with one thread: the workers already
use every core, and more threads than cores make each of them wait. Helpers
the test modules share are in ``tests/helpers``.
"""

import os
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

_REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPOSITORY_ROOT not in sys.path:
    sys.path.append(_REPOSITORY_ROOT)


@pytest.fixture
def qnnpack_engine():
    """PyTorch's qnnpack quantized engine for the test (skipped where the build has none)."""
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("this PyTorch build has no qnnpack engine")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous
