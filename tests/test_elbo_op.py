"""The fused objective (``fastvae.ops.elbo``): one autograd Function whose reconstruction kernel
also writes ``recon + beta * kl``. Held to the reference and to independent torch oracles for
every pair of reductions, with gradients flowing into the loss and into its two parts, in
float32 and float64 (the unfused addition), and counted: two launches each way, no addition."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, kl_oracle, reduce

import fastvae
from benchmarks import measure
from fastvae import reference

REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def inputs(device, B=3, D=785, L=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    recon, mu, lv = make(B, D) * 2, make(B, L), make(B, L)
    x = torch.rand(B, D, generator=g, dtype=torch.float64)
    return [t.to(device, dtype).requires_grad_(t is not x) for t in (recon, x, mu, lv)]


def oracle(recon, x, mu, lv, beta, reduction, kl_reduction):
    """The objective from torch's own functions: BCE with logits and the KL by
    torch.distributions, each reduced with torch's meanings."""
    rows = F.binary_cross_entropy_with_logits(recon, x, reduction="none").sum(1)
    rec = reduce(rows, reduction, recon.numel())
    kl = reduce(kl_oracle(mu, lv), kl_reduction, mu.numel())
    return rec + beta * kl, rec, kl


@pytest.mark.parametrize("reduction,kl_reduction", list(itertools.product(REDUCTIONS, REDUCTIONS)))
def test_values_and_gradients_match_the_reference(reduction, kl_reduction, device):
    recon, x, mu, lv = inputs(device)
    beta = 0.7
    got = fastvae.elbo_loss(recon, x, mu, lv, beta=beta, reduction=reduction,
                            kl_reduction=kl_reduction, backend="triton")
    want = reference.elbo_loss(recon, x, mu, lv, beta=beta, reduction=reduction,
                               kl_reduction=kl_reduction)
    with torch.no_grad():
        independent = oracle(recon, x, mu, lv, beta, reduction, kl_reduction)
    for name, a, b, c in zip(("loss", "recon", "kl"), got, want, independent):
        assert a.shape == b.shape and a.dtype == torch.float32, name
        assert_close(a, b, name=name)
        assert_close(a, c, name=f"{name} (torch oracle)")
    # grad_output != 1 into the loss and into each part, as a loss inside a larger expression
    weights = [torch.linspace(0.5, 2.0, t.numel(), device=device).reshape(t.shape) for t in got]
    for parts in ((0,), (0, 1, 2), (1,), (2,)):
        total = lambda out: sum((out[i] * weights[i]).sum() for i in parts)  # noqa: E731
        got_g = torch.autograd.grad(total(fastvae.elbo_loss(
            recon, x, mu, lv, beta=beta, reduction=reduction, kl_reduction=kl_reduction,
            backend="triton")), (recon, mu, lv), allow_unused=True)
        want_g = torch.autograd.grad(total(want), (recon, mu, lv), retain_graph=True,
                                     allow_unused=True)
        for name, a, b in zip(("d_recon", "dmu", "dlogvar"), got_g, want_g):
            if b is None:
                assert a is None or not a.any(), (parts, name)
            else:
                assert_close(a, b, name=f"{name}, gradients into {parts}")


@pytest.mark.parametrize("likelihood,recon_logvar,full", [
    ("gaussian", -0.4, False), ("gaussian", "tensor", True), ("mse", None, True),
    ("bernoulli_probs", None, True),
])
def test_other_likelihoods(likelihood, recon_logvar, full, device):
    recon, x, mu, lv = inputs(device, D=37, seed=2)
    if likelihood == "bernoulli_probs":
        recon = recon.detach().sigmoid().requires_grad_(True)
    if recon_logvar == "tensor":
        recon_logvar = ((0.3 * torch.randn(37, dtype=torch.float64))
                        .to(device, recon.dtype).requires_grad_(True))
    kwargs = dict(beta=2.5, likelihood=likelihood, recon_logvar=recon_logvar, full=full)
    got = fastvae.elbo_loss(recon, x, mu, lv, backend="triton", **kwargs)
    want = reference.elbo_loss(recon, x, mu, lv, **kwargs)
    assert_close(got.loss, want[0], name="loss")
    wrt = [t for t in (recon, mu, lv, recon_logvar) if isinstance(t, torch.Tensor)]
    for a, b in zip(torch.autograd.grad(got.loss, wrt), torch.autograd.grad(want[0], wrt)):
        assert_close(a, b, name="gradient")


def test_float64_gradcheck(device):
    """float64 adds the two terms with PyTorch operators (a float32 beta would round)."""
    recon, x, mu, lv = inputs(device, B=2, D=5, L=3, dtype=torch.float64, seed=3)
    for reduction, kl_reduction in (("batchmean", "batchmean"), ("none", "sum")):
        fn = lambda r, m, v: fastvae.elbo_loss(  # noqa: E731
            r, x, m, v, beta=0.3, reduction=reduction, kl_reduction=kl_reduction,
            backend="triton").loss
        assert torch.autograd.gradcheck(fn, (recon, mu, lv))
        want = reference.elbo_loss(recon, x, mu, lv, beta=0.3, reduction=reduction,
                                   kl_reduction=kl_reduction)[0]
        assert_close(fn(recon, mu, lv), want, name="float64 loss")


def test_target_requiring_grad(device):
    recon, x, mu, lv = inputs(device, D=9, seed=4)
    x = x.detach().requires_grad_(True)
    got = fastvae.elbo_loss(recon, x, mu, lv, backend="triton").loss
    want = reference.elbo_loss(recon, x, mu, lv)[0]
    for a, b in zip(torch.autograd.grad(got, (recon, x, mu)),
                    torch.autograd.grad(want, (recon, x, mu))):
        assert_close(a, b, name="gradient with x requiring grad")


def test_two_launches_each_way_and_no_addition(device):
    """Forward: the KL kernel, then the recon kernel that also writes the sum; backward: the
    recon kernel's scale (returns at once for grad_output 1) and the latent backward."""
    recon, x, mu, lv = inputs(device, B=128, D=784, L=20)
    out = {}

    def forward():
        out["loss"] = fastvae.elbo_loss(recon, x, mu, lv, beta=2.0, backend="triton").loss

    fwd = measure.count_dispatched(forward)
    bwd = measure.count_dispatched(lambda: out["loss"].backward())
    assert fwd.ops == ["triton:_sample_and_kl_fwd_kernel", "triton:_recon_loss_fwd_kernel"], fwd.ops
    # ones_like: the engine's grad_output of loss.backward()
    assert sorted(bwd.ops) == ["ones_like", "triton:_recon_loss_scale_grad_kernel",
                               "triton:_sample_and_kl_bwd_kernel"], bwd.ops
    assert fwd.syncs == bwd.syncs == 0


def test_no_gradient_written_without_grad(device):
    recon, x, mu, lv = inputs(device, D=33, seed=5)
    with torch.no_grad():
        out = fastvae.elbo_loss(recon, x, mu, lv, backend="triton")
    assert out.loss.grad_fn is None
    assert_close(out.loss, reference.elbo_loss(recon, x, mu, lv)[0].detach(), name="loss")
