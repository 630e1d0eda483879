"""fastvae as a drop-in: torch's reductions, and other people's VAE losses in one call each.

Every public loss is pinned, per reduction, to its torch equivalent (``F.mse_loss``,
``F.binary_cross_entropy_with_logits``, ``F.binary_cross_entropy``, ``F.gaussian_nll_loss``,
``torch.distributions.kl_divergence``), values and gradients. Then the loss conventions of
three well-known VAE codes, each written here from its formula as a hand-written torch
expression (not copied), against the single fastvae call that replaces it:

- pytorch/examples ``vae/main.py``: summed ``F.binary_cross_entropy`` on the decoder's
  probabilities plus the summed KL -0.5 * sum(1 + logvar - mu^2 - exp(logvar));
- AntixK/PyTorch-VAE ``VanillaVAE``: per-element ``F.mse_loss`` mean plus ``kld_weight`` times
  the per-sample KL averaged over the batch;
- pythae ``VAE``: 0.5 * sum (x - r)^2 per sample (or the per-sample summed BCE on
  probabilities) plus the per-sample KL, averaged over the batch;
- a fixed-variance Gaussian decoder: a float log-variance, or a broadcast tensor (one per
  pixel), never expanded to B x D.

All on both backends: "torch" and "triton" (the kernels; Triton's interpreter on a CPU-only
machine). Run with ``-s`` to print each convention's largest difference to its expression.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close
from torch.distributions import Normal, kl_divergence

import fastvae

BACKENDS = ["torch", "triton"]
REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def leaf(t, device):
    return t.to(device).requires_grad_(True)


def grads(out, inputs):
    return torch.autograd.grad(out.sum() if out.dim() else out, inputs, allow_unused=True)


def max_diff(got, want) -> float:
    pairs = zip(got, want) if isinstance(got, (tuple, list)) else [(got, want)]
    return max(float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())
               for a, b in pairs if a.numel())


def check(name, backend, got, want, got_grads, want_grads):
    """Values and gradients within fp32 tolerance; the largest difference printed."""
    assert_close(got, want, dtype=torch.float32, name=f"{name} value")
    for i, (a, b) in enumerate(zip(got_grads, want_grads)):
        assert_close(a, b, dtype=torch.float32, name=f"{name} gradient {i}")
    print(f"\n[convention] {name} ({backend}): max |diff| value {max_diff(got, want):.3g}, "
          f"gradients {max_diff(list(got_grads), list(want_grads)):.3g}")


def torch_reduce(elem: torch.Tensor, reduction: str) -> torch.Tensor:
    """torch's own reductions of an elementwise loss, with "none" summed per sample and
    "batchmean" the total over the batch size (F.kl_div's meaning)."""
    if reduction == "none":
        return elem.reshape(elem.shape[0], -1).sum(1)
    if reduction == "batchmean":
        return elem.sum() / elem.shape[0]
    return getattr(elem, reduction)()


# ------------------------------------------------------------------ torch's reductions


TORCH_LOSSES = {
    "bernoulli": lambda r, x, red: F.binary_cross_entropy_with_logits(r, x, reduction=red),
    "bernoulli_probs": lambda r, x, red: F.binary_cross_entropy(r, x, reduction=red),
    "mse": lambda r, x, red: F.mse_loss(r, x, reduction=red),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", list(TORCH_LOSSES))
def test_reconstruction_loss_reductions_are_torchs(likelihood, reduction, backend, device):
    """``reduction="mean"`` is ``F.*``'s default (per element), "sum" its sum, "batchmean"
    the sum over B, "none" the per-sample sums of ``reduction="none"``."""
    g = gen(1)
    r = torch.randn(3, 2, 5, generator=g) * 2
    r = torch.sigmoid(r) if likelihood == "bernoulli_probs" else r
    x = torch.rand(3, 2, 5, generator=g)
    r_ours, r_torch = leaf(r, device), leaf(r, device)
    got = fastvae.reconstruction_loss(r_ours, x.to(device), likelihood, reduction=reduction,
                                      backend=backend)
    fn = TORCH_LOSSES[likelihood]
    if reduction in ("sum", "mean"):
        want = fn(r_torch, x.to(device), reduction)
    else:
        want = torch_reduce(fn(r_torch, x.to(device), "none"), reduction)
    check(f"{likelihood} {reduction} vs F", backend, got, want, grads(got, r_ours),
          grads(want, r_torch))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gaussian_reductions_are_gaussian_nll_loss(reduction, backend, device):
    g = gen(2)
    m, x = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    lv = torch.randn(3, 7, generator=g) * 0.5
    m1, lv1, m2, lv2 = (leaf(t, device) for t in (m, lv, m, lv))
    got = fastvae.reconstruction_loss(m1, x.to(device), "gaussian", recon_logvar=lv1,
                                      reduction=reduction, backend=backend)
    elem = F.gaussian_nll_loss(m2, x.to(device), lv2.exp(), full=True, eps=0.0, reduction="none")
    want = torch_reduce(elem, reduction)
    check(f"gaussian {reduction} vs F.gaussian_nll_loss", backend, got, want,
          grads(got, (m1, lv1)), grads(want, (m2, lv2)))


def kl_elements(mu, lv):
    """Per-element KL(N(mu, exp(lv)) || N(0, 1)) from torch.distributions."""
    return kl_divergence(Normal(mu, torch.exp(0.5 * lv)),
                         Normal(torch.zeros_like(mu), torch.ones_like(mu)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kl_reductions_are_torch_distributions(reduction, backend, device):
    """"mean" is the mean of ``kl_divergence`` over all elements, "batchmean" its sum over B
    (``F.kl_div(..., reduction="batchmean")``'s meaning), for gaussian_kl, sample_and_kl and
    the module; a spatial latent (B, C, H, W) sums over all non-batch dims."""
    g = gen(3)
    mu, lv = torch.randn(4, 2, 3, 2, generator=g), torch.randn(4, 2, 3, 2, generator=g)
    m1, v1, m2, v2 = (leaf(t, device) for t in (mu, lv, mu, lv))
    want = torch_reduce(kl_elements(m2, v2), reduction)
    want_grads = grads(want, (m2, v2))
    got = fastvae.gaussian_kl(m1, v1, reduction, backend=backend)
    check(f"gaussian_kl {reduction} vs kl_divergence", backend, got, want, grads(got, (m1, v1)),
          want_grads)
    z, kl = fastvae.sample_and_kl(m1, v1, reduction=reduction, backend=backend)
    assert z.shape == mu.shape
    assert_close(kl, want, dtype=torch.float32, name="sample_and_kl's KL")
    assert_close(fastvae.GaussianKL(reduction, backend=backend)(m1, v1), want, dtype=torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_elbo_and_modules_reduce_like_their_parts(reduction, backend, device):
    g = gen(4)
    r, x = torch.randn(3, 6, generator=g), torch.rand(3, 6, generator=g)
    mu, lv = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    r, x, mu, lv = (t.to(device) for t in (r, x, mu, lv))
    out = fastvae.elbo_loss(r, x, mu, lv, beta=2.0, reduction=reduction, backend=backend)
    rec = torch_reduce(F.binary_cross_entropy_with_logits(r, x, reduction="none"), reduction)
    kl = torch_reduce(kl_elements(mu, lv), reduction)
    assert_close(out.recon, rec, dtype=torch.float32, name="recon")
    assert_close(out.kl, kl, dtype=torch.float32, name="kl")
    assert_close(out.loss, rec + 2.0 * kl, dtype=torch.float32, name="loss")
    mod = fastvae.ELBOLoss(2.0, reduction=reduction, backend=backend)(r, x, mu, lv)
    assert all(torch.equal(a, b) for a, b in zip(mod, out))
    assert torch.equal(fastvae.ReconstructionLoss(reduction=reduction, backend=backend)(r, x),
                       out.recon)


def test_batchmean_is_the_default_everywhere():
    g = gen(5)
    r, x = torch.randn(3, 6, generator=g), torch.rand(3, 6, generator=g)
    mu, lv = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    rec = F.binary_cross_entropy_with_logits(r, x, reduction="sum") / 3
    kl = kl_elements(mu, lv).sum() / 3
    assert_close(fastvae.reconstruction_loss(r, x), rec)
    assert_close(fastvae.gaussian_kl(mu, lv), kl)
    assert_close(fastvae.sample_and_kl(mu, lv).kl, kl)
    assert_close(fastvae.elbo_loss(r, x, mu, lv).loss, rec + kl)
    assert_close(fastvae.ELBOLoss()(r, x, mu, lv).loss, rec + kl)
    assert_close(fastvae.ReconstructionLoss()(r, x), rec)
    assert_close(fastvae.GaussianKL()(mu, lv), kl)
    assert_close(fastvae.GaussianSampler()(mu, lv).kl, kl)


# ------------------------------------------------------------------ the three codes


def handwritten_kl_sum(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def handwritten_kl_per_sample(mu, logvar):
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def inputs(device, *, b=4, d=12, latent=3, probs=False, seed=6):
    g = gen(seed)
    r = torch.randn(b, d, generator=g) * 2
    r = torch.sigmoid(r) if probs else r
    x = torch.rand(b, d, generator=g)
    mu, lv = torch.randn(b, latent, generator=g), torch.randn(b, latent, generator=g) * 0.5
    return ([leaf(t, device) for t in (r, mu, lv)], [leaf(t, device) for t in (r, mu, lv)],
            x.to(device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pytorch_examples_vae(backend, device):
    """pytorch/examples vae/main.py: BCE(recon_x, x, sum) on sigmoid outputs + summed KL."""
    ours, theirs, x = inputs(device, probs=True)
    loss = fastvae.elbo_loss(*ours[:1], x, *ours[1:], likelihood="bernoulli_probs",
                             reduction="sum", backend=backend).loss
    recon_x, mu, logvar = theirs
    want = F.binary_cross_entropy(recon_x, x, reduction="sum") + handwritten_kl_sum(mu, logvar)
    check("pytorch/examples", backend, loss, want, grads(loss, ours), grads(want, theirs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_antixk_vanilla_vae(backend, device):
    """AntixK VanillaVAE: F.mse_loss(recons, input) + kld_weight * batch mean of per-sample KL."""
    kld_weight = 0.00025
    ours, theirs, x = inputs(device, d=3 * 4 * 4)
    ours[0], theirs[0] = (leaf(t.detach().reshape(4, 3, 4, 4), device)
                          for t in (ours[0], theirs[0]))
    x = x.reshape(4, 3, 4, 4)
    loss = fastvae.elbo_loss(ours[0], x, *ours[1:], beta=kld_weight, likelihood="mse",
                             reduction="mean", kl_reduction="batchmean", backend=backend).loss
    recons, mu, log_var = theirs
    want = (F.mse_loss(recons, x)
            + kld_weight * torch.mean(handwritten_kl_per_sample(mu, log_var), dim=0))
    check("AntixK VanillaVAE", backend, loss, want, grads(loss, ours), grads(want, theirs))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("recon", ["mse", "bce"])
def test_pythae_vae(recon, backend, device):
    """pythae VAE: (0.5 * sum (x - r)^2 per sample, or summed BCE on probabilities, + per-sample
    KL), averaged over the batch."""
    ours, theirs, x = inputs(device, probs=recon == "bce")
    if recon == "mse":
        kw = dict(likelihood="gaussian", recon_logvar=0.0, full=False)
    else:
        kw = dict(likelihood="bernoulli_probs")
    loss = fastvae.elbo_loss(ours[0], x, *ours[1:], backend=backend, **kw).loss
    recon_x, mu, log_var = theirs
    b = x.shape[0]
    if recon == "mse":
        per_sample = 0.5 * F.mse_loss(recon_x.reshape(b, -1), x.reshape(b, -1),
                                      reduction="none").sum(dim=-1)
    else:
        per_sample = F.binary_cross_entropy(recon_x.reshape(b, -1), x.reshape(b, -1),
                                            reduction="none").sum(dim=-1)
    want = (per_sample + handwritten_kl_per_sample(mu, log_var)).mean(dim=0)
    check(f"pythae {recon}", backend, loss, want, grads(loss, ours), grads(want, theirs))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("logvar", ["float", "per-pixel tensor", "scalar tensor"])
def test_fixed_variance_gaussian(logvar, backend, device):
    """A Gaussian decoder with a fixed or learned-per-pixel variance: sum over each sample of
    0.5 * (log 2 pi + v + (x - m)^2 / exp(v)), averaged over the batch, = F.gaussian_nll_loss
    with the variance expanded by hand. The float and broadcast forms never make a B x D
    log-variance on the PyTorch path."""
    g = gen(7)
    m, x = torch.randn(4, 2, 3, generator=g), torch.randn(4, 2, 3, generator=g)
    if logvar == "float":
        v = math.log(0.3)
        v_ours = v_theirs = v
        var = torch.full((4, 2, 3), 0.3)
    else:
        v = torch.randn((2, 3) if logvar == "per-pixel tensor" else (), generator=g) * 0.5
        v_ours, v_theirs = leaf(v, device), leaf(v, device)
        var = None
    m_ours, m_theirs = leaf(m, device), leaf(m, device)
    loss = fastvae.reconstruction_loss(m_ours, x.to(device), "gaussian", recon_logvar=v_ours,
                                       backend=backend)
    var = var.to(device) if var is not None else v_theirs.exp().expand(4, 2, 3)
    want = F.gaussian_nll_loss(m_theirs, x.to(device), var, full=True, eps=0.0, reduction="sum") / 4
    wrt_ours = (m_ours,) if logvar == "float" else (m_ours, v_ours)
    wrt_theirs = (m_theirs,) if logvar == "float" else (m_theirs, v_theirs)
    check(f"fixed-variance gaussian ({logvar})", backend, loss, want, grads(loss, wrt_ours),
          grads(want, wrt_theirs))


def test_float_logvar_allocates_no_batch_sized_logvar():
    """On the PyTorch path a float or broadcast log-variance is never expanded to B x D: the
    largest new tensor in the forward pass is one B x D buffer (the squared error)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Biggest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == 64 * 50:
                self.counts.append(str(func))
            return out

    m, x = torch.randn(64, 50), torch.randn(64, 50)
    with Biggest() as mode:
        fastvae.reconstruction_loss(m, x, "gaussian", recon_logvar=0.0, backend="torch")
    assert len(mode.counts) <= 1, mode.counts  # F.mse_loss's own buffer at most


# ------------------------------------------------------------------ inputs as torch takes them


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "mse", "gaussian"])
def test_mixed_float_dtypes(likelihood, backend, device):
    """A half-precision decoder output against an fp32 target (what autocast produces; fp16
    here because Triton's interpreter has no bf16): computed in fp32 like the reference on the
    same values, the gradient in recon's dtype."""
    g = gen(8)
    r = (torch.randn(3, 10, generator=g) * 2).half()
    x = torch.rand(3, 10, generator=g)
    lv = (torch.randn(3, 10, generator=g) * 0.5).half() if likelihood == "gaussian" else None
    r1 = leaf(r, device)
    got = fastvae.reconstruction_loss(r1, x.to(device), likelihood,
                                      recon_logvar=None if lv is None else lv.to(device),
                                      backend=backend)
    r2 = r.float().requires_grad_(True)
    want = fastvae.reference.reconstruction_loss(r2, x, likelihood,
                                                 recon_logvar=None if lv is None else lv.float())
    assert got.dtype == torch.float32
    assert_close(got, want, dtype=torch.float32, name="loss")
    (d1,), (d2,) = grads(got, (r1,)), grads(want, (r2,))
    assert d1.dtype == torch.float16
    assert_close(d1, d2, dtype=torch.float16, name="gradient")


@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_latents(backend, device):
    """(B, C, H, W) latents: z keeps the shape (K draws in front), the KL sums over C, H, W."""
    g = gen(9)
    mu, lv = (torch.randn(2, 3, 2, 2, generator=g).to(device),
              torch.randn(2, 3, 2, 2, generator=g).to(device))
    z = fastvae.reparameterize(mu, lv, backend=backend)
    assert z.shape == (2, 3, 2, 2)
    assert fastvae.reparameterize(mu, lv, n_samples=4, backend=backend).shape == (4, 2, 3, 2, 2)
    zero_var = fastvae.reparameterize(mu, torch.full_like(lv, -torch.inf), backend=backend)
    assert torch.equal(zero_var, mu)  # eps * exp(-inf / 2) = 0: z is mu, element by element
    rows = fastvae.gaussian_kl(mu, lv, "none", backend=backend)
    assert_close(rows, kl_elements(mu, lv).flatten(1).sum(1), dtype=torch.float32)
    assert fastvae.GaussianSampler(backend=backend)(mu, lv).z.shape == mu.shape


# ------------------------------------------------------------------ silent mistakes, now loud


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigmoid_output_passed_as_logits_warns(backend, device):
    """A decoder that kept its sigmoid, with likelihood="bernoulli": the loss warns (from the
    autograd node, no data read); logits and "bernoulli_probs" stay silent."""
    import warnings

    logits = torch.randn(2, 5, generator=gen(10)).to(device).requires_grad_(True)
    x = torch.rand(2, 5, generator=gen(11)).to(device)
    with pytest.warns(UserWarning, match="produced by torch.sigmoid.*bernoulli_probs"):
        fastvae.reconstruction_loss(torch.sigmoid(logits), x, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fastvae.reconstruction_loss(logits, x, backend=backend)
        fastvae.reconstruction_loss(torch.sigmoid(logits), x, "bernoulli_probs", backend=backend)
