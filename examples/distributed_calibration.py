"""Calibrate one model in two processes, each on its own share of the data, and merge what they saw.

    python examples/distributed_calibration.py [--observer mse|percentile|entropy|minmax|histogram]

Each process prepares the same model with qgraph, runs its half of the
calibration batches, then ``qgraph.all_reduce_observers`` combines every
observer's state across the processes (torch.distributed, gloo backend:
all-reduce of minima, maxima and histogram counts). Process 0 saves the
merged prepared model; this script converts it and compares it with one
process calibrating on all the data. For min-max observers and qgraph's
calibrators the two quantized models are identical; for PyTorch's
HistogramObserver they are close (its bins depend on the range it saw, so
merging spreads them, see ``qgraph.merge_observers``).
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.ao.quantization import HistogramObserver, MinMaxObserver, QConfig, default_per_channel_weight_observer

import qgraph

OBSERVERS: dict[str, Any] = {
    "mse": qgraph.MSEObserver,
    "percentile": qgraph.PercentileObserver,
    "entropy": qgraph.EntropyObserver,
    "minmax": MinMaxObserver,
    "histogram": HistogramObserver,
}


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def make_model() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(SmallNet().eval())


def calibration_batches(count: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 16, 16, generator=generator) * (1 + i) for i in range(count)]


def prepare(observer: str) -> torch.jit.ScriptModule:
    qconfig = QConfig(
        activation=OBSERVERS[observer].with_args(reduce_range=True), weight=default_per_channel_weight_observer
    )
    return qgraph.prepare_jit(make_model(), {"": qconfig})


def calibrate_shard(rank: int, world_size: int, port: int, observers: list[str], folder: str) -> None:
    """One process: calibrate on every ``world_size``-th batch, merge with the others; process 0 saves."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for observer in observers:
            prepared = prepare(observer)
            with torch.no_grad():
                for batch in calibration_batches()[rank::world_size]:
                    prepared(batch)
            qgraph.all_reduce_observers(prepared)
            if rank == 0:
                torch.jit.save(prepared, str(Path(folder) / f"{observer}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def calibrate_distributed(observers: list[str], world_size: int = 2) -> dict[str, torch.jit.ScriptModule]:
    """For each observer, the prepared model after ``world_size`` processes calibrated their shares and merged."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(calibrate_shard, args=(world_size, free_port(), observers, folder), nprocs=world_size)
        return {observer: torch.jit.load(str(Path(folder) / f"{observer}.pt")) for observer in observers}


def calibrate_single(observer: str) -> torch.jit.ScriptModule:
    prepared = prepare(observer)
    with torch.no_grad():
        for batch in calibration_batches():
            prepared(batch)
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observer", choices=sorted(OBSERVERS), default="mse")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    merged = qgraph.convert_jit(calibrate_distributed([args.observer])[args.observer])
    single = qgraph.convert_jit(calibrate_single(args.observer))
    x = torch.randn(2, 3, 16, 16)
    difference = (merged(x) - single(x)).abs().max().item()
    print(f"{args.observer}: two processes merged vs one process on all the data: max output difference {difference}")


if __name__ == "__main__":
    main()
