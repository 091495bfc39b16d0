"""Graph text that two independently built graphs can be compared by.

Printing a graph shows details that say nothing about the program: class
type mangling (``___torch_mangle_7.``), source locations, and the numbers
the printer gives unnamed values. ``normalized_graph_text`` drops the first
two and renumbers unnamed values by first appearance, so a graph rewritten
by qgraph and the same graph rewritten by the reference compare equal when
they hold the same nodes, in the same order, with the same value names.
"""

from __future__ import annotations

import re

import torch

_MANGLE = re.compile(r"___torch_mangle_\d+\.")
_SOURCE = re.compile(r"\s*#.*")
_NUMBERED = re.compile(r"%(\d+)(?![.\w])")


def normalized_graph_text(graph: torch._C.Graph) -> str:
    text = _SOURCE.sub("", _MANGLE.sub("", str(graph)))
    numbers: dict[str, str] = {}

    def renumber(found: re.Match) -> str:
        return "%" + numbers.setdefault(found.group(1), str(len(numbers)))

    return _NUMBERED.sub(renumber, text)
