"""Helpers over TorchScript IR: walking, building, modules, cloning, call graphs.

Nothing here knows about quantization; passes build on these instead of
editing nodes by hand.
"""

from qgraph.ir.callgraph import call_graph, callees_first, method_key
from qgraph.ir.clone import clone_module, drop_attributes, unshare_types
from qgraph.ir.graph import (
    TENSOR,
    NodeIndex,
    blocks_of,
    constant_value,
    erase_dead,
    erase_nodes,
    hoist_before,
    insert_constant,
    inputs_of,
    insert_op,
    is_alive,
    is_constant,
    module_path_of,
    nested_blocks,
    nodes_before,
    outputs_of,
    producer,
    replace_uses,
    source_location,
    strip_serialized,
    users_of,
    uses_of,
    walk,
)
from qgraph.ir.module import (
    CppModule,
    as_cpp,
    as_python,
    children_of,
    get_attr,
    getattr_path,
    instances_by_type,
    is_instance_of,
    like,
    method_calls,
    method_graph,
    module_class_name,
    named_modules,
    register_attribute,
    register_submodule,
    resolve_path,
    set_attr,
    submodule_for_getattr,
    unique_attr_name,
)

__all__ = [name for name in dir() if not name.startswith("_")]
