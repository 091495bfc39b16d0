"""A ``QConfigMapping`` applied to one module tree: a qconfig per module path, and per op where it differs.

``qgraph.quant.qconfig_mapping`` ranks the entries as FX mode does; here
the module tree and the ``forward`` graphs are walked in execution order,
as FX's flattened graph lists them, to find what each ranking needs: the
class of every module, and the number of earlier calls of a module class
(or ops of an op object type) in the same parent, which order entries
name. Ops are counted in program order, the calls of one module instance
by its first call.

qgraph's observers use an op's qconfig the way they use a module's: a value
is observed with the qconfig of the op producing it when that op is
quantizable, else of its first quantizable reader, and an op whose qconfig
is None reads float values and stays float.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from torch.ao.quantization import QConfigMapping

from qgraph.ir import (
    CppModule,
    Node,
    as_cpp,
    getattr_path,
    method_graph,
    module_class_name,
    named_modules,
    resolve_path,
    walk,
)
from qgraph.quant.qconfig_mapping import (
    OpTable,
    is_module_class,
    module_type_name,
    parent_path,
    ranked_qconfig,
    reads_graphs,
)

__all__ = ["MappingResolver", "OpPosition"]

# A node of a method graph, by method name and index in ``walk`` order: it
# survives cloning a module's class types, which node objects do not.
OpPosition = tuple[str, int]


def _is_leaf(module: CppModule) -> bool:
    """FX's default leaf: a module class from torch.nn / torch.ao.nn, except Sequential."""
    name = module_class_name(module)
    return name.startswith(("torch.nn.", "torch.ao.nn.")) and name != "torch.nn.modules.container.Sequential"


@dataclass
class _Walk:
    """Module calls and op nodes in execution order, as FX's flattened graph lists them."""

    # module path -> (parent path, class name, index among that parent's calls of that class)
    module_calls: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    # (scope path, method, position) -> (op key, index among that scope's ops of that key)
    op_calls: dict[tuple[str, str, int], tuple[Any, int]] = field(default_factory=dict)


class MappingResolver:
    """A QConfigMapping resolved on one module tree: a qconfig per module path, and per op where it differs.

    ``module_qconfigs`` maps every module path (``""`` = the model) to the
    qconfig of the ops in that module's own code; ``op_qconfigs`` maps a
    module path to ``{(method, position): qconfig}`` for the op nodes of its
    graphs whose qconfig differs from the module's (an op object type or an
    order entry applied).
    """

    def __init__(self, module: Any, mapping: QConfigMapping, method: str = "forward"):
        self.mapping = mapping
        self.root: Any = cast(Any, as_cpp(module))
        self.ops = OpTable(mapping)
        self.module_types = {
            module_type_name(t): q for t, q in mapping.object_type_qconfigs.items() if is_module_class(t)
        }
        order = mapping.module_name_object_type_order_qconfigs
        self.order_by_class = {
            (name, module_type_name(t), index): q for (name, t, index), q in order.items() if is_module_class(t)
        }
        self.order_by_op = {
            (name, id(self.ops.canonical(t)), index): q
            for (name, t, index), q in order.items()
            if not is_module_class(t)
        }
        self.walked = self._walk(method) if reads_graphs(mapping) and self.root._has_method(method) else _Walk()
        self.module_qconfigs = self._resolve_modules()
        self.op_qconfigs = self._resolve_ops()

    def op_qconfigs_by_node(self) -> dict[Node, Any]:
        """``op_qconfigs`` keyed by the nodes themselves, in the graphs of the module tree as it is now."""
        found: dict[Node, Any] = {}
        nodes_of: dict[tuple[str, str], list[Node]] = {}
        for path, positions in self.op_qconfigs.items():
            module = resolve_path(self.root, path)
            for (method, position), qconfig in positions.items():
                key = (module._type().qualified_name(), method)
                if key not in nodes_of:
                    nodes_of[key] = list(walk(method_graph(module, method)))
                found[nodes_of[key][position]] = qconfig
        return found

    # ---- FX's ranking ----------------------------------------------------------------------

    def scope_qconfig(self, path: str, class_name: str | None, fallback: Any) -> Any:
        """module_name (path or a dotted prefix) > first matching regex > object_type of the class > fallback."""
        return ranked_qconfig(self.mapping, path, class_name, (fallback, ""))[0]

    def _resolve_modules(self) -> dict[str, Any]:
        resolved: dict[str, Any] = {}
        leaf_owner: dict[str, str] = {}
        global_qconfig = self.mapping.global_qconfig
        for path, module in named_modules(self.root):
            owner = leaf_owner.get(parent_path(path)) if path else None
            if owner is not None:
                leaf_owner[path] = owner
                resolved[path] = resolved[owner]
                continue
            class_name = module_class_name(module) if path else None
            qconfig = self.scope_qconfig(path, class_name, global_qconfig)
            if path and _is_leaf(module):
                leaf_owner[path] = path
                call = self.walked.module_calls.get(path)
                if call is not None and call in self.order_by_class:
                    qconfig = self.order_by_class[call]
            resolved[path] = qconfig
        return resolved

    def _resolve_ops(self) -> dict[str, dict[OpPosition, Any]]:
        overrides: dict[str, dict[OpPosition, Any]] = {}
        object_types = self.mapping.object_type_qconfigs
        classes = {path: module_class_name(module) for path, module in named_modules(self.root)}
        for (path, method, position), (key, index) in self.walked.op_calls.items():
            fallback = object_types.get(key, self.mapping.global_qconfig)
            qconfig = self.scope_qconfig(path, classes[path] if path else None, fallback)
            qconfig = self.order_by_op.get((path, id(key), index), qconfig)
            if qconfig is not self.module_qconfigs[path]:
                overrides.setdefault(path, {})[(method, position)] = qconfig
        return overrides

    # ---- execution order -------------------------------------------------------------------

    def _walk(self, method: str) -> _Walk:
        walked = _Walk()
        module_counts: dict[tuple[str, str], int] = {}
        op_counts: dict[tuple[str, int], int] = {}
        positions: dict[tuple[str, str], dict[Node, int]] = {}
        stack: list[tuple[str, CppModule, str, Iterator[Node] | None]] = [("", self.root, method, None)]
        while stack:
            path, module, name, nodes = stack.pop()
            graph_key = (module._type().qualified_name(), name)
            if nodes is None:
                graph = method_graph(module, name)
                if graph_key not in positions:
                    positions[graph_key] = {node: i for i, node in enumerate(walk(graph))}
                nodes = walk(graph)
            for node in nodes:
                kind = node.kind()
                key = self.ops.key_of_kind.get(kind)
                if key is not None:
                    count_key = (path, id(key))
                    index = op_counts.get(count_key, 0)
                    op_counts[count_key] = index + 1
                    walked.op_calls.setdefault((path, name, positions[graph_key][node]), (key, index))
                    continue
                if kind != "prim::CallMethod":
                    continue
                receiver = getattr_path(node.inputsAt(0))
                callee = _submodule(module, receiver)
                if callee is None or receiver is None:
                    continue
                callee_path = ".".join(p for p in [path, *receiver] if p)
                if receiver:
                    count = (parent_path(callee_path), module_class_name(callee))
                    index = module_counts.get(count, 0)
                    module_counts[count] = index + 1
                    walked.module_calls.setdefault(callee_path, (*count, index))
                if receiver and _is_leaf(callee):
                    continue
                # Depth first, in execution order: finish the callee, then the rest of this graph.
                stack.append((path, module, name, nodes))
                stack.append((callee_path, callee, node.s("name"), None))
                break
        return walked


def _submodule(module: CppModule, receiver: list[str] | None) -> CppModule | None:
    if receiver is None:
        return None
    target: Any = module
    for name in receiver:
        if not isinstance(target, CppModule) or not cast(Any, target).hasattr(name):
            return None
        target = cast(Any, target).getattr(name)
    return target if isinstance(target, CppModule) else None
