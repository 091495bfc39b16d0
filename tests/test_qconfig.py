"""qgraph.quant.qconfig: scripting QConfigs and resolving qconfig_dict to module paths."""

import warnings

import pytest
import torch
import torch.nn as nn
from torch.ao.quantization import (
    MinMaxObserver,
    QConfig,
    default_dynamic_qconfig,
    default_qconfig,
)
from torch.ao.quantization import (
    script_qconfig as reference_script_qconfig,
)

from qgraph.quant.qconfig import (
    check_qconfig_dict,
    qconfig_paths_needing_own_type,
    resolve_qconfigs,
    script_qconfig,
    script_qconfig_dict,
)


class Leaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x)


class Tree(nn.Module):
    def __init__(self):
        super().__init__()
        self.sub = Leaf()
        self.subway = Leaf()

    def forward(self, x):
        return self.subway(self.sub(x))


def scripted_tree():
    return torch.jit.script(Tree())


def test_script_qconfig_gives_script_modules_like_reference():
    ours = script_qconfig(default_qconfig)
    reference = reference_script_qconfig(default_qconfig)
    for mine, theirs in ((ours.activation, reference.activation), (ours.weight, reference.weight)):
        assert isinstance(mine, torch._C.ScriptModule)
        assert mine._type().qualified_name() == theirs._type().qualified_name()
        assert mine.getattr("dtype") == theirs.getattr("dtype")


def test_script_qconfig_keeps_already_scripted_parts_and_with_args():
    custom = QConfig(activation=MinMaxObserver.with_args(quant_min=0, quant_max=15), weight=MinMaxObserver)
    scripted = script_qconfig(custom)
    assert scripted.activation.getattr("quant_max") == 15
    again = script_qconfig(scripted)
    assert again.activation is scripted.activation


def test_script_qconfig_dict_keeps_none():
    scripted = script_qconfig_dict({"": default_dynamic_qconfig, "sub": None})
    assert scripted["sub"] is None
    assert isinstance(scripted[""].weight, torch._C.ScriptModule)


def test_non_str_key_is_named():
    with pytest.raises(ValueError, match="3"):
        check_qconfig_dict({3: default_qconfig})
    with pytest.raises(TypeError, match="sub"):
        check_qconfig_dict({"sub": "not a qconfig"})


def test_longest_dotted_prefix_wins():
    other = QConfig(activation=MinMaxObserver, weight=MinMaxObserver)
    resolved = resolve_qconfigs(scripted_tree(), {"": default_qconfig, "sub": other, "sub.fc": None})
    assert resolved[""] is default_qconfig
    assert resolved["sub"] is other
    assert resolved["sub.fc"] is None
    # "sub" does not cover "subway"
    assert resolved["subway"] is default_qconfig and resolved["subway.fc"] is default_qconfig


def test_unmatched_modules_get_none():
    resolved = resolve_qconfigs(scripted_tree(), {"sub": default_qconfig})
    assert resolved[""] is None and resolved["subway"] is None
    assert resolved["sub.fc"] is default_qconfig


def test_key_naming_no_submodule_warns_with_its_name():
    with pytest.warns(UserWarning, match="'sbu'"):
        resolved = resolve_qconfigs(scripted_tree(), {"sbu": default_qconfig})
    assert all(q is None for q in resolved.values())


def test_no_warning_for_existing_keys():
    model = scripted_tree()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        resolve_qconfigs(model, {"": default_qconfig, "subway.fc": None})


def test_instances_with_different_subtree_qconfigs_need_own_type():
    model = scripted_tree()
    assert qconfig_paths_needing_own_type(model, resolve_qconfigs(model, {"": default_qconfig})) == []
    needing = qconfig_paths_needing_own_type(model, resolve_qconfigs(model, {"": default_qconfig, "subway.fc": None}))
    # subway differs from sub below it, and subway.fc from sub.fc (the Linear type is shared)
    assert set(needing) == {"subway", "subway.fc"}
