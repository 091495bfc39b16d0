"""A QAT model saved mid-training resumes in a fresh process as if it had never stopped.

``torch.jit.save`` keeps every fake-quant's state (scale, zero point,
statistics, switches), the Conv-BatchNorm modules' statistics and frozen
flag, and the parameters; the optimizer's state travels beside it
(``torch.save(optimizer.state_dict())``). Continuing in another process
gives the weights, fake-quant state and int8 model of the uninterrupted run.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.ao.quantization as tq

import qgraph
from helpers.qat_models import INPUT, float_state, graph_qat, train_step

TESTS = Path(__file__).resolve().parent
STEPS = 3


def _batches(seed):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *INPUT, generator=generator), torch.randint(0, 3, (8,), generator=generator))] * STEPS


RESUME = textwrap.dedent(
    """
    import sys
    import torch
    sys.path[:0] = [{root!r}, {tests!r}]
    # The same float summation order as the uninterrupted run.
    torch.set_num_threads({threads})
    import qgraph
    from helpers.qat_models import INPUT, train_step
    from qgraph.ir import as_cpp, named_modules
    from qgraph.quant.qat_modules import is_fake_quant
    model = torch.jit.load({model!r})
    assert model.training and all(p.is_leaf for p in model.parameters())
    assert sum(is_fake_quant(m) for _, m in named_modules(as_cpp(model))) == 12
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    optimizer.load_state_dict(torch.load({optimizer!r}))
    generator = torch.Generator().manual_seed(7)
    batch = (torch.randn(8, *INPUT, generator=generator), torch.randint(0, 3, (8,), generator=generator))
    for _ in range({steps}):
        train_step(model, optimizer, *batch)
    torch.save(model.state_dict(), {state!r})
    model.eval()
    torch.jit.save(qgraph.convert_jit(model), {int8!r})
    """
)


def test_saved_mid_training_resumes_in_a_fresh_process(tmp_path):
    model = graph_qat(float_state(), tq.get_default_qat_qconfig("x86"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in _batches(3):
        train_step(model, optimizer, x, y)
    qgraph.qat.freeze_bn_stats(model)
    qgraph.qat.disable_observer(model.fc)
    paths = {name: str(tmp_path / name) for name in ("model", "optimizer", "state", "int8")}
    torch.jit.save(model, paths["model"])
    torch.save(optimizer.state_dict(), paths["optimizer"])
    script = RESUME.format(
        root=str(TESTS.parent), tests=str(TESTS), steps=STEPS, threads=torch.get_num_threads(), **paths
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    for x, y in _batches(7):
        train_step(model, optimizer, x, y)
    resumed = torch.load(paths["state"])
    uninterrupted = model.state_dict()
    assert sorted(resumed) == sorted(uninterrupted)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted), [
        k for k in uninterrupted if not torch.equal(resumed[k], uninterrupted[k])
    ]
    model.eval()
    x = torch.randn(16, *INPUT)
    with torch.no_grad():
        assert torch.equal(torch.jit.load(paths["int8"])(x), qgraph.convert_jit(model)(x))
