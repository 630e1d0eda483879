"""The fast training path (fastvae.fastpath), and compile / CUDA-graph safety of a training step."""

import pytest
import torch

import fastvae
from fastvae import _ops
from fastvae.data import ImageBatches
from fastvae.fastpath import FastTrainer
from helpers import KERNEL_DEVICE, assert_close


def _images(n=40, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 8, 8), generator=g, dtype=torch.uint8).to(device)


def _trainer(seed=0, device="cpu", **kwargs):
    torch.manual_seed(seed)
    images = _images(device=device)
    batches = ImageBatches(images, torch.zeros(images.shape[0], device=device), 16, seed=seed)
    model = fastvae.MLPVAE((1, 8, 8), (32,), 4).to(device)
    return FastTrainer(model, batches, **kwargs)


def test_trains_and_is_reproducible():
    losses = _trainer().fit(3)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(l)).all() for l in losses)
    assert losses[-1].loss < losses[0].loss
    assert all(abs(l.loss - (l.recon + l.kl)) < 1e-9 for l in losses)
    assert _trainer().fit(3) == losses  # same seed, same numbers (CPU, eager)


def test_matches_a_plain_training_loop():
    """Eager FastTrainer is the textbook loop: same batches, same noise, same Adam, same
    per-epoch losses (batch-size-weighted means of what model.loss returned)."""
    got = _trainer().fit(2)
    torch.manual_seed(0)
    images = _images()
    batches = ImageBatches(images, torch.zeros(images.shape[0]), 16, seed=0)
    model = fastvae.MLPVAE((1, 8, 8), (32,), 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(2):
        recon = kl = 0.0
        for x, _ in batches:
            out = model.loss(x)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            recon += out.recon.item() * x.shape[0]
            kl += out.kl.item() * x.shape[0]
        assert abs(got[epoch].recon - recon / 40) < 1e-9 * recon
        assert abs(got[epoch].kl - kl / 40) < 1e-9 * kl


def test_reset_restores_weights_and_a_fresh_adam():
    trainer = _trainer()
    start, rng = trainer.snapshot(), torch.get_rng_state()
    first = trainer.fit(1)
    trainer.reset(start)
    for p, saved in zip(trainer.model.parameters(), start["params"]):
        assert torch.equal(p, saved)
    for st in trainer.optimizer.state.values():
        assert all((v == 0).all() for v in st.values() if torch.is_tensor(v))
    trainer.batches.generator.manual_seed(0)
    torch.set_rng_state(rng)
    assert trainer.fit(1) == first


def test_bad_arguments():
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        _trainer(cuda_graph=True)
    with pytest.raises(ValueError, match="lr must be > 0"):
        _trainer(lr=0.0)
    with pytest.raises(ValueError, match="beta"):
        _trainer(beta=-1.0)
    with pytest.raises(ValueError, match="epochs"):
        _trainer().fit(0)


# ------------------------------------------------------------------ compile safety


@pytest.mark.parametrize(
    "compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.cuda)]
)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_training_step_compiles_without_graph_breaks(backend, compiler, monkeypatch):
    """MLPVAE's whole loss (encoder, fused sample + KL, decoder, fused recon loss) traces with
    torch.compile(fullgraph=True) -- a graph break raises -- and the compiled step's loss and
    gradients equal eager ones for the same noise. On the CPU the compiler is "aot_eager" (AOT
    autograd's forward and backward graphs, no C++ build: inductor's first CPU compile of this
    step takes most of a minute); on CUDA inductor too, with its random ops falling back to
    aten's so that the reference backend draws the same noise as eager."""
    # Compiled code draws the Philox key on the device (torch.randint); eager CUDA calls read
    # it from the generator's offset. Pin eager to the device draw: the same noise for both.
    monkeypatch.setattr(_ops, "_host_key", lambda *args: None)
    torch.manual_seed(0)
    model = fastvae.MLPVAE((1, 6, 6), (16,), 3, backend=backend).to(KERNEL_DEVICE)
    x = torch.rand(5, 1, 6, 6, device=KERNEL_DEVICE)
    if compiler == "inductor":
        import torch._inductor.config as inductor_config

        monkeypatch.setattr(inductor_config, "fallback_random", True)
    compiled = torch.compile(model.loss, backend=compiler, fullgraph=True)

    def step(fn):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = fn(x)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters()]

    torch._dynamo.reset()
    got_loss, got_grads = step(compiled)
    want_loss, want_grads = step(model.loss)
    assert_close(got_loss, want_loss)
    for a, b in zip(got_grads, want_grads):
        assert_close(a, b)


# ------------------------------------------------------------------ CUDA graphs


@pytest.mark.cuda
def test_captured_training_step_draws_fresh_noise():
    """Replaying a captured loss + backward step on the same batch and weights gives new
    losses and gradients each time (new noise), which average to the eager expectation."""
    torch.manual_seed(0)
    model = fastvae.MLPVAE((1, 8, 8), (32,), 4).cuda()
    x = torch.rand(64, 1, 8, 8, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        model.loss(x).loss.backward()  # warm-up: compiles the kernels
    torch.cuda.current_stream().wait_stream(stream)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = model.loss(x).loss
        loss.backward()
    grad = model.head.weight.grad
    values, grads = [], []
    for _ in range(4):
        graph.replay()
        values.append(loss.item())
        grads.append(grad.clone())
    assert len(set(values)) == 4
    assert not torch.equal(grads[0], grads[1])
    with torch.no_grad():
        eager = torch.stack([model.loss(x).loss for _ in range(64)]).mean().item()
    assert abs(sum(values) / 4 - eager) < 0.05 * abs(eager)


@pytest.mark.cuda
def test_cuda_graph_trainer_matches_eager_training():
    """The graph-replayed trainer trains like the eager one (same data order; the noise
    differs, so the losses agree statistically, not bitwise) and handles the partial batch."""
    graphed = _trainer(device="cuda")
    eager = _trainer(device="cuda", cuda_graph=False)
    assert graphed.cuda_graph and not eager.cuda_graph
    a, b = graphed.fit(5), eager.fit(5)
    assert graphed._graph is not None
    once = _trainer(device="cuda")
    once.run_epoch()  # the epoch that captures the graph
    assert once._images.item() == 40  # the capture's warm-up step is not counted
    assert abs(a[-1].loss - b[-1].loss) < 0.05 * abs(b[-1].loss)


class _ReplayEagerly:
    """Stands in for a CUDA graph on the CPU: replay runs the recorded step eagerly."""

    def __init__(self, trainer, static_x):
        self.trainer, self.static_x = trainer, static_x

    def replay(self):
        self.trainer.optimizer.zero_grad(set_to_none=True)
        self.trainer._step(self.static_x)


def test_graph_capture_warm_up_is_not_counted(monkeypatch):
    """The capture's warm-up step runs the step once more on the first batch; its losses must
    not enter the epoch's sums (the capture path exercised on the CPU: the side-stream
    warm-up runs eagerly, the "graph" replays the step eagerly)."""
    monkeypatch.setattr(FastTrainer, "_warm_up", lambda self, x: self._eager_step(x))
    monkeypatch.setattr(FastTrainer, "_record", lambda self, x: _ReplayEagerly(self, x))
    trainer = _trainer()
    trainer.cuda_graph = True  # take the capture path on the CPU
    seen = []
    step = trainer._step
    monkeypatch.setattr(trainer, "_step", lambda x: (seen.append(x.shape[0]), step(x)))
    trainer.run_epoch()
    assert trainer._graph is not None
    assert seen == [16, 16, 16, 8]  # the warm-up, then the epoch's 16 + 16 + 8 images
    assert trainer._images.item() == 40  # counted once each, the warm-up not at all
