"""The training engine (fastvae.train.engine): one train_step, eager on the CPU and replayed
from CUDA graphs on a GPU; compile and CUDA-graph safety of a training step."""

import copy

import numpy as np
import pytest
import torch
from helpers import KERNEL_DEVICE, assert_close

import fastvae
from fastvae.data import ImageBatches, ShardedImageBatches
from fastvae.ops import latent as latent_op
from fastvae.train import TrainConfig, build
from fastvae.train.engine import Engine, Records, step_seeds, train_step
from fastvae.train.graphs import StepGraphs, _lr_on_device

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _images(n=40, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 8, 8), generator=g, dtype=torch.uint8).to(device)


def _setup(device="cpu", n=40, dropout=0.0, seed=0, **kwargs):
    """A small MLPVAE, fused Adam as `fastvae train` builds it, and 40 images in batches of
    16 (the last batch holds 8) in the order of (seed, epoch), as `fastvae train` has them."""
    torch.manual_seed(seed)
    images = _images(n, device=device)
    batches = ShardedImageBatches(images, torch.zeros(n, device=device), 16, seed=seed)
    model = fastvae.MLPVAE((1, 8, 8), (32,), 4, dropout=dropout).to(device)
    cfg = TrainConfig(lr=1e-3)
    optimizer = build.build_optimizer(cfg, model)
    return model, optimizer, batches, Engine(model, optimizer, seed=seed, **kwargs)


def _weights(model, optimizer):
    state = optimizer.state_dict()["state"]
    return [p.detach().clone() for p in model.parameters()] + [
        v.detach().clone() for s in state.values() for v in s.values() if torch.is_tensor(v)]


def test_step_seeds_are_a_pure_function_of_seed_epoch_step():
    a = step_seeds(0, 3, 10, 2)
    assert a.shape == (10, 2, 2) and a.dtype == np.uint64
    assert np.array_equal(a, step_seeds(0, 3, 10, 2))
    assert np.array_equal(a[:4], step_seeds(0, 3, 4, 2))  # fewer steps: the same prefix
    assert len(np.unique(a)) == a.size  # distinct seeds for every step, stream, generator
    assert not np.array_equal(a, step_seeds(0, 4, 10, 2))
    assert not np.array_equal(a, step_seeds(1, 3, 10, 2))


def test_eager_engine_is_the_textbook_loop():
    """The eager engine is the plain loop, step for step: the same batches, the same noise
    (the step's seed), the same fused Adam: bitwise the same weights and optimizer state,
    and the epoch's losses are the batch-size-weighted means of what model.loss returned."""
    model, optimizer, batches, engine = _setup()
    assert engine.graphs is None and "eager (the device is cpu" in engine.why
    got = engine.fit(batches, 2)
    want_model, want_opt, want_batches, _ = _setup()
    gen = torch.Generator()
    for epoch in (1, 2):
        want_batches.set_epoch(epoch)
        seeds = step_seeds(0, epoch, len(want_batches), 1)
        recon = kl = 0.0
        for step, (x, _) in enumerate(want_batches):
            gen.manual_seed(int(seeds[step, 0, 0]))
            out = want_model.loss(x, generator=gen)
            want_opt.zero_grad(set_to_none=True)
            out.loss.backward()
            want_opt.step()
            recon += out.recon.item() * x.shape[0]
            kl += out.kl.item() * x.shape[0]
        assert got[epoch - 1].recon == pytest.approx(recon / 40, rel=1e-12)
        assert got[epoch - 1].kl == pytest.approx(kl / 40, rel=1e-12)
        assert got[epoch - 1].first_bad is None and got[epoch - 1].steps == 3
    for a, b in zip(_weights(model, optimizer), _weights(want_model, want_opt)):
        assert torch.equal(a, b)


def test_resume_is_bitwise_on_the_eager_path():
    """Epoch 2 trained after a checkpoint round trip (new model, new optimizer, new engine)
    ends bitwise where an uninterrupted run ends; dropout draws are seeded per step too."""
    model, optimizer, batches, engine = _setup(dropout=0.2)
    engine.fit(batches, 2)
    first, opt1, batches1, engine1 = _setup(dropout=0.2)
    engine1.fit(batches1, 1)
    saved = copy.deepcopy((first.state_dict(), opt1.state_dict()))
    torch.manual_seed(123)  # the global generators' state must not matter
    second, opt2, batches2, engine2 = _setup(dropout=0.2)
    second.load_state_dict(saved[0])
    build.load_optimizer_state(opt2, saved[1])
    engine2.fit(batches2, 1, first_epoch=2)
    for a, b in zip(_weights(model, optimizer), _weights(second, opt2)):
        assert torch.equal(a, b)


def test_nonfinite_stop_is_recorded_on_the_device_and_named_at_the_end(monkeypatch):
    """With nonfinite "stop" nothing is read during the epoch: the first bad step comes from
    the device records when the epoch ends."""
    model, optimizer, batches, engine = _setup()
    real = model.loss
    calls = []

    def loss(x, **kwargs):
        calls.append(1)
        out = real(x, **kwargs)
        return out._replace(recon=out.recon * float("nan")) if len(calls) == 2 else out

    monkeypatch.setattr(model, "loss", loss)
    losses = engine.train_epoch(1, batches)
    assert losses.first_bad == 1 and losses.steps == 3 and losses.skipped == 0


def test_nonfinite_skip_drops_the_step(monkeypatch, capsys):
    model, optimizer, batches, engine = _setup(nonfinite="skip")
    real = model.loss
    calls = []

    def loss(x, **kwargs):
        calls.append(1)
        out = real(x, **kwargs)
        return out._replace(loss=out.loss * float("nan"), recon=out.recon * float("nan")) \
            if len(calls) == 2 else out

    monkeypatch.setattr(model, "loss", loss)
    losses = engine.train_epoch(1, batches)
    assert losses.skipped == 1 and losses.first_bad is None
    assert "epoch 1, step 2 of 3: step skipped" in capsys.readouterr().out
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_micro_batches_give_the_gradient_of_the_batch_mean():
    """train_step over micro-batches (each's batch mean weighted by its share) steps like one
    batch: with no noise (an autoencoder) the updates agree to rounding."""
    torch.manual_seed(0)
    x = torch.rand(12, 1, 8, 8)
    models = [fastvae.models.MLPAutoencoder((1, 8, 8), (16,), 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    for model, opt, parts in zip(models, opts, ([x], [x[0::3], x[1::3], x[2::3]])):
        records = Records(1, torch.device("cpu"))
        assert train_step(lambda b, m=model: m.loss(b), opt, parts, records)
        assert records.count.item() == 1
    for a, b in zip(*(m.parameters() for m in models)):
        assert_close(a, b)


class _ReplayEagerly:
    """Stands in for a CUDA graph on the CPU: replay runs the recorded step eagerly."""

    def __init__(self, engine, static_x):
        self.engine, self.static_x = engine, static_x

    def replay(self):
        train_step(self.engine.objective, self.engine.optimizer, [self.static_x],
                   self.engine.records)


def _stand_in_graphs(monkeypatch, engine, seen):
    """The graph path exercised on the CPU: the warm-up runs eagerly, the "graph" replays the
    step eagerly; ``seen`` collects the batch sizes of the warm-ups."""
    monkeypatch.setattr(StepGraphs, "_warm_up", lambda self, x: (
        seen.append(x.shape[0]),
        train_step(self.engine.objective, self.engine.optimizer, [x], self.engine.records)))
    monkeypatch.setattr(StepGraphs, "_record", lambda self, x: _ReplayEagerly(self.engine, x))
    engine.graphs = StepGraphs(engine)


def test_graph_path_trains_exactly_like_the_eager_path(monkeypatch):
    """The CUDA-graph path's logic on the CPU (stand-in graphs): one graph per batch size
    (the full batch and the last partial one), the capture's warm-up undone (not trained on,
    not counted), the noise reseeded before every replay: bitwise the eager run's weights,
    optimizer state and losses."""
    model, optimizer, batches, engine = _setup(dropout=0.1)
    seen = []
    _stand_in_graphs(monkeypatch, engine, seen)
    got = engine.fit(batches, 2)
    assert sorted(engine.graphs.graphs) == [8, 16] and seen == [16, 8]
    want_model, want_opt, want_batches, eager = _setup(dropout=0.1)
    _lr_on_device(want_opt, torch.device("cpu"))  # the same Adam arithmetic (a tensor lr)
    want = eager.fit(want_batches, 2)
    assert [tuple(g)[:3] for g in got] == [tuple(w)[:3] for w in want]
    for a, b in zip(_weights(model, optimizer), _weights(want_model, want_opt)):
        assert torch.equal(a, b)


def test_a_schedule_reaches_the_captured_learning_rate():
    """The graph path keeps each group's learning rate in one device tensor that the
    scheduler fills in place, so a captured update reads the rate of the current epoch."""
    model, optimizer, batches, engine = _setup()
    _lr_on_device(optimizer, torch.device("cpu"))
    lr = optimizer.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    engine.fit(batches, 1)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] is lr
    assert lr.item() == pytest.approx(1e-3 * (1 + np.cos(np.pi / 4)) / 2)
    build.load_optimizer_state(optimizer, optimizer.state_dict())  # a checkpoint: a float again
    assert isinstance(optimizer.param_groups[0]["lr"], float)


def test_cuda_graph_refused_with_the_reason():
    with pytest.raises(ValueError, match="the device is cpu; CUDA graphs need a CUDA device"):
        _setup(cuda_graph=True)


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
    monkeypatch.setattr(latent_op, "_host_key", lambda *args: None)
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


# ------------------------------------------------------------------ the engine on CUDA


@pytest.mark.cuda
def test_cuda_engine_takes_the_graph_path_and_matches_the_eager_step():
    """A model without noise (an autoencoder): the graphed engine and the eager one take
    the same steps (to rounding), the partial batch through its own graph."""
    results = []
    for graph in (None, False):
        torch.manual_seed(0)
        images = _images(40, device="cuda")
        batches = ImageBatches(images, torch.zeros(40, device="cuda"), 16, seed=0)
        model = fastvae.models.MLPAutoencoder((1, 8, 8), (32,), 4).cuda()
        optimizer = build.build_optimizer(TrainConfig(), model)
        engine = Engine(model, optimizer, cuda_graph=graph)
        losses = engine.fit(batches, 3)
        results.append((losses, [p.detach().clone() for p in model.parameters()], engine))
    (g_losses, g_params, g_engine), (e_losses, e_params, e_engine) = results
    assert g_engine.graphs is not None and sorted(g_engine.graphs.graphs) == [8, 16]
    assert e_engine.graphs is None and "cuda_graph=False" in e_engine.why
    for a, b in zip(g_params, e_params):
        assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert g_losses[-1].recon == pytest.approx(e_losses[-1].recon, rel=1e-4)


@pytest.mark.cuda
def test_cuda_graph_replays_draw_fresh_noise_per_step_and_repeat_per_seed():
    """One image repeated (every batch the same) and a learning rate too small to move the
    weights: every step of an epoch records a different loss (fresh noise per replay), and
    the epoch run again records the same losses (the noise is a function of (seed, epoch,
    step))."""
    torch.manual_seed(0)
    images = _images(1, device="cuda").expand(64, -1, -1).contiguous()
    batches = ImageBatches(images, torch.zeros(64, device="cuda"), 16, shuffle=False)
    model = fastvae.MLPVAE((1, 8, 8), (32,), 4).cuda()
    optimizer = build.build_optimizer(TrainConfig(lr=1e-12), model)
    engine = Engine(model, optimizer)
    assert engine.graphs is not None
    engine.train_epoch(1, batches)
    first = engine.records.values[:4].clone()
    engine.train_epoch(1, batches)
    again = engine.records.values[:4].clone()
    assert len(set(first[:, 0].tolist())) == 4
    assert_close(first, again, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_graph_resume_is_bitwise():
    """Epoch 2 after a checkpoint round trip (a new engine captures new graphs) ends bitwise
    where the uninterrupted graphed run ends, dropout included."""
    model, optimizer, batches, engine = _setup("cuda", dropout=0.2)
    assert engine.graphs is not None
    engine.fit(batches, 2)
    first, opt1, batches1, engine1 = _setup("cuda", dropout=0.2)
    engine1.fit(batches1, 1)
    saved = copy.deepcopy((first.state_dict(), opt1.state_dict()))
    second, opt2, batches2, engine2 = _setup("cuda", dropout=0.2)
    second.load_state_dict(saved[0])
    build.load_optimizer_state(opt2, saved[1])
    engine2.fit(batches2, 1, first_epoch=2)
    for a, b in zip(_weights(model, optimizer), _weights(second, opt2)):
        assert torch.equal(a, b)
