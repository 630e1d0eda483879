"""The training engine: one step function, :func:`train_step`, replayed from a CUDA graph where
the run allows it and run eagerly elsewhere.

A step is: zero the gradients (in place, so their buffers stay where a graph wrote them), the
objective of each micro-batch (the negative ELBO, or the IWAE bound, batch mean, nats per
image), backward, the optimizer's update, and a record of the step's (recon, kl) in a device
buffer at a device counter. Nothing in a step waits for the device; the epoch's losses, and
the first step whose loss was not finite, are read in one host sync when the epoch ends.

**Noise.** Before each micro-batch u of step s of epoch e the engine seeds its posterior
generator (and, for a model with dropout, the device's default generator, which dropout
draws from) with seeds that are a pure function of (seed, e, s, u) (:func:`step_seeds`). So
the noise never depends on what ran before: a resumed run continues bit for bit, and W
processes with A micro-batches each draw what one process with W * A micro-batches draws.

**The CUDA-graph path** (a CUDA device, one process, ``grad_accum`` 1, non-finite policy
"stop", torch with ``CUDAGraph.register_generator_state``): the first batch of each size (the
full batch, and the last partial batch of an epoch) is captured as a graph of
:func:`train_step` after a warm-up step whose effect is then undone (weights, optimizer state
and records restored); every later batch of that size is copied into the graph's input and
the graph replayed. The posterior generator is registered with each graph, so seeding it on
the host before a replay gives that replay the step's noise (the ops draw their Philox key
with ``torch.randint`` from it under capture). The optimizer must be capturable (fused
capturable Adam: :func:`fastvae.train.build.build_optimizer`); its learning rate becomes a
device tensor, so a schedule that changes it reaches the graph. Dropout and weight decay run
inside the graph. Everywhere else the same :func:`train_step` runs eagerly;
:attr:`Engine.why` says which path was taken and why.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np
import torch
from torch import nn

from fastvae.models import iwae_loss
from fastvae.train.distributed import Distributed

NEVER = torch.iinfo(torch.int64).max


class Objective(nn.Module):
    """``forward(x)`` = the training objective of ``model`` on the micro-batch ``x``, batch
    mean (nats per image): ``model.loss(x, beta)`` (recon + beta * KL) or, for ``iwae_k`` > 1,
    :func:`fastvae.models.iwae_loss`; the posterior noise from :attr:`generator`. The step
    goes through ``forward`` so that DistributedDataParallel sees (and synchronizes) it."""

    def __init__(self, model: nn.Module, generator: torch.Generator, beta: float = 1.0,
                 iwae_k: int = 1):
        super().__init__()
        self.model, self.generator, self.beta, self.iwae_k = model, generator, beta, iwae_k

    def forward(self, x: torch.Tensor):
        if self.iwae_k > 1:
            return iwae_loss(self.model, x, self.iwae_k, generator=self.generator)
        return self.model.loss(x, beta=self.beta, generator=self.generator)


class Records:
    """Per-step (recon, kl) batch means of one epoch, on the device: ``values[i]`` is step
    i's, written at the device counter ``count`` (so a captured step writes the next row)."""

    def __init__(self, n_steps: int, device: torch.device):
        self.values = torch.zeros(n_steps, 2, device=device)
        self.count = torch.zeros(1, dtype=torch.int64, device=device)

    def add(self, recon: torch.Tensor, kl: torch.Tensor) -> None:
        row = torch.stack([recon.detach(), kl.detach()]).to(self.values.dtype)
        self.values.index_copy_(0, self.count, row.unsqueeze(0))
        self.count.add_(1)


def train_step(
    objective: Callable, optimizer: torch.optim.Optimizer, micro_batches: list[torch.Tensor],
    records: Records, *, before: Callable[[int], Any] | None = None,
    keep: Callable[[torch.Tensor], bool] | None = None,
) -> bool:
    """One optimizer step on the micro-batches of a batch; the unit a CUDA graph captures.

    Each micro-batch's batch-mean objective is weighted by its share of the images, so the
    gradient is that of the batch mean. ``before(a)`` runs before micro-batch a (the engine
    seeds the noise there, and enters DDP's ``no_sync`` for all but the last); ``keep(row)``,
    given the step's (recon, kl), decides on the host whether to apply the update (the
    non-finite policy "skip"; None applies it without looking). Returns whether it did.
    """
    optimizer.zero_grad(set_to_none=False)
    total = sum(x.shape[0] for x in micro_batches)
    parts = []
    for a, x in enumerate(micro_batches):
        with (before(a) if before is not None else None) or nullcontext():
            out = objective(x)
            share = x.shape[0] / total
            (out.loss if share == 1.0 else out.loss * share).backward()
        parts.append((out.recon * share, out.kl * share) if share != 1.0 else (out.recon, out.kl))
    recon = parts[0][0] if len(parts) == 1 else torch.stack([p[0] for p in parts]).sum()
    kl = parts[0][1] if len(parts) == 1 else torch.stack([p[1] for p in parts]).sum()
    if keep is not None and not keep(torch.stack([recon.detach(), kl.detach()])):
        return False
    optimizer.step()
    records.add(recon, kl)
    return True


def step_seeds(seed: int, epoch: int, n_steps: int, streams: int) -> np.ndarray:
    """The seeds of epoch ``epoch``: uint64 ``(n_steps, streams, 2)``, entry [s, u, g] seeding
    generator g (0: the posterior noise, 1: dropout) for micro-batch u of step s. One
    ``numpy.random.SeedSequence((seed, epoch))`` draw for the whole epoch: a pure function of
    its arguments, independent streams for neighbouring values."""
    words = np.random.SeedSequence([seed % 2**63, epoch]).generate_state(
        n_steps * streams * 4, dtype=np.uint32).astype(np.uint64)
    return (words[0::2] << np.uint64(32) | words[1::2]).reshape(n_steps, streams, 2)


def graph_unavailable(device: torch.device, env: Distributed, grad_accum: int,
                      nonfinite: str) -> str | None:
    """Why the step cannot be replayed from a CUDA graph here, or None when it can."""
    if device.type != "cuda":
        return f"the device is {device.type}; CUDA graphs need a CUDA device"
    if env.enabled:
        return f"{env.world_size} processes: DistributedDataParallel's hooks run on the host"
    if grad_accum > 1:
        return f"grad_accum {grad_accum}: micro-batches are seeded on the host between them"
    if nonfinite != "stop":
        return f"nonfinite {nonfinite}: deciding to skip a step reads its loss on the host"
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        return (f"torch {torch.__version__} has no CUDAGraph.register_generator_state "
                "(torch >= 2.6)")
    return None


class EpochLosses(NamedTuple):
    """An epoch's training losses, nats per image (batch-size-weighted means of the steps'
    values), ``loss = recon + kl`` (the negative ELBO); ``first_bad``: index of the first step
    whose loss was not finite (None: all finite); ``steps``: steps in the epoch; ``skipped``:
    steps dropped by the non-finite policy "skip"."""

    loss: float
    recon: float
    kl: float
    first_bad: int | None
    steps: int
    skipped: int


class Engine:
    """Trains ``model`` with ``optimizer`` an epoch at a time through :func:`train_step`, from
    a CUDA graph where the run allows it (module docstring).

    Args:
        model: the model (``loss(x, beta=, generator=)``), on its device.
        optimizer: over its parameters; capturable (fused Adam) for the CUDA-graph path.
        seed: seeds every step's noise (with the epoch, the step and the micro-batch).
        beta, iwae_k: the objective (:class:`Objective`).
        grad_accum: micro-batches per step and process.
        nonfinite: "stop" (records only; the caller raises at the epoch's end) or "skip"
            (a step whose loss is not finite is dropped: one host sync per step).
        env: the processes of the job (default: this one alone); with several, the objective
            runs under DistributedDataParallel.
        cuda_graph: None: the graph path whenever the run allows it; False: eager; True: the
            graph path or ValueError saying why not.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, seed: int = 0,
                 beta: float = 1.0, iwae_k: int = 1, grad_accum: int = 1, nonfinite: str = "stop",
                 env: Distributed | None = None, cuda_graph: bool | None = None):
        self.device = next(model.parameters()).device
        self.env = env or Distributed(0, 1, self.device)
        self.model, self.optimizer, self.seed = model, optimizer, seed
        self.grad_accum, self.nonfinite = grad_accum, nonfinite
        self.generator = torch.Generator(device=self.device)
        self.objective: nn.Module = Objective(model, self.generator, beta, iwae_k)
        if self.env.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        self.dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
        blocked = graph_unavailable(self.device, self.env, grad_accum, nonfinite)
        if cuda_graph and blocked:
            raise ValueError(f"cuda_graph=True, but {blocked}")
        self.graphs = None
        if cuda_graph is not False and blocked is None:
            from fastvae.train.graphs import StepGraphs

            self.graphs = StepGraphs(self)
        self.why = ("training step: replayed from a CUDA graph (one process on a CUDA device, "
                    "grad_accum 1, nonfinite stop)" if self.graphs is not None
                    else f"training step: eager ({blocked or 'cuda_graph=False'})")
        self.records: Records | None = None  # made by the first epoch (it knows the steps)

    def _default_generator(self) -> torch.Generator:
        if self.device.type == "cuda":
            return torch.cuda.default_generators[self.device.index or 0]
        return torch.default_generator

    def seed_step(self, seeds: np.ndarray) -> None:
        """Seed the posterior generator (and dropout's) with one ``step_seeds`` entry."""
        self.generator.manual_seed(int(seeds[0]))
        if self.dropout:
            self._default_generator().manual_seed(int(seeds[1]))

    def train_epoch(self, epoch: int, batches: Iterable, *, progress: Callable = iter
                    ) -> EpochLosses:
        """One pass over ``batches`` (``(x, y)`` pairs; ``set_epoch(epoch)`` is called when
        the batches have it), ``progress`` wrapping the iteration (a tqdm bar, say). Returns
        the epoch's losses summed over the processes: one host sync, at the end."""
        self.model.train()
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        n_steps, W, A = len(batches), self.env.world_size, self.grad_accum
        if self.records is None or self.records.values.shape[0] < n_steps:
            self.records = Records(n_steps, self.device)
            if self.graphs is not None:  # captured with the old buffer
                self.graphs.graphs.clear()
        records = self.records
        records.count.zero_()
        seeds = step_seeds(self.seed, epoch, n_steps, W * A)
        sizes, skipped = [], 0
        for step, (x, _) in enumerate(progress(batches)):
            if self.graphs is not None:
                self.graphs.step(x, lambda: self.seed_step(seeds[step, 0]))
            elif not self._eager_step(x, seeds[step], epoch, step, n_steps):
                skipped += 1
                continue
            sizes.append(x.shape[0])
        return self._epoch_losses(records, sizes, n_steps, skipped)

    def _eager_step(self, x, seeds, epoch: int, step: int, n_steps: int) -> bool:
        A, rank, W = self.grad_accum, self.env.rank, self.env.world_size
        micro = [x[a::A] for a in range(min(A, x.shape[0]))]

        def before(a: int):
            self.seed_step(seeds[rank + W * a])
            if self.env.enabled and a < len(micro) - 1:
                return self.objective.no_sync()
            return None

        keep = None
        if self.nonfinite == "skip":
            keep = lambda row: self._all_finite(row, epoch, step, n_steps)  # noqa: E731
        return train_step(self.objective, self.optimizer, micro, self.records, before=before,
                          keep=keep)

    def _all_finite(self, row: torch.Tensor, epoch: int, step: int, n_steps: int) -> bool:
        ok = self.env.all_reduce(torch.isfinite(row).all().to(torch.int32), "min")
        if bool(ok):  # a host sync: the price of deciding before the update
            return True
        if self.env.is_main:
            print(f"warning: non-finite training loss at epoch {epoch}, step {step + 1} of "
                  f"{n_steps}: step skipped (nonfinite skip)", flush=True)
        return False

    def _epoch_losses(self, records: Records, sizes: list[int], n_steps: int,
                      skipped: int) -> EpochLosses:
        n = len(sizes)
        values = records.values[:n].double()
        weights = torch.tensor(sizes, dtype=torch.float64).to(self.device)
        finite = torch.isfinite(values).all(1)
        first = torch.where(finite, NEVER, torch.arange(n, device=self.device)).min() if n else (
            torch.tensor(NEVER, device=self.device))
        totals = torch.cat([(values * weights[:, None]).sum(0), weights.sum().view(1)])
        self.env.all_reduce(totals)
        first = self.env.all_reduce(first.clone(), "min")
        recon, kl, images = totals.tolist()
        bad = int(first)
        images = images or float("nan")
        return EpochLosses((recon + kl) / images, recon / images, kl / images,
                           None if bad == NEVER else bad, n_steps, skipped)

    def fit(self, batches: Iterable, epochs: int, *, first_epoch: int = 1) -> list[EpochLosses]:
        """Train ``epochs`` epochs (numbered from ``first_epoch``); each epoch's losses."""
        return [self.train_epoch(e, batches) for e in range(first_epoch, first_epoch + epochs)]
