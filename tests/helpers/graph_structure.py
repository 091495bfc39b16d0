"""Compare TorchScript graphs by dataflow, not by text.

Two rewriters can build the same program with different value names and a
different placement of independent nodes (one inserts a replacement at the
matched op, another right after its last input). ``dataflow_signature``
describes every value by how it is computed — op kind, attributes, output
type and, recursively, its inputs — so graphs that compute the same thing
the same way compare equal while any difference in ops, constants, types,
dataflow or nested blocks shows up in the diff.
"""

from __future__ import annotations

import torch


def dataflow_signature(graph: torch._C.Graph) -> list[str]:
    """Sorted descriptions of every node and of the graph's outputs.

    Constants are described where they are used; unused ones are dropped.
    """
    describe = _Describer()
    block = graph.block()
    for i, value in enumerate(block.inputs()):
        describe.names[value] = f"input{i}:{value.type()}"
    lines = [describe.node(n) for n in block.nodes() if n.kind() != "prim::Constant"]
    lines.append("return " + ", ".join(describe.value(v) for v in block.returnNode().inputs()))
    return sorted(lines)


class _Describer:
    def __init__(self):
        self.names: dict[torch._C.Value, str] = {}

    def value(self, value: torch._C.Value) -> str:
        known = self.names.get(value)
        if known is None:
            node = value.node()
            if node.kind() == "prim::Constant":
                known = _constant(value)
            else:
                known = f"{self.node(node)}#{value.offset()}"
            self.names[value] = known
        return known

    def node(self, node: torch._C.Node) -> str:
        attrs = ",".join(
            f"{name}={getattr(node, node.kindOf(name))(name)}"
            for name in sorted(node.attributeNames())
            if node.kindOf(name) in ("i", "f", "s", "is", "fs", "ss")
        )
        inputs = ", ".join(self.value(v) for v in node.inputs())
        outputs = ", ".join(str(o.type()) for o in node.outputs())
        blocks = ""
        for block in node.blocks():
            for i, param in enumerate(block.inputs()):
                self.names[param] = f"param{i}:{param.type()}"
            inner = sorted(self.node(n) for n in block.nodes() if n.kind() != "prim::Constant")
            returned = ", ".join(self.value(v) for v in block.returnNode().inputs())
            blocks += " {" + "; ".join(inner) + f"; -> {returned}}}"
        return f"{node.kind()}[{attrs}]({inputs}) -> {outputs}{blocks}"


def _constant(value: torch._C.Value) -> str:
    kind = value.type().kind()
    if kind == "FunctionType":
        return f"function:{value.type()}"
    payload = value.toIValue()
    if isinstance(payload, torch.Tensor):
        payload = f"tensor{tuple(payload.shape)}:{payload.flatten().tolist()}"
    return f"const:{value.type()}={payload!r}"
