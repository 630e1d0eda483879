"""The fast training path: a whole MLPVAE training step with no host work between steps.

:class:`FastTrainer` trains an :class:`fastvae.MLPVAE` on batches from a device-resident
:class:`fastvae.data.ImageBatches` (uint8 images on the device, shuffled there) with the fused
fastvae losses and a fused, capturable Adam. On CUDA the step (forward, backward, optimizer
update and the running loss sums) is captured once in a CUDA graph and replayed for every
full batch, so a step costs the batch's conversion to float (two small kernels in
ImageBatches), its copy into the graph's input buffer and one graph launch, and nothing on the
hot path waits for the GPU (the losses stay on the device until
:meth:`FastTrainer.fit` returns). The reparameterization noise is keyed by a seed that
PyTorch's generator draws inside the graph, so every replay draws fresh noise. A final partial
batch (a batch size the graph was not captured for) runs the same step eagerly.

On the CPU (or with ``cuda_graph=False``) the same step runs eagerly: the same numbers up to
the noise draws, without the graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastvae import _checks
from fastvae.data import ImageBatches
from fastvae.models import MLPVAE


class EpochLosses(NamedTuple):
    """Training losses of one epoch, in nats per image (batch-size-weighted averages of the
    values seen while training): ``loss = recon + kl`` (the negative ELBO), its two parts."""

    loss: float
    recon: float
    kl: float


class FastTrainer:
    """Train ``model`` on ``batches`` with Adam; see the module docstring.

    Args:
        model: an :class:`MLPVAE` on the batches' device.
        batches: the training batches (one ``iter()`` is one epoch).
        lr: Adam's learning rate.
        beta: KL weight of the objective ``recon + beta * kl`` (batch mean, nats per image).
        cuda_graph: capture the step in a CUDA graph; default True on CUDA, and it must be
            False elsewhere.

    Raises:
        ValueError: the model and the batches are on different devices, or ``cuda_graph``
            asked for off CUDA.
    """

    def __init__(
        self,
        model: MLPVAE,
        batches: ImageBatches,
        *,
        lr: float = 1e-3,
        beta: float = 1.0,
        cuda_graph: bool | None = None,
    ):
        device = next(model.parameters()).device
        if device != batches.device:
            raise ValueError(
                f"model and batches must be on the same device: model on {device}, batches "
                f"on {batches.device}"
            )
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        _checks.beta(beta)
        on_cuda = device.type == "cuda"
        if cuda_graph is None:
            cuda_graph = on_cuda
        if cuda_graph and not on_cuda:
            raise ValueError(f"cuda_graph=True needs a CUDA device, the model is on {device}")
        self.model, self.batches, self.beta = model, batches, float(beta)
        self.device, self.cuda_graph = device, bool(cuda_graph)
        # fused: one multi-tensor kernel per step; capturable: the step count lives on the
        # device, so the update can be captured in a graph.
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=lr, fused=on_cuda, capturable=self.cuda_graph
        )
        self._sums = torch.zeros(2, dtype=torch.float64, device=device)  # recon, kl (* images)
        self._images = torch.zeros((), dtype=torch.float64, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_x: torch.Tensor | None = None

    # ------------------------------------------------------------------ one step

    def _step(self, x: torch.Tensor) -> None:
        out = self.model.loss(x, beta=self.beta)
        out.loss.backward()
        self.optimizer.step()
        parts = torch.stack([out.recon.detach(), out.kl.detach()]).to(torch.float64)
        self._sums.add_(parts, alpha=x.shape[0])
        self._images.add_(x.shape[0])

    def _eager_step(self, x: torch.Tensor) -> None:
        # set_to_none=False keeps the gradient buffers a captured graph writes into.
        self.optimizer.zero_grad(set_to_none=self._graph is None)
        self._step(x)

    def _capture(self, x: torch.Tensor) -> None:
        """Warm up (compiles the kernels, creates Adam's state), capture one step for x's
        shape (capturing runs nothing), then undo the warm-up step: the parameters, Adam's
        state and the running loss sums are as before, so no batch is trained on or counted
        twice."""
        before = self.snapshot()
        sums, images = self._sums.clone(), self._images.clone()
        self._warm_up(x)
        self._static_x = x.clone()
        self.optimizer.zero_grad(set_to_none=True)  # the graph allocates its own gradients
        self._graph = self._record(self._static_x)
        self.reset(before)
        with torch.no_grad():
            self._sums.copy_(sums)
            self._images.copy_(images)

    def _warm_up(self, x: torch.Tensor) -> None:
        """One eager step on a side stream, as CUDA graph capture requires."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._eager_step(x)
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def _record(self, static_x: torch.Tensor) -> torch.cuda.CUDAGraph:
        """A CUDA graph of one step on ``static_x`` (recorded, not run)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(static_x)
        return graph

    def step(self, x: torch.Tensor) -> None:
        """One training step on batch ``x`` ``(B, C, H, W)``: a graph replay when a graph was
        captured for this shape (capturing one on the first full batch), else eager."""
        if self.cuda_graph and self._graph is None:
            self._capture(x)
        if self._graph is not None and x.shape == self._static_x.shape:
            self._static_x.copy_(x)
            self._graph.replay()
        else:
            self._eager_step(x)

    # ------------------------------------------------------------------ state

    @torch.no_grad()
    def snapshot(self) -> dict[str, list[torch.Tensor]]:
        """Copies of the parameters and of Adam's state tensors, for :meth:`reset`."""
        params = [p.detach().clone() for p in self.model.parameters()]
        state = [
            {k: v.clone() for k, v in self.optimizer.state[p].items() if torch.is_tensor(v)}
            for p in self.model.parameters()
        ]
        return {"params": params, "state": state}

    @torch.no_grad()
    def reset(self, snapshot: dict[str, list[torch.Tensor]]) -> None:
        """Restore :meth:`snapshot` in place (a captured graph keeps its buffers): parameters
        copied back; Adam's state copied back, or zeroed where the snapshot predates it (a
        zero state with step 0 is exactly a fresh Adam); the running loss sums cleared."""
        params = list(self.model.parameters())
        for p, saved, saved_state in zip(params, snapshot["params"], snapshot["state"]):
            p.copy_(saved)
            for k, v in self.optimizer.state[p].items():
                if not torch.is_tensor(v):
                    continue
                if k in saved_state:
                    v.copy_(saved_state[k])
                else:
                    v.zero_()
        self._sums.zero_()
        self._images.zero_()

    # ------------------------------------------------------------------ epochs

    def run_epoch(self) -> torch.Tensor:
        """One pass over the batches; returns the epoch's mean (recon, kl) per image as a
        float64 device tensor ``(2,)`` without waiting for the device."""
        self.model.train()
        self._sums.zero_()
        self._images.zero_()
        for x, _ in self.batches:
            self.step(x)
        return self._sums / self._images

    def fit(self, epochs: int) -> list[EpochLosses]:
        """Train ``epochs`` epochs; returns each epoch's training losses (one host sync, at
        the end)."""
        _checks.positive_int("epochs", epochs)
        per_epoch = torch.stack([self.run_epoch() for _ in range(epochs)]).tolist()
        return [EpochLosses(r + k, r, k) for r, k in per_epoch]
