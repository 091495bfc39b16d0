"""qgraph.sensitivity: the model's output SQNR with one layer at a time left in float."""

import pytest
import torch
from torch import nn
from torch.ao.quantization import MinMaxObserver, QConfig, QConfigMapping, default_dynamic_qconfig, get_default_qconfig

import qgraph

QCONFIG = QConfig(activation=MinMaxObserver.with_args(reduce_range=True), weight=get_default_qconfig("x86").weight)


class Outlier(nn.Module):
    """Its input's first feature is 1000 times larger than the rest, and ``body`` reads it 1000 times smaller.

    Quantizing ``body``'s input with one scale rounds the other features away.
    """

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            self.body.weight[:, 0] /= 1000

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torch.jit.script(Outlier().eval())


@pytest.fixture(scope="module")
def batches():
    torch.manual_seed(1)
    data = [torch.randn(16, 8) for _ in range(2)]
    for batch in data:
        batch[:, 0] *= 1000
    return data


def test_the_layer_whose_output_drowns_the_rest_gains_most(model, batches):
    report = qgraph.sensitivity(model, {"": QCONFIG}, batches, k=1)
    assert [layer.module_path for layer in report.layers] == ["body", "head"]
    assert report.layers[0].gain > 20
    assert report.layers[0].gain == pytest.approx(report.layers[0].sqnr - report.baseline_sqnr)
    assert report.qconfig_dict == {"": QCONFIG, "body": None}
    assert report.excluded_sqnr == pytest.approx(report.layers[0].sqnr)
    text = report.format()
    assert text.splitlines()[0].startswith("baseline (every layer quantized): model output SQNR")
    assert "leaving the worst 1 in float (body)" in text


def test_a_mapping_comes_back_as_a_mapping(model, batches):
    mapping = QConfigMapping().set_global(QCONFIG)
    report = qgraph.sensitivity(model, mapping, batches, batches[:1], k=2)
    assert isinstance(report.qconfig_dict, QConfigMapping)
    assert dict(report.qconfig_dict.module_name_qconfigs) == {"body": None, "head": None}
    assert mapping.module_name_qconfigs == {}  # the caller's mapping is left as it was


def test_dynamic_quantization(model, batches):
    report = qgraph.sensitivity(model, {"": default_dynamic_qconfig}, batches, dynamic=True, k=0)
    assert {layer.module_path for layer in report.layers} == {"head", "body"}
    assert report.excluded_sqnr is None and report.qconfig_dict == {"": default_dynamic_qconfig}


def test_an_eager_model_is_refused(batches):
    with pytest.raises(TypeError, match="scripted or traced float model"):
        qgraph.sensitivity(Outlier(), {"": QCONFIG}, batches)
