"""Make the repository's ``examples`` package importable from the tests wherever pytest is started.

Under pytest-xdist each worker computes with one thread: the workers already
use every core, and more threads than cores make each of them wait.
"""

import os
import sys
from pathlib import Path

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

_REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPOSITORY_ROOT not in sys.path:
    sys.path.append(_REPOSITORY_ROOT)
