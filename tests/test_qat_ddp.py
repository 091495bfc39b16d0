"""QAT under DistributedDataParallel, two CPU processes with gloo.

The scripted QAT model wraps and trains unchanged, and behaves exactly as
eager QAT does under DDP: every rank's int8 model equals the one eager QAT
gives on that rank. Gradients are averaged, so the weights are the same on
both ranks. The fake-quant statistics and the BatchNorm batch statistics
are not: each rank observes its own half of every batch (DDP broadcasts
rank 0's buffers before each forward, and the forward then updates them
locally), so the ranks' qparams, and their int8 models, differ slightly,
and neither equals one process over the whole batches. Taking rank 0's
buffers after training (``torch.distributed.broadcast``, or converting on
rank 0 only) gives every rank the same int8 model.
"""

import torch
import torch.multiprocessing as mp

from helpers.qat_ddp import run_rank

WORLD = 2


def test_ranks_train_like_eager_qat_and_agree_after_taking_rank_0s_buffers(tmp_path):
    mp.spawn(run_rank, args=(WORLD, str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
    for rank in ranks:
        assert torch.equal(rank["graph_int8"], rank["eager_int8"])
    assert torch.equal(ranks[0]["graph_int8_rank0_buffers"], ranks[1]["graph_int8_rank0_buffers"])
    assert torch.equal(ranks[0]["graph_int8_rank0_buffers"], ranks[0]["graph_int8"])
