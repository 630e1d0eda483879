"""Public API: backend dispatch, nn.Module wrappers, operator registration (bad input:
test_bad_input.py)."""

import pytest
import torch
from helpers import assert_close

import fastvae
from fastvae import reference
from fastvae.kernels import _common
from fastvae.ops import latent as latent_op
from fastvae.ops import recon as recon_op


def small(device="cpu", shape=(4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device) for _ in range(4)]


def test_auto_backend_is_the_torch_path_on_cpu(monkeypatch):
    """"auto" on CPU tensors runs fastvae.torch_backend (bitwise the "torch" backend), which
    matches the reference; reparameterize draws the reference's noise from the same seed."""
    monkeypatch.delenv("FASTVAE_BACKEND", raising=False)
    recon, x, mu, lv = small()
    x = x.sigmoid()
    got = fastvae.elbo_loss(recon, x, mu, lv, beta=2.0)
    torch_path = fastvae.elbo_loss(recon, x, mu, lv, beta=2.0, backend="torch")
    want = reference.elbo_loss(recon, x, mu, lv, beta=2.0)
    for a, b, c in zip(got, torch_path, want):
        assert torch.equal(a, b)
        assert_close(a, c)
    torch.manual_seed(0)
    z = fastvae.reparameterize(mu, lv)
    torch.manual_seed(0)
    assert_close(z, reference.reparameterize(mu, lv))


def test_backend_from_environment(monkeypatch, device):
    recon, x, mu, lv = small(device)
    monkeypatch.setenv("FASTVAE_BACKEND", "triton")
    assert fastvae.functional.resolve_backend(None, mu) == "triton"
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    assert fastvae.functional.resolve_backend(None, mu) == "torch"
    assert fastvae.functional.resolve_backend("triton", mu) == "triton"  # the argument wins
    monkeypatch.setenv("FASTVAE_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTVAE_BACKEND must be one of"):
        fastvae.gaussian_kl(mu, lv)
    with pytest.raises(ValueError, match="backend must be one of .*'fast'"):
        fastvae.gaussian_kl(mu, lv, backend="fast")


def test_triton_backend_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(_common, "INTERPRETED", False)
    _, _, mu, lv = small("cpu")
    with pytest.raises(ValueError, match="need CUDA tensors .*TRITON_INTERPRET=1"):
        fastvae.sample_and_kl(mu, lv, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter only runs without CUDA here")
def test_bfloat16_under_interpreter_is_refused():
    _, _, mu, lv = small()
    with pytest.raises(ValueError, match="bfloat16"):
        fastvae.gaussian_kl(mu.bfloat16(), lv.bfloat16(), backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_elbo_is_recon_plus_beta_kl(backend, device):
    recon, x, mu, lv = small(device, seed=1)
    x = x.sigmoid()
    for beta in (0.0, 1.0, 4.0):
        out = fastvae.elbo_loss(recon, x, mu, lv, beta=beta, reduction="none", backend=backend)
        assert isinstance(out, fastvae.ELBO)
        assert_close(out.loss, out.recon + beta * out.kl)
        assert_close(out.recon, reference.reconstruction_loss(recon, x, reduction="none"))
        assert_close(out.kl, reference.gaussian_kl(mu, lv, "none"))


def test_modules_match_functional(device):
    recon, x, mu, lv = small(device, seed=2)
    x = x.sigmoid()
    crit = fastvae.ELBOLoss(beta=3.0, reduction="sum", backend="triton")
    assert "beta=3.0" in repr(crit)
    got = crit(recon, x, mu, lv)
    want = fastvae.elbo_loss(recon, x, mu, lv, beta=3.0, reduction="sum", backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    rec = fastvae.ReconstructionLoss("mse", "none", backend="triton")(recon, x)
    assert torch.equal(
        rec, fastvae.reconstruction_loss(recon, x, "mse", reduction="none", backend="triton")
    )
    kl = fastvae.GaussianKL(backend="triton")(mu, lv)
    assert torch.equal(kl, fastvae.gaussian_kl(mu, lv, "batchmean", backend="triton"))
    kl = fastvae.GaussianKL("mean", backend="triton")(mu, lv)
    assert torch.equal(kl, fastvae.gaussian_kl(mu, lv, "mean", backend="triton"))
    for backend in ("torch", "triton"):
        gen = torch.Generator().manual_seed(4)
        z, kl = fastvae.GaussianSampler("sum", backend=backend)(mu, lv, generator=gen)
        want = fastvae.sample_and_kl(mu, lv, reduction="sum", backend=backend,
                                     generator=torch.Generator().manual_seed(4))
        assert torch.equal(z, want.z) and torch.equal(kl, want.kl)


def test_operator_registrations(device):
    """torch.library.opcheck: schema, fake tensors, AOT dispatch. The ops are the kernel
    boundary, not differentiable themselves (autograd is the op modules' Function around
    them), so they are checked on tensors that do not require grad."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 5, generator=g).to(device).requires_grad_(True)
    lv = torch.randn(3, 5, generator=g).to(device).requires_grad_(True)
    seed = torch.tensor([7, 3], device=device)  # the Philox key: (seed, counter offset)
    for reduction in ("none", "mean", "batchmean"):
        torch.library.opcheck(latent_op.sample_and_kl_op,
                              (mu.detach(), lv.detach(), seed, 2, True, True, reduction))
    torch.library.opcheck(latent_op.sample_and_kl_backward_op,
                          (mu.detach(), lv.detach(), seed, 1, torch.ones(3, 5, device=device),
                           torch.ones((), device=device), "batchmean", 0.5))
    recon = torch.randn(3, 7, generator=g).to(device).requires_grad_(True)
    x = torch.rand(3, 7, generator=g).to(device)
    for reduction in ("none", "mean", "batchmean"):
        torch.library.opcheck(recon_op.reconstruction_loss_op,
                              (recon.detach(), x, lv[:, :1].expand(3, 7).detach(), 0.0, "gaussian",
                               reduction, True, True, False, None, 1.0))
        kl = torch.rand(3 if reduction == "none" else (), device=device)
        torch.library.opcheck(recon_op.reconstruction_loss_op,
                              (recon.detach(), x, None, -0.5, "gaussian", reduction, False, True,
                               False, kl, 0.25))
    torch.library.opcheck(recon_op.reconstruction_loss_backward_op,
                          (recon.detach(), x, None, 0.0, "mse", torch.ones(3, device=device), True,
                           False))


def test_compiles_without_graph_breaks(device, monkeypatch):
    """A loss head made of fastvae ops traces with torch.compile(fullgraph=True)."""
    # Compiled code draws the Philox key on the device (torch.randint); eager CUDA calls read
    # it from the generator's offset. Pin eager to the device draw: the same noise for both.
    monkeypatch.setattr(latent_op, "_host_key", lambda *args: None)
    mu, lv, recon = (t.requires_grad_(True) for t in small(device, seed=3)[:3])
    x = torch.rand(4, 6, device=device)

    def head(mu, lv, recon, x):
        z, kl = fastvae.sample_and_kl(mu, lv, backend="triton")
        rec = fastvae.reconstruction_loss(recon + z, x, backend="triton")
        return rec + 2.0 * kl

    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    got = compiled(mu, lv, recon, x)
    got.backward()
    grads = [t.grad.clone() for t in (mu, lv, recon)]
    assert all(torch.isfinite(g).all() for g in grads)
    for t in (mu, lv, recon):
        t.grad = None
    torch.manual_seed(1)
    want = head(mu, lv, recon, x)
    want.backward()
    assert_close(got, want)
    for a, t in zip(grads, (mu, lv, recon)):
        assert_close(a, t.grad)


def test_every_entry_point_compiles_and_matches_eager(device, monkeypatch):
    """reparameterize (its KL output switched off), gaussian_kl (its sample switched off) and
    the fused elbo_loss under torch.compile(fullgraph=True): the values and gradients of
    eager calls. AOT autograd hands an output that was switched off a gradient of zeros;
    it must be ignored (its buffer is empty)."""
    monkeypatch.setattr(latent_op, "_host_key", lambda *args: None)  # as above
    mu, lv, recon = (t.requires_grad_(True) for t in small(device, seed=5)[:3])
    x = torch.rand(4, 6, device=device)

    def head(mu, lv, recon, x):
        z = fastvae.reparameterize(mu, lv, backend="triton")
        out = fastvae.elbo_loss(recon + z, x, mu, lv, beta=0.5, backend="triton")
        return out.loss + fastvae.gaussian_kl(mu, lv, "sum", backend="triton")

    results = []
    for fn in (torch.compile(head, backend="aot_eager", fullgraph=True), head):
        torch.manual_seed(2)
        loss = fn(mu, lv, recon, x)
        results.append((loss, torch.autograd.grad(loss, (mu, lv, recon))))
    (got, got_g), (want, want_g) = results
    assert_close(got, want)
    for a, b in zip(got_g, want_g):
        assert_close(a, b)
