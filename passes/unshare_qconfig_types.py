"""Give instances of one class type their own types where their subtrees resolve to different qconfigs.

Methods live on class types, so observers inserted into one instance's
graph would go into every instance of its type. Before observers go in,
each instance that does not agree with the first instance of its type (in
module order) on the qconfig of every module below it gets a class type of
its own (``qgraph.ir.unshare_types``); the root module is rebuilt on the way::

    block_a : __torch__.Block        qconfig {"": x86}
    block_b : __torch__.Block        qconfig {"block_b.conv": None}

becomes::

    block_a : __torch__.Block
    block_b : __torch__.___torch_mangle_1.Block

The graphs are unchanged: only which type each instance has. A
``QConfigMapping`` whose entries name ops (``F.linear``, order entries)
also gives single ops of an instance's graphs a qconfig of their own, and
instances must agree on those too (``qgraph.quant.mapping_resolver``);
the ops are read from ``method_name`` and what it calls, as they are when
the pass runs.
"""

from __future__ import annotations

from typing import Any

from qgraph.ir import CppModule, as_cpp, unshare_types
from qgraph.quant.mapping_resolver import MappingResolver
from qgraph.quant.qconfig import check_qconfig_dict, qconfig_paths_needing_own_type, qconfigs_by_path
from qgraph.quant.qconfig_mapping import is_qconfig_mapping

__all__ = ["unshare_qconfig_types"]


def unshare_qconfig_types(module: Any, qconfig_dict: Any, method_name: str = "forward") -> CppModule:
    """The module tree with unshared types where ``qconfig_dict`` needs them; ``module`` itself when none do.

    When types were unshared the root is a new module and ``module`` must
    not be used after.
    """
    root = as_cpp(module)
    if is_qconfig_mapping(qconfig_dict):
        check_qconfig_dict(qconfig_dict)
        resolver = MappingResolver(root, qconfig_dict, method_name)
        paths = qconfig_paths_needing_own_type(root, resolver.module_qconfigs, resolver.op_qconfigs)
    else:
        paths = qconfig_paths_needing_own_type(root, qconfigs_by_path(root, qconfig_dict))
    return unshare_types(root, paths) if paths else root
