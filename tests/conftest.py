"""Make the repository's ``examples`` package importable from the tests wherever pytest is started."""

import sys
from pathlib import Path

_REPOSITORY_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPOSITORY_ROOT not in sys.path:
    sys.path.append(_REPOSITORY_ROOT)
