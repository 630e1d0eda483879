"""The pure-PyTorch reference (fastvae.reference) against independent oracles and against itself.

Oracles: torch.distributions.kl_divergence, F.binary_cross_entropy_with_logits,
F.binary_cross_entropy, F.mse_loss, F.gaussian_nll_loss, evaluated in float64 from the same
(already rounded) inputs, and the closed-form gradients of DESIGN.md section 2. The reference is
the test oracle for the kernels, so it is held here to fp32 tolerance against float64 truth.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCES, assert_close, kl_oracle, recon_oracle, reduce
from hypothesis import given, settings
from hypothesis import strategies as st

from fastvae import reference as R

REDUCTIONS = ["none", "sum", "mean", "batchmean"]
LIKELIHOODS = ["bernoulli", "bernoulli_probs", "mse", "gaussian"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- oracles


def phi_exact(v: torch.Tensor) -> torch.Tensor:
    """exp(v) - 1 - v in float64, accurate to ~1e-12 relative or better at every v.

    expm1(v) - v keeps ~2e-16 / |v| relative error (the subtraction of v), fine for |v| >= 1e-4;
    below that, three Taylor terms v^2/2 + v^3/6 + v^4/24 (truncation |v|^3 / 60 < 2e-14).
    """
    v = v.double()
    series = v * v * (0.5 + v * (1.0 / 6 + v / 24))
    return torch.where(v.abs() < 1e-4, series, torch.expm1(v) - v)


def make_recon(likelihood, shape, dtype=torch.float32, seed=0, scale=2.0):
    g = gen(seed)
    recon = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if likelihood == "bernoulli_probs":
        recon = torch.sigmoid(recon)
    if likelihood.startswith("bernoulli"):
        x = torch.rand(shape, generator=g, dtype=torch.float64)
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    lv = torch.randn(shape, generator=g, dtype=torch.float64) if likelihood == "gaussian" else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(recon), cast(x), cast(lv)


# ----------------------------------------------------------------------- assert_close itself


def test_assert_close_names_first_mismatch_index_and_count():
    expected = torch.zeros(2, 3)
    actual = expected.clone()
    actual[1, 2] = 1.0
    actual[0, 1] = float("nan")
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, name="thing")
    msg = str(info.value)
    assert "thing" in msg
    assert "(0, 1)" in msg  # the first mismatch in row-major order
    assert "2 of 6" in msg
    assert "nan" in msg and "0.0" in msg
    assert "rtol=1e-05" in msg and "atol=1e-05" in msg


def test_assert_close_nan_inf_semantics():
    nan, inf = float("nan"), float("inf")
    assert_close(torch.tensor([nan, inf, -inf, 1.0]), torch.tensor([nan, inf, -inf, 1.0]))
    for actual, expected in [([nan], [1.0]), ([1.0], [nan]), ([inf], [-inf]), ([inf], [1e38]),
                             ([1.0], [inf])]:
        with pytest.raises(AssertionError):
            assert_close(torch.tensor(actual), torch.tensor(expected))


def test_assert_close_shape_and_tolerances():
    with pytest.raises(AssertionError, match=r"\(3,\).*\(1, 3\)"):
        assert_close(torch.zeros(3), torch.zeros(1, 3))
    one = torch.tensor([1.0], dtype=torch.float64)
    # 1e-4 relative: inside fp16's tolerance, outside fp32's and fp64's.
    assert_close(one * (1 + 1e-4), one, dtype=torch.float16)
    with pytest.raises(AssertionError):
        assert_close(one * (1 + 1e-4), one, dtype=torch.float32)
    with pytest.raises(AssertionError):
        assert_close(one * (1 + 1e-6), one)  # inferred float64 tolerance
    # Default dtype is the least precise of the two arguments.
    assert_close(one.half() * 1.001, one)
    # Explicit rtol/atol override; scalars and 0-d tensors work.
    assert_close(1.5, torch.tensor(1.0), rtol=0.5, atol=0)
    with pytest.raises(AssertionError, match=r"index \(\)"):
        assert_close(torch.tensor(2.0), torch.tensor(1.0))
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        rtol, atol = TOLERANCES[dtype]
        assert 0 < rtol < 0.05 and 0 < atol <= 1e-5


# ------------------------------------------------------------------------------ gaussian_kl


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (7, 64), (2, 785)])
def test_kl_matches_distributions(shape, reduction):
    g = gen(1)
    mu = torch.randn(shape, generator=g) * 2
    lv = torch.randn(shape, generator=g) * 2
    got = R.gaussian_kl(mu, lv, reduction)
    assert got.dtype == torch.float32
    assert got.shape == ((shape[0],) if reduction == "none" else ())
    want = reduce(kl_oracle(mu, lv), reduction, mu.numel())
    assert_close(got, want, dtype=torch.float32, name=f"kl {reduction}")


def test_kl_reductions_by_hand():
    mu = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]])
    lv = torch.zeros(3, 2)
    # per-sample 0.5 * sum mu^2 = [2.5, 0, 4.5]
    assert_close(R.gaussian_kl(mu, lv, "none"), torch.tensor([2.5, 0.0, 4.5]), rtol=0, atol=0)
    assert_close(R.gaussian_kl(mu, lv, "sum"), torch.tensor(7.0), rtol=0, atol=0)
    assert_close(R.gaussian_kl(mu, lv, "batchmean"), torch.tensor(7.0 / 3), rtol=1e-7, atol=0)
    assert_close(R.gaussian_kl(mu, lv, "mean"), torch.tensor(7.0 / 6), rtol=1e-7, atol=0)


def test_kl_near_zero_logvar_is_accurate():
    """The series region: fp32 reference vs float64 truth, no absolute slack."""
    g = gen(2)
    lv = (torch.rand(16, 64, generator=g) * 2 - 1) * 1e-3
    mu = torch.zeros_like(lv)
    # Row sums vs torch.distributions in float64 (its own cancellation, ~4e-16 absolute per
    # element, is ~1e-9 relative of a row sum here).
    assert_close(R.gaussian_kl(mu, lv, "none"), kl_oracle(mu, lv), rtol=1e-5, atol=0,
                 name="kl rows")
    # Element by element vs phi_exact, from |lv| = 1e-12 (phi ~ 5e-25, still a normal fp32).
    mags = torch.logspace(-12, math.log10(0.49), 200)
    lv1 = torch.cat([mags, -mags, lv.flatten()]).unsqueeze(1)
    got = R.gaussian_kl(torch.zeros_like(lv1), lv1, "none")
    assert_close(got, 0.5 * phi_exact(lv1).squeeze(1), rtol=1e-5, atol=0, name="kl per element")
    # Exactly zero at lv = 0, mu = 0.
    assert R.gaussian_kl(torch.zeros(1, 3), torch.zeros(1, 3), "sum").item() == 0.0


def test_kl_series_cutoff_is_seamless():
    """|lv| around SERIES_CUTOFF = 0.5: both branches accurate, for fp32 and fp64."""
    assert R.SERIES_CUTOFF == 0.5
    mags = torch.linspace(0.45, 0.55, 101, dtype=torch.float64)
    lv64 = torch.cat([mags, -mags]).unsqueeze(1)
    for dtype, rtol in [(torch.float32, 1e-5), (torch.float64, 1e-9)]:
        lv = lv64.to(dtype)
        got = R.gaussian_kl(torch.zeros_like(lv), lv, "none")
        assert got.dtype == dtype
        assert_close(got, 0.5 * phi_exact(lv).squeeze(1), rtol=rtol, atol=0,
                     name=f"phi at cutoff {dtype}")
        assert_close(got, kl_oracle(torch.zeros_like(lv), lv), rtol=rtol, atol=0,
                     name=f"kl at cutoff {dtype}")


def test_kl_series_float64_precision_inside_cutoff():
    """The fp64 series (to v^10) is accurate to ~1e-10 relative, far inside fp64's 1e-7.

    The first dropped term at v = -0.5 is 0.5**11 / 11! = 1.2e-11 against phi(-0.5) = 0.1065,
    i.e. 1.15e-10 relative (reference.py's "< 1e-10" holds at +0.5 only): bound 2e-10.
    """
    lv = torch.linspace(-0.4999, 0.4999, 2001, dtype=torch.float64)
    lv = lv[lv.abs() > 1e-6].unsqueeze(1)
    got = R.exp_minus_one_minus(lv)
    assert_close(got, phi_exact(lv), rtol=2e-10, atol=0, name="phi series fp64")


def test_kl_extreme_logvar_finite_and_matching():
    g = gen(3)
    lv = torch.linspace(-80, 80, 321).reshape(107, 3)
    mu = torch.randn(lv.shape, generator=g)
    got = R.gaussian_kl(mu, lv, "none")
    assert torch.isfinite(got).all()
    assert_close(got, kl_oracle(mu, lv), dtype=torch.float32, name="kl extreme lv")
    # Known values: lv = -80 gives 0.5 * (exp(-80) + 79), lv = 80 gives 0.5 * (exp(80) - 81).
    one = torch.zeros(1, 1)
    assert_close(R.gaussian_kl(one, one - 80, "sum"), torch.tensor(39.5), rtol=1e-6, atol=0)
    assert_close(R.gaussian_kl(one, one + 80, "sum"), torch.tensor(0.5 * (math.exp(80) - 81)),
                 rtol=1e-5, atol=0)


def test_kl_exp_overflow_gives_inf_not_nan():
    inf = math.inf
    mu = torch.zeros(5, 2)
    lv = torch.tensor([[0.5, 100.0], [-1.0, 1.0], [inf, 0.0], [-inf, 0.0], [1000.0, -2.0]])
    rows = R.gaussian_kl(mu, lv, "none")
    # exp(100) overflows fp32 (and the fp64 truth 1.3e43 exceeds fp32's max too); lv = +inf
    # and -inf are +inf in the limit (torch.distributions gives NaN at +inf: inf - inf).
    assert rows.tolist()[0] == inf and rows.tolist()[2:] == [inf, inf, inf]
    assert_close(rows[1], kl_oracle(mu[1:2], lv[1:2])[0], dtype=torch.float32)
    assert_close(rows[:2], kl_oracle(mu[:2], lv[:2]).float(), dtype=torch.float32)
    for reduction in ("sum", "mean", "batchmean"):
        assert R.gaussian_kl(mu, lv, reduction).item() == inf
    # In float64 the finite inputs stay finite and match the oracle.
    rows64 = R.gaussian_kl(mu[:2].double(), lv[:2].double(), "none")
    assert torch.isfinite(rows64).all()
    assert_close(rows64, kl_oracle(mu[:2], lv[:2]), dtype=torch.float64)
    # Gradients at overflow: dlv = 0.5 * (exp(lv) - 1) is +inf where exp overflows, finite
    # elsewhere (-0.5 at lv = -inf), never NaN; dmu = mu stays 0.
    lv_req = lv.clone().requires_grad_(True)
    mu_req = mu.clone().requires_grad_(True)
    R.gaussian_kl(mu_req, lv_req, "sum").backward()
    assert not torch.isnan(lv_req.grad).any() and not torch.isnan(mu_req.grad).any()
    assert_close(lv_req.grad, (0.5 * torch.expm1(lv.double())).float(), dtype=torch.float32,
                 name="dlv")
    assert_close(mu_req.grad, torch.zeros(5, 2), dtype=torch.float32, name="dmu")


@pytest.mark.parametrize("where", ["mu", "lv"])
def test_kl_nan_propagates_to_its_row_only(where):
    g = gen(4)
    mu = torch.randn(4, 5, generator=g)
    lv = torch.randn(4, 5, generator=g)
    (mu if where == "mu" else lv)[2, 3] = float("nan")
    rows = R.gaussian_kl(mu, lv, "none")
    assert torch.isnan(rows).tolist() == [False, False, True, False]
    assert_close(rows, kl_oracle(mu, lv), dtype=torch.float32)  # NaN at the same position
    assert math.isnan(R.gaussian_kl(mu, lv, "sum").item())
    assert math.isnan(R.gaussian_kl(mu, lv, "mean").item())
    assert math.isnan(R.gaussian_kl(mu, lv, "batchmean").item())


# ---------------------------------------------------------------------- reconstruction_loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [
    (1, 1),
    (3, 1),
    (1, 785),
    (4, 785),
    (2, 3, 5, 7),
    (3, 1, 28, 28),
])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_recon_matches_functional(likelihood, shape, reduction):
    recon, x, lv = make_recon(likelihood, shape, seed=sum(shape))
    got = R.reconstruction_loss(recon, x, likelihood, recon_logvar=lv, reduction=reduction)
    assert got.dtype == torch.float32
    assert got.shape == ((shape[0],) if reduction == "none" else ())
    want = reduce(recon_oracle(likelihood, recon, x, lv), reduction, recon.numel())
    assert_close(got, want, dtype=torch.float32, name=f"{likelihood} {reduction}")
    # The fp64 reference is fp64-accurate.
    r64, x64, lv64 = (None if t is None else t.double() for t in (recon, x, lv))
    got64 = R.reconstruction_loss(r64, x64, likelihood, recon_logvar=lv64, reduction=reduction)
    assert got64.dtype == torch.float64
    assert_close(got64, want, dtype=torch.float64, name=f"{likelihood} {reduction} fp64")


def test_recon_known_values():
    zeros = torch.zeros(2, 3)
    x = torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]])
    # logits 0: every element costs log 2 whatever x is.
    assert_close(R.reconstruction_loss(zeros, x, "bernoulli", reduction="none"),
                 torch.full((2,), 3 * math.log(2)), dtype=torch.float32)
    assert_close(R.reconstruction_loss(zeros, x, "mse", reduction="none"),
                 torch.tensor([1.25, 3.0]), rtol=0, atol=0)
    # gaussian, m = x, v = 0: 0.5 * log(2 pi) per element; "batchmean" = batch mean of row
    # sums, "mean" = per element.
    assert_close(R.reconstruction_loss(x, x, "gaussian", recon_logvar=zeros, reduction="batchmean"),
                 torch.tensor(1.5 * math.log(2 * math.pi)), dtype=torch.float32)
    assert_close(R.reconstruction_loss(x, x, "gaussian", recon_logvar=zeros, reduction="mean"),
                 torch.tensor(0.5 * math.log(2 * math.pi)), dtype=torch.float32)
    # the same with a float log-variance, and without the constant (full=False)
    assert_close(R.reconstruction_loss(x, x, "gaussian", recon_logvar=0.0, reduction="mean"),
                 torch.tensor(0.5 * math.log(2 * math.pi)), dtype=torch.float32)
    assert R.reconstruction_loss(x, x, "gaussian", recon_logvar=0.0, full=False).item() == 0.0
    # probabilities 1/2: log 2 per element; p = 0 or 1 against the wrong target: 100 (clamp)
    p = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 1.0]])
    t = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 1.0]])
    assert_close(R.reconstruction_loss(p, t, "bernoulli_probs", reduction="none"),
                 torch.tensor([3 * math.log(2), 200.0]), dtype=torch.float32)


def test_bernoulli_extreme_logits_finite_and_matching():
    g = gen(5)
    logits = (torch.rand(8, 785, generator=g) * 2 - 1) * 1e4
    logits[0, :4] = torch.tensor([1e4, -1e4, 1e4, -1e4])
    x = torch.rand(8, 785, generator=g)
    x[1] = (x[1] > 0.5).float()  # a binary row too
    x[0, :4] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    got = R.reconstruction_loss(logits, x, "bernoulli", reduction="none")
    assert torch.isfinite(got).all()
    assert_close(got, recon_oracle("bernoulli", logits, x), dtype=torch.float32,
                 name="|logits| <= 1e4")
    # Single elements: confident and right costs ~0, confident and wrong costs |l|.
    l4 = torch.tensor([[1e4], [-1e4], [1e4], [-1e4]])
    x4 = torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    assert_close(R.reconstruction_loss(l4, x4, "bernoulli", reduction="none"),
                 torch.tensor([0.0, 0.0, 1e4, 1e4]), rtol=0, atol=0)


def test_bernoulli_precision_confident_logits_soft_targets():
    """l << 0 with a small soft target: the loss is ~ -l * x, a few tenths, while the terms of
    (1 - x) * l - logsigmoid(l) are ~|l|; a form that cancels them loses up to ~ulp(|l|) = 1e-3
    absolute (6e-3 relative at l = -1e4, x = 1e-5). The stable form must be fp32-accurate."""
    x = torch.linspace(1e-5, 1e-2, 500)
    logits = torch.tensor([-1e4, -1e3, -100.0, -20.0]).repeat_interleave(500)
    x = x.repeat(4)
    got = R.reconstruction_loss(logits[:, None], x[:, None], "bernoulli", reduction="none")
    want = F.softplus(logits.double()) - logits.double() * x.double()
    assert_close(got, want, rtol=1e-5, atol=0, name="bernoulli soft target")
    # Tiny losses keep their relative accuracy too: log(1 + exp(-20)) and log(1 + exp(-80)).
    tiny = R.reconstruction_loss(torch.tensor([[-20.0], [-80.0]]), torch.zeros(2, 1), "bernoulli",
                                 reduction="none")
    assert_close(tiny,
                 torch.tensor([math.log1p(math.exp(-20)), math.exp(-80)], dtype=torch.float64),
                 rtol=1e-5, atol=0, name="tiny bernoulli")


@pytest.mark.parametrize("likelihood", ["bernoulli", "mse", "gaussian"])  # probabilities: below
def test_recon_inf_nan_propagate_like_oracle(likelihood):
    inf, nan = float("inf"), float("nan")
    recon, x, lv = make_recon(likelihood, (7, 4), seed=6)
    recon[0, 0] = inf
    recon[1, 1] = -inf
    recon[2, 2] = nan
    x[3, 0] = nan
    if likelihood == "bernoulli":
        # Logit inf with x = 1 and -inf with x = 0 are NaN in torch's BCE and in the design's
        # form alike (inf - inf, inf * 0); the other two sign cases: see the test below.
        x[0, 0], x[1, 1] = 1.0, 0.0
        x[4, 3] = nan
    else:
        x[4, 3] = inf
    if lv is not None:
        lv[5, 1] = inf  # var = inf: log(var) dominates, loss +inf like the oracle
        lv[6, 0] = nan
    got = R.reconstruction_loss(recon, x, likelihood, recon_logvar=lv, reduction="none")
    want = recon_oracle(likelihood, recon, x, lv)
    assert_close(got, want, dtype=torch.float32, name=f"{likelihood} non-finite")
    n_bad = 7 if lv is not None else 5
    assert not torch.isfinite(got[:n_bad]).any()
    assert torch.isfinite(got[n_bad:]).all()  # each bad input poisons only its own row
    for reduction in ("sum", "mean", "batchmean"):
        total = R.reconstruction_loss(recon, x, likelihood, recon_logvar=lv, reduction=reduction)
        assert_close(total, reduce(want, reduction, recon.numel()), dtype=torch.float32)
        assert not math.isfinite(total.item())


def test_mse_gaussian_infinite_values():
    inf = math.inf
    r = torch.tensor([[inf, 0.0], [inf, 0.0], [-inf, 1.0]])
    x = torch.tensor([[0.0, 0.0], [inf, 0.0], [0.0, 1.0]])
    got = R.reconstruction_loss(r, x, "mse", reduction="none")
    assert got[0].item() == inf and math.isnan(got[1].item()) and got[2].item() == inf
    assert_close(got, recon_oracle("mse", r, x), dtype=torch.float32)
    g = R.reconstruction_loss(torch.zeros(2, 1), torch.tensor([[inf], [1.0]]), "gaussian",
                              recon_logvar=torch.tensor([[0.0], [inf]]), reduction="none")
    assert g.tolist() == [inf, inf]


def test_bernoulli_probs_is_binary_cross_entropy_at_the_edges():
    """p = 0 and 1 exactly (a saturated sigmoid): F.binary_cross_entropy's clamped logs give
    at most 100 nats per element, and its gradient (p - x) / max(p (1 - p), 1e-12); a NaN
    probability propagates to its row (the oracle refuses it)."""
    p = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1e-30, 0.5]], dtype=torch.float32).repeat(2, 1)
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.5, 0.25]]).repeat(2, 1)
    p.requires_grad_(True)
    got = R.reconstruction_loss(p, x, "bernoulli_probs", reduction="sum")
    got.backward()
    p2 = p.detach().clone().requires_grad_(True)
    want = F.binary_cross_entropy(p2, x, reduction="sum")
    want.backward()
    assert_close(got, want, dtype=torch.float32, name="value")
    assert_close(p.grad, p2.grad, dtype=torch.float32, name="gradient")
    assert got.item() == pytest.approx(2 * (200.0 - 0.5 * math.log(1e-30) + math.log(2)), rel=1e-6)
    nan_p = p.detach().clone()
    nan_p[1, 5] = float("nan")
    rows = R.reconstruction_loss(nan_p, x, "bernoulli_probs", reduction="none")
    assert torch.isfinite(rows[0]) and torch.isnan(rows[1])


def test_bernoulli_infinite_logit_confidently_wrong_is_inf():
    inf = math.inf
    logits = torch.tensor([[inf], [-inf]])
    x = torch.tensor([[0.0], [1.0]])  # confidently wrong: the loss is +inf in the limit
    got = R.reconstruction_loss(logits, x, "bernoulli", reduction="none")
    assert_close(got, torch.tensor([inf, inf]), dtype=torch.float32, name="bernoulli at inf logits")


def test_empty_batch():
    empty = torch.zeros(0, 3)
    for likelihood in LIKELIHOODS:
        lv = empty if likelihood == "gaussian" else None
        assert R.reconstruction_loss(empty, empty, likelihood, recon_logvar=lv,
                                     reduction="none").shape == (0,)
        assert R.reconstruction_loss(empty, empty, likelihood, recon_logvar=lv,
                                     reduction="sum").item() == 0.0
        for reduction in ("mean", "batchmean"):
            loss = R.reconstruction_loss(empty, empty, likelihood, recon_logvar=lv,
                                         reduction=reduction)
            assert math.isnan(loss.item())
    assert R.gaussian_kl(empty, empty, "none").shape == (0,)
    assert math.isnan(R.gaussian_kl(empty, empty, "mean").item())
    assert math.isnan(R.gaussian_kl(empty, empty, "batchmean").item())


# --------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_recon_gradients_match_closed_forms(likelihood, reduction, dtype):
    recon, x, lv = make_recon(likelihood, (5, 2, 7), dtype=dtype, seed=7)
    if likelihood == "bernoulli":
        recon[0, 0, :3] = 0.0  # sigmoid(0) - x must be exact at logits exactly 0
        x[0, 0, :3] = torch.tensor([0.0, 0.3, 1.0], dtype=dtype)
    recon.requires_grad_(True)
    if lv is not None:
        lv.requires_grad_(True)
    loss = R.reconstruction_loss(recon, x, likelihood, recon_logvar=lv, reduction=reduction)
    # Used inside a larger expression: grad_output != 1, and per-row for "none".
    if reduction == "none":
        row_scale = torch.randn(5, generator=gen(8), dtype=loss.dtype)
        (loss * row_scale).sum().backward()
    else:
        div = {"sum": 1, "mean": recon.numel(), "batchmean": 5}[reduction]
        row_scale = torch.full((5,), 3.0 / div, dtype=torch.float64)
        (3.0 * loss + (recon.detach() ** 2).sum()).backward()
    scale = row_scale.double().reshape(5, 1, 1)
    r, t = recon.detach().double(), x.double()
    if likelihood == "bernoulli":
        d_recon = torch.sigmoid(r) - t
    elif likelihood == "bernoulli_probs":
        d_recon = (r - t) / (r * (1 - r))
    elif likelihood == "mse":
        d_recon = 2 * (r - t)
    else:
        v = lv.detach().double()
        d_recon = (r - t) * torch.exp(-v)
        d_lv = 0.5 * (1 - (t - r) ** 2 * torch.exp(-v))
        assert_close(lv.grad, scale * d_lv, dtype=dtype, name="d recon_logvar")
    assert_close(recon.grad, scale * d_recon, dtype=dtype, name="d recon")
    if likelihood == "bernoulli":
        expected0 = scale[0, 0, 0].item() * torch.tensor([0.5, 0.2, -0.5], dtype=torch.float64)
        assert_close(recon.grad[0, 0, :3], expected0, dtype=dtype, name="d logits at 0")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kl_gradients_match_closed_forms(reduction, dtype):
    g = gen(9)
    mu = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 2).to(dtype).requires_grad_(True)
    lv64 = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    lv64[0] = torch.tensor([0.0, 1e-4, -0.3, 0.5, -0.5])  # series, boundary, zero
    lv = lv64.to(dtype).requires_grad_(True)
    kl = R.gaussian_kl(mu, lv, reduction)
    if reduction == "none":
        row_scale = torch.randn(6, generator=gen(10), dtype=kl.dtype)
        (kl * row_scale).sum().backward()
    else:
        div = {"sum": 1, "mean": mu.numel(), "batchmean": 6}[reduction]
        row_scale = torch.full((6,), 3.0 / div, dtype=torch.float64)
        (3.0 * kl + mu.sum() * 0.0 + 1.0).backward()
    scale = row_scale.double().unsqueeze(1)
    assert_close(mu.grad, scale * mu.detach().double(), dtype=dtype, name="dmu")
    assert_close(lv.grad, scale * 0.5 * torch.expm1(lv.detach().double()), dtype=dtype,
                 name="dlogvar")


def test_reparameterize_gradients_match_closed_forms():
    g = gen(11)
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    lv = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    eps = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    dz = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    z = R.reparameterize(mu, lv, n_samples=2, eps=eps)
    z.backward(dz)
    assert_close(mu.grad, dz.sum(0), dtype=torch.float64, name="dmu")
    want = (0.5 * dz * eps * torch.exp(0.5 * lv.detach())).sum(0)
    assert_close(lv.grad, want, dtype=torch.float64, name="dlogvar")


# --------------------------------------------------------------------------------- gradcheck


def _f64(*shape, seed, scale=1.0):
    return ((torch.randn(*shape, generator=gen(seed), dtype=torch.float64) * scale)
            .requires_grad_(True))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_gaussian_kl(reduction):
    mu = _f64(3, 4, seed=12)
    lv = torch.tensor([[0.0, 1e-3, -0.2, 0.45], [0.55, -0.6, 2.0, -3.0], [0.3, -0.49, 1.5, -1e-2]],
                      dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, v: R.gaussian_kl(m, v, reduction), (mu, lv))
    assert torch.autograd.gradgradcheck(lambda m, v: R.gaussian_kl(m, v, reduction), (mu, lv))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_gradcheck_reconstruction_loss(likelihood, reduction):
    recon = _f64(3, 2, 3, seed=13, scale=2.0)
    x = torch.rand(3, 2, 3, generator=gen(14), dtype=torch.float64)
    if likelihood == "bernoulli":
        with torch.no_grad():
            recon[0, 0, 0] = 0.0
    if likelihood == "bernoulli_probs":
        recon = torch.sigmoid(recon).detach().requires_grad_(True)
    lv = _f64(3, 2, 3, seed=15) if likelihood == "gaussian" else None
    x.requires_grad_(likelihood != "bernoulli")
    inputs = (recon, x) if lv is None else (recon, x, lv)

    def fn(r, t, v=None):
        return R.reconstruction_loss(r, t, likelihood, recon_logvar=v, reduction=reduction)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("n_samples", [1, 3])
def test_gradcheck_reparameterize(n_samples):
    mu, lv = _f64(3, 4, seed=16), _f64(3, 4, seed=17)
    shape = (3, 4) if n_samples == 1 else (n_samples, 3, 4)
    eps = torch.randn(shape, generator=gen(18), dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda m, v: R.reparameterize(m, v, n_samples=n_samples, eps=eps), (mu, lv))


def test_gradcheck_sample_and_kl_and_elbo():
    mu, lv = _f64(3, 4, seed=19), _f64(3, 4, seed=20)
    eps = torch.randn(3, 4, generator=gen(21), dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda m, v: R.sample_and_kl(m, v, eps=eps, reduction="sum"), (mu, lv))
    recon, x = _f64(3, 5, seed=22), torch.rand(3, 5, generator=gen(23), dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda r, m, v: R.elbo_loss(r, x, m, v, beta=4.0, reduction="mean"), (recon, mu, lv))
    assert torch.autograd.gradcheck(
        lambda r, m, v: R.elbo_loss(r, x, m, v, beta=4.0, reduction="mean",
                                    kl_reduction="batchmean"),
        (recon, mu, lv))


# ----------------------------------------------------------------------------- reparameterize


def test_reparameterize_with_eps():
    g = gen(24)
    mu, lv = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g) * 2
    eps = torch.randn(5, 3, generator=g)
    z = R.reparameterize(mu, lv, eps=eps)
    assert z.shape == (5, 3)
    want = mu.double() + eps.double() * torch.exp(0.5 * lv.double())
    assert_close(z, want, dtype=torch.float32, name="z")
    # Known value: mu = 1, lv = log 4 (sigma = 2), eps = -0.5 -> z = 0.
    one = torch.ones(1, 1)
    assert_close(R.reparameterize(one, one * math.log(4.0), eps=-0.5 * one), torch.zeros(1, 1),
                 dtype=torch.float32)


def test_reparameterize_n_samples_shape_and_independence():
    g = gen(25)
    mu, lv = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    z = R.reparameterize(mu, lv, n_samples=5, generator=gen(26))
    assert z.shape == (5, 4, 3)
    # The K samples draw different noise (not one eps broadcast).
    for k in range(1, 5):
        assert not torch.equal(z[0], z[k])
    eps = torch.randn(5, 4, 3, generator=g)
    zk = R.reparameterize(mu, lv, n_samples=5, eps=eps)
    assert_close(zk, mu.double() + eps.double() * torch.exp(0.5 * lv.double()), dtype=torch.float32)


def test_reparameterize_reproducible_by_seed():
    mu, lv = torch.zeros(8, 16), torch.zeros(8, 16)
    a = R.reparameterize(mu, lv, generator=gen(123))
    b = R.reparameterize(mu, lv, generator=gen(123))
    c = R.reparameterize(mu, lv, generator=gen(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a != c).float().mean().item() > 0.99
    # Consecutive draws from one generator differ; torch.manual_seed reproduces the default RNG.
    g = gen(7)
    assert not torch.equal(R.reparameterize(mu, lv, generator=g),
                           R.reparameterize(mu, lv, generator=g))
    torch.manual_seed(99)
    d = R.reparameterize(mu, lv)
    torch.manual_seed(99)
    assert torch.equal(d, R.reparameterize(mu, lv))


def _normal_ks_statistic(sample: torch.Tensor) -> float:
    s, _ = torch.sort(sample.double().flatten())
    n = s.numel()
    cdf = torch.special.ndtr(s)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - cdf).max().item(), (cdf - (i - 1) / n).max().item())


def test_reparameterize_noise_statistics():
    n_rows, latent, k = 1000, 50, 4
    z = R.reparameterize(torch.zeros(n_rows, latent), torch.zeros(n_rows, latent), n_samples=k,
                         generator=gen(2024))
    eps = z.double().flatten()
    n = eps.numel()
    # Mean: sd 1/sqrt(n); variance: sd sqrt(2/n) for normal data. 6 sd -> p ~ 2e-9.
    assert abs(eps.mean().item()) < 6 / math.sqrt(n)
    assert abs(eps.var().item() - 1) < 6 * math.sqrt(2 / n)
    # Kolmogorov-Smirnov vs N(0, 1): critical value sqrt(ln(2 / alpha) / (2 n)) at alpha = 1e-6.
    crit = math.sqrt(math.log(2 / 1e-6) / (2 * n))
    stat = _normal_ks_statistic(eps)
    assert stat < crit, f"KS statistic {stat:.4g} >= critical {crit:.4g}"
    # ...and the test has power: a 0.05 shift or a uniform sample of variance 1 is rejected.
    assert _normal_ks_statistic(eps + 0.05) > crit
    uniform = (torch.rand(n, generator=gen(1), dtype=torch.float64) - 0.5) * math.sqrt(12)
    assert _normal_ks_statistic(uniform) > crit
    # Scale: lv = log 4 gives standard deviation 2 around mu = 3.
    z2 = R.reparameterize(torch.full((n_rows, latent), 3.0),
                          torch.full((n_rows, latent), math.log(4.0)),
                          generator=gen(2025)).double()
    m = z2.numel()
    assert abs(z2.mean().item() - 3) < 6 * 2 / math.sqrt(m)
    assert abs(z2.std().item() - 2) < 6 * 2 / math.sqrt(2 * m)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes(dtype):
    g = gen(27)
    mu64, lv64 = (torch.randn(4, 6, generator=g, dtype=torch.float64),
                  torch.randn(4, 6, generator=g, dtype=torch.float64))
    mu, lv = mu64.to(dtype), lv64.to(dtype)
    z = R.reparameterize(mu, lv, generator=gen(28))
    assert z.dtype == dtype and z.shape == (4, 6)
    assert R.reparameterize(mu, lv, n_samples=2, generator=gen(28)).dtype == dtype
    eps = torch.randn(4, 6, generator=g, dtype=torch.float64).to(dtype)
    z = R.reparameterize(mu, lv, eps=eps)
    want = mu.double() + eps.double() * torch.exp(0.5 * lv.double())
    assert_close(z, want, dtype=dtype, name=f"z {dtype}")
    # Losses accumulate in fp32 (fp64 stays fp64) from the inputs as given.
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    kl = R.gaussian_kl(mu, lv, "none")
    assert kl.dtype == acc
    assert_close(kl, kl_oracle(mu, lv), dtype=acc, name=f"kl {dtype}")
    x = torch.rand(4, 6, generator=g).to(dtype)
    rec = R.reconstruction_loss(mu, x, "bernoulli", reduction="none")
    assert rec.dtype == acc
    assert_close(rec, recon_oracle("bernoulli", mu, x), dtype=acc, name=f"bernoulli {dtype}")


# ------------------------------------------------------------------------ composite ops


@pytest.mark.parametrize("beta", [1.0, 4.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_is_recon_plus_beta_kl(likelihood, reduction, beta):
    recon, x, lv_dec = make_recon(likelihood, (3, 2, 5), seed=29)
    g = gen(30)
    mu, lv = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    loss, rec, kl = R.elbo_loss(recon, x, mu, lv, beta=beta, likelihood=likelihood,
                                recon_logvar=lv_dec, reduction=reduction)
    want_rec = reduce(recon_oracle(likelihood, recon, x, lv_dec), reduction, recon.numel())
    want_kl = reduce(kl_oracle(mu, lv), reduction, mu.numel())
    assert_close(rec, want_rec, dtype=torch.float32, name="recon")
    assert_close(kl, want_kl, dtype=torch.float32, name="kl")
    assert_close(loss, want_rec + beta * want_kl, dtype=torch.float32, name="loss")


def test_elbo_known_value():
    recon, x = torch.zeros(2, 3), torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5]])
    mu, lv = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.zeros(2, 2)
    for beta in (1.0, 4.0):
        loss, rec, kl = R.elbo_loss(recon, x, mu, lv, beta=beta, reduction="batchmean")
        assert_close(rec, torch.tensor(3 * math.log(2)), dtype=torch.float32)
        assert_close(kl, torch.tensor(0.5), dtype=torch.float32)
        assert_close(loss, torch.tensor(3 * math.log(2) + 0.5 * beta), dtype=torch.float32)


def test_sample_and_kl_is_both_ops():
    g = gen(31)
    mu, lv = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    eps = torch.randn(3, 4, generator=g)
    z, kl = R.sample_and_kl(mu, lv, eps=eps, reduction="none")
    assert_close(z, mu.double() + eps.double() * torch.exp(0.5 * lv.double()), dtype=torch.float32)
    assert_close(kl, kl_oracle(mu, lv), dtype=torch.float32)
    z1, _ = R.sample_and_kl(mu, lv, generator=gen(5))
    assert torch.equal(z1, R.reparameterize(mu, lv, generator=gen(5)))


# ------------------------------------------------------------------------------ properties

_f32 = dict(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def latent_pair(draw):
    b, latent = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    n = b * latent
    mu = draw(st.lists(st.floats(-50, 50, **_f32), min_size=n, max_size=n))
    lv = draw(st.lists(st.floats(-20, 20, **_f32), min_size=n, max_size=n))
    return torch.tensor(mu).reshape(b, latent), torch.tensor(lv).reshape(b, latent)


@st.composite
def bernoulli_pair(draw):
    b, d = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    n = b * d
    logits = draw(st.lists(st.floats(-100, 100, **_f32), min_size=n, max_size=n))
    x = draw(st.lists(st.floats(0, 1, **_f32), min_size=n, max_size=n))
    return torch.tensor(logits).reshape(b, d), torch.tensor(x).reshape(b, d)


@settings(max_examples=50, deadline=None)
@given(latent_pair())
def test_property_kl_nonnegative_and_matches_oracle(pair):
    mu, lv = pair
    rows = R.gaussian_kl(mu, lv, "none")
    assert (rows >= 0).all(), rows
    assert_close(rows, kl_oracle(mu, lv), dtype=torch.float32, name="kl")


@settings(max_examples=50, deadline=None)
@given(bernoulli_pair())
def test_property_bernoulli_nonnegative_and_matches_oracle(pair):
    logits, x = pair
    rows = R.reconstruction_loss(logits, x, "bernoulli", reduction="none")
    assert (rows >= 0).all(), rows
    assert_close(rows, recon_oracle("bernoulli", logits, x), dtype=torch.float32, name="bernoulli")
