"""One rank of the DistributedDataParallel QAT test (run by torch.multiprocessing.spawn, gloo on the CPU).

Each rank trains the graph-mode QAT model and the eager QAT model, both
wrapped in ``DistributedDataParallel``, on its half of the same global
batches, then converts: once with its own fake-quant and BatchNorm state,
and once (graph mode) after taking rank 0's buffers. What it saw goes to
``<out>/rank<N>.pt``.
"""

from __future__ import annotations

import torch
import torch.ao.quantization as tq
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from helpers.qat_models import INPUT, eager_qat, float_state, graph_qat, train_step

STEPS, GLOBAL_BATCH = 4, 16


def run_rank(rank: int, world: int, store: str, out: str) -> None:
    import qgraph

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        qconfig = tq.get_default_qat_qconfig("x86")
        state = float_state()
        models = {"graph": graph_qat(state, qconfig), "eager": eager_qat(state, qconfig)}
        wrapped = {name: DistributedDataParallel(model) for name, model in models.items()}
        optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for name, m in wrapped.items()}
        generator = torch.Generator().manual_seed(5)
        share = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        for _ in range(STEPS):
            x = torch.randn(GLOBAL_BATCH, *INPUT, generator=generator)
            y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=generator)
            for name in models:
                train_step(wrapped[name], optimizers[name], x[share], y[share])
        test = torch.randn(32, *INPUT, generator=torch.Generator().manual_seed(6))
        result = {"weights": {k: v.detach().clone() for k, v in models["graph"].named_parameters()}}
        models["eager"].eval()
        models["graph"].eval()
        with torch.no_grad():
            result["eager_int8"] = tq.convert(models["eager"])(test)
            result["graph_int8"] = qgraph.convert_jit(models["graph"])(test)
            for buffer in models["graph"].buffers():
                dist.broadcast(buffer, src=0)
            result["graph_int8_rank0_buffers"] = qgraph.convert_jit(models["graph"])(test)
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
