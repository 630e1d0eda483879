"""The PyTorch path (fastvae.torch_backend: backend "torch", and "auto" on CPU tensors) against
the specification (fastvae.reference): values and gradients for every likelihood, reduction,
dtype mix and latent shape; float64 gradcheck; autocast; the extremes where the composition
is allowed to differ are stated in the module and checked here."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_close, kl_oracle

import fastvae
from fastvae import reference as R
from fastvae import torch_backend as TB

LIKELIHOODS = ["bernoulli", "bernoulli_probs", "mse", "gaussian"]
REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def recon_inputs(likelihood, shape, dtype=torch.float32, x_dtype=None, seed=0, logvar="full"):
    g = gen(seed)
    r = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    r = torch.sigmoid(r) if likelihood == "bernoulli_probs" else r
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    lv = None
    if likelihood == "gaussian":
        lv = {"full": lambda: torch.randn(shape, generator=g, dtype=torch.float64) * 0.5,
              "row": lambda: torch.randn(shape[1:], generator=g, dtype=torch.float64) * 0.5,
              "float": lambda: -0.7}[logvar]()
    as_t = lambda t, d: t.to(d).requires_grad_(True) if isinstance(t, torch.Tensor) else t  # noqa: E731
    return as_t(r, dtype), x.to(x_dtype or dtype), as_t(lv, dtype)


def both(likelihood, r, x, lv, reduction, full=True):
    """(loss, grads) of the composition and of the reference on cloned leaves."""
    out = []
    for fn in (TB.reconstruction_loss, None):
        rr = r.detach().clone().requires_grad_(True)
        vv = lv.detach().clone().requires_grad_(True) if isinstance(lv, torch.Tensor) else lv
        if fn is None:
            loss = R.reconstruction_loss(rr, x, likelihood, recon_logvar=vv, full=full,
                                         reduction=reduction)
        else:
            loss = fn(rr, x, likelihood, vv, full, reduction)
        wrt = [rr] + ([vv] if isinstance(vv, torch.Tensor) else [])
        weight = torch.linspace(0.5, 2.0, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        out.append((loss, torch.autograd.grad((loss * weight).sum(), wrt)))
    return out


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 785), (2, 3, 4, 5)])
def test_recon_matches_reference(shape, likelihood, reduction):
    r, x, lv = recon_inputs(likelihood, shape, seed=sum(shape))
    (got, got_g), (want, want_g) = both(likelihood, r, x, lv, reduction)
    assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape
    assert_close(got, want, name=f"{likelihood} {reduction}")
    for a, b in zip(got_g, want_g):
        assert_close(a, b, name=f"{likelihood} {reduction} gradient")


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("logvar", ["float", "row", "full"])
def test_gaussian_logvar_forms_match_reference(logvar, reduction, full):
    r, x, lv = recon_inputs("gaussian", (3, 2, 5), seed=3, logvar=logvar)
    (got, got_g), (want, want_g) = both("gaussian", r, x, lv, reduction, full=full)
    assert_close(got, want, name="loss")
    for a, b in zip(got_g, want_g):
        assert_close(a, b, name="gradient")


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                    (torch.float32, torch.float64), (torch.float64, torch.float64)])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_mixed_dtypes_compute_in_the_wider_float(likelihood, dtypes):
    """recon and x of different float dtypes: computed in float32 (float64 if either is), the
    gradient returned in recon's dtype."""
    r_dtype, x_dtype = dtypes
    r, x, lv = recon_inputs(likelihood, (3, 6), dtype=r_dtype, x_dtype=x_dtype, seed=4)
    (got, got_g), (want, want_g) = both(likelihood, r, x, lv, "sum")
    acc = torch.float64 if torch.float64 in dtypes else torch.float32
    assert got.dtype == want.dtype == acc and got_g[0].dtype == r_dtype
    assert_close(got, want, dtype=acc, name="loss")
    assert_close(got_g[0], want_g[0], dtype=r_dtype, name="gradient")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 20), (3, 2, 4, 4)])
def test_latent_ops_match_reference(shape, reduction):
    g = gen(5)
    mu = torch.randn(shape, generator=g) * 2
    lv = torch.randn(shape, generator=g) * 2
    lv.view(-1)[0] = 1e-6  # the series region of exp(v) - 1 - v
    for name in ("gaussian_kl", "sample_and_kl"):
        res = []
        for impl in (TB, R):
            m, v = mu.clone().requires_grad_(True), lv.clone().requires_grad_(True)
            if name == "gaussian_kl":
                kl = impl.gaussian_kl(m, v, reduction)
                z = torch.zeros(())
            elif impl is TB:
                z, kl = TB.sample_and_kl(m, v, reduction, gen(6))
            else:
                z, kl = R.sample_and_kl(m, v, reduction=reduction, generator=gen(6))
            w = torch.linspace(0.5, 2.0, kl.numel()).reshape(kl.shape)
            dz = torch.linspace(-1.0, 1.0, z.numel()).reshape(z.shape)
            res.append((z, kl, torch.autograd.grad((kl * w).sum() + (z * dz).sum(), (m, v))))
        (z1, kl1, g1), (z2, kl2, g2) = res
        # The same draw from the same generator, but two formulas of z (torch.addcmul with a
        # float64 standard deviation against mu + eps * exp(0.5 * lv) in float32): one
        # rounding apart at most, so compared with float32's tolerance, not bitwise.
        assert_close(z1, z2, name=f"{name} {reduction} z (the same draw)")
        assert_close(kl1, kl2, name=f"{name} {reduction}")
        assert_close(g1[0], g2[0], name="dmu")
        assert_close(g1[1], g2[1], name="dlogvar")
    rows = TB.gaussian_kl(mu, lv, "none")
    assert_close(rows, kl_oracle(mu.flatten(1), lv.flatten(1)), dtype=torch.float32, name="oracle")


def test_kl_near_zero_logvar_keeps_relative_accuracy():
    """Collapsed units (mu = 0, |logvar| <= 1e-3): the KL is ~lv^2 / 4 per unit; a float32
    exp(v) - 1 - v would lose it, the float64 form keeps fp32 relative accuracy."""
    lv = (torch.rand(16, 64, generator=gen(7)) * 2 - 1) * 1e-3
    mu = torch.zeros(16, 64)
    want = kl_oracle(mu, lv)
    assert_close(TB.gaussian_kl(mu, lv, "none"), want, rtol=1e-5, atol=0, name="rows")
    assert_close(TB.gaussian_kl(mu, lv, "sum"), want.sum(), rtol=1e-5, atol=0, name="sum")


def test_kl_extremes_match_reference():
    inf, nan = math.inf, math.nan
    mu = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [nan, 0.0]])
    lv = torch.tensor([[100.0, 0.0], [inf, 0.0], [-inf, 0.0], [-80.0, 80.0], [0.0, 0.0]])
    for red in REDUCTIONS:
        assert_close(TB.gaussian_kl(mu, lv, red), R.gaussian_kl(mu, lv, red), name=red)


def test_gradcheck_float64():
    g = gen(8)
    mu = torch.randn(3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    for red in REDUCTIONS:
        assert torch.autograd.gradcheck(lambda m, v: TB.gaussian_kl(m, v, red), (mu, lv))
        assert torch.autograd.gradcheck(lambda m, v: TB.sample_and_kl(m, v, red, gen(9)), (mu, lv))
    r = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.rand(3, 4, generator=g, dtype=torch.float64)
    v = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    for likelihood in LIKELIHOODS:
        rr = (torch.sigmoid(r).detach().requires_grad_(True) if likelihood == "bernoulli_probs"
              else r)
        lv = v if likelihood == "gaussian" else None
        args = (rr, lv) if lv is not None else (rr,)
        fn = lambda a, b=None: TB.reconstruction_loss(a, x, likelihood, b, True, "batchmean")  # noqa: E731
        assert torch.autograd.gradcheck(fn, args)


def test_compiles_before_any_eager_call(monkeypatch):
    """torch.compile(fullgraph=True) of the sampler and the KL with none of their cached
    scalars made yet: the cache stays out of the traced forward and backward (no side effect
    in a traced autograd.Function, no lru_cache warning), and the compiled values and
    gradients equal eager ones for the same noise."""
    monkeypatch.setattr(TB, "_SCALARS", {})

    def head(mu, lv):
        z, kl = TB.sample_and_kl(mu, lv, "batchmean", None)
        return z.square().sum() + kl

    mu = torch.randn(4, 3, generator=gen(10), requires_grad=True)
    lv = torch.randn(4, 3, generator=gen(11), requires_grad=True)
    compiled = torch.compile(head, backend="aot_eager", fullgraph=True)
    torch.manual_seed(0)
    got = compiled(mu, lv)
    got_grads = torch.autograd.grad(got, (mu, lv))
    assert TB._SCALARS == {}, "nothing cached while tracing"
    torch.manual_seed(0)
    want = head(mu, lv)
    for a, b in zip((got, *got_grads), (want, *torch.autograd.grad(want, (mu, lv)))):
        assert_close(a, b)


def test_autocast_bfloat16_on_cpu():
    """A decoder under torch.autocast emits bf16 while the target stays fp32: the loss takes
    both, computes in fp32 and returns gradients in bf16 to the decoder."""
    torch.manual_seed(0)
    dec = torch.nn.Linear(5, 12)
    z, x = torch.randn(4, 5), torch.rand(4, 12)
    mu, lv = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    for likelihood in ("bernoulli", "bernoulli_probs", "mse"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = dec(z)
            out = torch.sigmoid(out) if likelihood == "bernoulli_probs" else out
            assert out.dtype == torch.bfloat16
            loss = fastvae.elbo_loss(out, x, mu, lv, likelihood=likelihood).loss
        assert loss.dtype == torch.float32
        want = R.elbo_loss(out.float(), x, mu, lv, likelihood=likelihood)[0]
        assert_close(loss, want, name=likelihood)
        loss.backward()
        assert torch.isfinite(dec.weight.grad).all()
        dec.zero_grad()


def test_probabilities_outside_0_1_are_refused_on_cpu():
    """F.binary_cross_entropy checks its input range inside the CPU kernel (no extra sync):
    logits passed as probabilities raise instead of training silently."""
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        fastvae.reconstruction_loss(torch.randn(2, 3) * 3, torch.rand(2, 3), "bernoulli_probs")
