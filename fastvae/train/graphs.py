"""CUDA graphs of :func:`fastvae.train.engine.train_step`, one per batch size.

:class:`StepGraphs` captures the step the first time a batch of a new size arrives (the full
batch, then the last partial batch of an epoch): a warm-up step on a side stream (CUDA-graph
capture needs one: it compiles the kernels and creates the optimizer's state), the capture
of one step on a static copy of the batch (capturing runs nothing), then the warm-up is
undone: parameters, optimizer state and the epoch's records are restored in place, so no
batch is trained on or counted twice. Later batches of that size are copied into the static
input and the graph is replayed. The engine's posterior generator is registered with every
graph (``CUDAGraph.register_generator_state``), so seeding it before a replay gives the replay
that step's noise; the device's default generator, which dropout draws from, is registered by
the capture itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from fastvae.train.engine import train_step

if TYPE_CHECKING:
    from fastvae.train.engine import Engine


class StepGraphs:
    """The captured steps of ``engine`` by batch size (see the module docstring)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.graphs: dict[int, tuple[Any, torch.Tensor]] = {}
        _lr_on_device(engine.optimizer, engine.device)

    def step(self, x: torch.Tensor, reseed: Callable[[], None]) -> None:
        """One training step on ``x``: replay its size's graph (captured on first sight),
        ``reseed()`` right before the replay (the capture's warm-up drew noise too)."""
        entry = self.graphs.get(x.shape[0])
        if entry is None:
            entry = self.graphs[x.shape[0]] = self._capture(x)
        graph, static_x = entry
        reseed()
        static_x.copy_(x)
        graph.replay()

    def _capture(self, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        engine = self.engine
        before = snapshot(engine.model, engine.optimizer, engine.records)
        self._warm_up(x)
        static_x = x.clone()
        graph = self._record(static_x)
        restore(engine.model, engine.optimizer, engine.records, before)
        return graph, static_x

    def _warm_up(self, x: torch.Tensor) -> None:
        """One eager step on a side stream, as CUDA-graph capture requires."""
        engine = self.engine
        stream = torch.cuda.Stream(engine.device)
        stream.wait_stream(torch.cuda.current_stream(engine.device))
        with torch.cuda.stream(stream):
            train_step(engine.objective, engine.optimizer, [x], engine.records)
        torch.cuda.current_stream(engine.device).wait_stream(stream)

    def _record(self, static_x: torch.Tensor) -> torch.cuda.CUDAGraph:
        """A CUDA graph of one step on ``static_x`` (recorded, not run)."""
        engine = self.engine
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(engine.generator)
        with torch.cuda.graph(graph):
            train_step(engine.objective, engine.optimizer, [static_x], engine.records)
        return graph


def _lr_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's learning rate as a device tensor, so that a graph reads its current value
    (a Python float would be baked into the captured update); a scheduler fills it in place."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor) or group["lr"].device != device:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


@torch.no_grad()
def snapshot(model, optimizer, records) -> dict:
    """Copies of the parameters, the optimizer's state tensors and the records."""
    params = list(model.parameters())
    return {
        "params": [p.detach().clone() for p in params],
        "state": [{k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
                  for p in params],
        "records": (records.values.clone(), records.count.clone()),
    }


@torch.no_grad()
def restore(model, optimizer, records, saved: dict) -> None:
    """Put :func:`snapshot` back in place (a graph keeps its buffers): parameters and records
    copied back; the optimizer's state copied back, or zeroed where the snapshot predates it
    (a zero state with step 0 is exactly a fresh Adam)."""
    for p, value, state in zip(model.parameters(), saved["params"], saved["state"]):
        p.copy_(value)
        for k, v in optimizer.state[p].items():
            if torch.is_tensor(v) and k in state:
                v.copy_(state[k])
            elif torch.is_tensor(v):
                v.zero_()
    records.values.copy_(saved["records"][0])
    records.count.copy_(saved["records"][1])
