"""The fused reconstruction-loss kernel (bernoulli, mse, gaussian) against the reference and
against torch.nn.functional, on CUDA or on the CPU through Triton's interpreter."""

import math

import pytest
import torch
from helpers import KERNEL_DEVICE, TOLERANCES, assert_close, recon_oracle, reduce
from hypothesis import given, settings
from hypothesis import strategies as st

import fastvae
from fastvae import reference
from fastvae.ops.recon import reconstruction_loss_op

TRITON = {"backend": "triton"}
LIKELIHOODS = ["bernoulli", "mse", "gaussian"]
REDUCTIONS = ["none", "sum", "mean", "batchmean"]
SHAPES = [(1, 1), (3, 785), (2, 3, 5, 7), (2, 4099)]
DTYPES = [
    torch.float32,
    torch.float16,
    torch.float64,
    pytest.param(torch.bfloat16, marks=pytest.mark.cuda),
]


def make(likelihood, shape, dtype, device, seed=0):
    """(recon, x, recon_logvar or None) with x in [0, 1] for bernoulli."""
    g = torch.Generator().manual_seed(seed)
    recon = torch.randn(shape, generator=g) * 2
    x = (torch.rand(shape, generator=g) if likelihood == "bernoulli"
         else torch.randn(shape, generator=g))
    logvar = torch.randn(shape, generator=g) * 0.5 if likelihood == "gaussian" else None
    cast = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
    return cast(recon), cast(x), cast(logvar)


def loss_tol(dtype, rows):
    """Row sums add D rounding errors of the inputs: scale atol by the row size."""
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol * max(1, rows)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_forward_matches_reference_and_oracle(likelihood, shape, dtype, device):
    recon, x, logvar = make(likelihood, shape, dtype, device)
    for reduction in REDUCTIONS:
        got = fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar,
                                          reduction=reduction, **TRITON)
        assert got.dtype == reference.accumulation_dtype(dtype)
        want = reference.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar,
                                             reduction=reduction)
        tol = loss_tol(dtype, math.prod(shape[1:]))
        assert_close(got, want, **tol, name=f"{reduction} vs reference")
        want = reduce(recon_oracle(likelihood, recon, x, logvar), reduction, recon.numel())
        assert_close(got, want, **tol, name=f"{reduction} vs oracle")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_backward_matches_reference(likelihood, reduction, dtype, device):
    shape = (3, 2, 37)
    recon, x, logvar = make(likelihood, shape, dtype, device, seed=1)
    leaves = [recon] + ([logvar] if logvar is not None else [])
    for t in leaves:
        t.requires_grad_(True)
    row_w = torch.rand(shape[0], device=device) + 0.5

    def objective(loss):  # grad_output != 1, and the loss used inside a larger expression
        return (loss * row_w).sum() + 1.0 if reduction == "none" else 3.0 * loss - 2.0

    got = torch.autograd.grad(
        objective(fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar,
                                              reduction=reduction, **TRITON)),
        leaves,
    )
    want = torch.autograd.grad(
        objective(reference.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar,
                                                reduction=reduction)),
        leaves,
    )
    for name, a, b in zip(["d_recon", "d_logvar"], got, want):
        assert a.dtype == dtype
        assert_close(a, b, dtype=dtype, name=name)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_closed_form_gradients(likelihood, device):
    recon, x, logvar = make(likelihood, (4, 9), torch.float64, device, seed=2)
    recon[0, 0] = 0.0  # sigmoid'(0) case
    leaves = ([recon.requires_grad_(True)]
              + ([logvar.requires_grad_(True)] if logvar is not None else []))
    grads = torch.autograd.grad(
        fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar, reduction="sum",
                                    **TRITON),
        leaves,
    )
    r = recon.detach()
    if likelihood == "bernoulli":
        want = [torch.sigmoid(r) - x]
    elif likelihood == "mse":
        want = [2 * (r - x)]
    else:
        inv = torch.exp(-logvar.detach())
        want = [(r - x) * inv, 0.5 * (1 - (x - r) ** 2 * inv)]
    for a, b in zip(grads, want):
        assert_close(a, b, dtype=torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_gradcheck_float64(likelihood, reduction, device):
    recon, x, logvar = make(likelihood, (3, 5), torch.float64, device, seed=3)
    inputs = [recon.requires_grad_(True), x.requires_grad_(True)]
    if logvar is not None:
        inputs.append(logvar.requires_grad_(True))

    def fn(r, t, v=None):
        return fastvae.reconstruction_loss(r, t, likelihood, recon_logvar=v, reduction=reduction,
                                           **TRITON)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_non_contiguous_inputs(likelihood, device):
    recon, x, logvar = make(likelihood, (6, 20), torch.float32, device, seed=4)
    views = [t.t().contiguous().t()[::2, 1:] if t is not None else None for t in (recon, x, logvar)]
    assert not views[0].is_contiguous()
    views[0].requires_grad_(True)
    loss = fastvae.reconstruction_loss(views[0], views[1], likelihood, recon_logvar=views[2],
                                       reduction="sum", **TRITON)
    (grad,) = torch.autograd.grad(loss, views[0])
    dense = [v.detach().contiguous() if v is not None else None for v in views]
    dense[0].requires_grad_(True)
    loss_c = fastvae.reconstruction_loss(dense[0], dense[1], likelihood, recon_logvar=dense[2],
                                         reduction="sum", **TRITON)
    (grad_c,) = torch.autograd.grad(loss_c, dense[0])
    assert torch.equal(loss, loss_c) and torch.equal(grad, grad_c)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_forward_only_writes_no_gradient(likelihood, device):
    recon, x, logvar = make(likelihood, (2, 8), torch.float32, device, seed=5)
    recon.requires_grad_(True)
    with torch.no_grad():
        loss = fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar, **TRITON)
    assert loss.grad_fn is None
    assert_close(loss,
                 reference.reconstruction_loss(recon.detach(), x, likelihood, recon_logvar=logvar))
    # The op itself: gradient buffers come back empty unless asked for, and as dloss/drecon / B
    # for the op's "batchmean" when asked for.
    _, _, d_recon, d_logvar = reconstruction_loss_op(recon.detach(), x, logvar, 0.0, likelihood,
                                                     "batchmean", True, False, False, None, 1.0)
    assert d_recon.numel() == 0 and d_logvar.numel() == 0
    _, _, d_recon, _ = reconstruction_loss_op(recon.detach(), x, logvar, 0.0, likelihood,
                                              "batchmean", True, True, False, None, 1.0)
    r = recon.detach().requires_grad_(True)
    (want,) = torch.autograd.grad(
        reference.reconstruction_loss(r, x, likelihood, recon_logvar=logvar), r
    )
    assert_close(d_recon, want)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_callers_tensors_are_not_modified(likelihood, device):
    recon, x, logvar = make(likelihood, (3, 11), torch.float32, device, seed=6)
    before = [t.clone() for t in (recon, x, logvar) if t is not None]
    recon.requires_grad_(True)
    for reduction in REDUCTIONS:
        loss = fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar,
                                           reduction=reduction, **TRITON)
        loss.sum().backward()
    after = [t.detach() for t in (recon, x, logvar) if t is not None]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_extreme_logits(device):
    logits = torch.tensor([[1e4, -1e4, 50.0, -50.0, 0.0, 88.0, -88.0, 1e-3]], device=device)
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.5, 0.3, 0.7, 1.0]], device=device)
    logits.requires_grad_(True)
    loss = fastvae.reconstruction_loss(logits, x, "bernoulli", reduction="sum", **TRITON)
    assert torch.isfinite(loss)
    assert_close(loss, recon_oracle("bernoulli", logits.detach(), x, None).sum(), rtol=1e-5,
                 atol=1e-5)
    (grad,) = torch.autograd.grad(loss, logits)
    assert_close(grad, torch.sigmoid(logits.detach().double()) - x.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_nan_and_inf_propagate_like_reference(likelihood, device):
    recon, x, logvar = make(likelihood, (4, 3), torch.float32, device, seed=7)
    recon[0, 1] = float("nan")
    x[1, 2] = float("inf")
    recon[2, 0] = float("-inf")
    if logvar is not None:
        logvar[3, 1] = float("nan")
    got = fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar, reduction="none",
                                      **TRITON)
    want = reference.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar,
                                         reduction="none")
    assert_close(got, want)
    assert torch.isnan(got[0])


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_deterministic(likelihood, device):
    recon, x, logvar = make(likelihood, (5, 300), torch.float32, device, seed=8)
    recon.requires_grad_(True)
    outs = []
    for _ in range(2):
        loss = fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar, **TRITON)
        outs.append((loss, torch.autograd.grad(loss, recon)[0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_logvar_without_grad_and_target_with_grad(likelihood, device):
    recon, x, logvar = make(likelihood, (3, 6), torch.float32, device, seed=9)
    x.requires_grad_(True)  # only the target needs a gradient: computed with PyTorch ops
    kw = dict(recon_logvar=logvar, reduction="mean")
    (got,) = torch.autograd.grad(
        2.0 * fastvae.reconstruction_loss(recon, x, likelihood, **kw, **TRITON), x
    )
    (want,) = torch.autograd.grad(
        2.0 * reference.reconstruction_loss(recon, x, likelihood, **kw), x
    )
    assert_close(got, want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(reduction, device):
    recon = torch.zeros(0, 5, device=device, requires_grad=True)
    x = torch.zeros(0, 5, device=device)
    got = fastvae.reconstruction_loss(recon, x, reduction=reduction, **TRITON)
    want = reference.reconstruction_loss(recon, x, reduction=reduction)
    assert got.shape == want.shape
    assert_close(got, want)
    got.sum().backward()
    assert recon.grad.shape == (0, 5)


def test_infinite_logits_like_reference(device):
    inf = float("inf")
    logits = torch.tensor([[inf], [-inf], [inf], [-inf]], device=device)
    x = torch.tensor([[0.0], [1.0], [0.5], [0.25]], device=device)  # confidently wrong: +inf
    got = fastvae.reconstruction_loss(logits, x, "bernoulli", reduction="none", **TRITON)
    assert_close(got, reference.reconstruction_loss(logits, x, "bernoulli", reduction="none"))
    assert torch.isinf(got).all() and (got > 0).all()


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 9),
    features=st.integers(1, 5000),
    likelihood=st.sampled_from(LIKELIHOODS),
    reduction=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**16),
)
def test_random_sizes_match_reference(batch, features, likelihood, reduction, seed):
    """Any batch and feature size (not only powers of two), forward and gradient."""
    recon, x, logvar = make(likelihood, (batch, features), torch.float32, KERNEL_DEVICE, seed=seed)
    recon.requires_grad_(True)
    kw = dict(recon_logvar=logvar, reduction=reduction)
    got = fastvae.reconstruction_loss(recon, x, likelihood, **kw, **TRITON)
    want = reference.reconstruction_loss(recon, x, likelihood, **kw)
    assert_close(got, want, **loss_tol(torch.float32, features), name="loss")
    (g_got,) = torch.autograd.grad(got.sum(), recon)
    (g_want,) = torch.autograd.grad(want.sum(), recon)
    assert_close(g_got, g_want, name="d_recon")


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_backward_scales_the_saved_gradient_in_place_only_on_its_last_use(likelihood, device):
    """For "sum"/"mean" the forward pass writes the gradient (for grad_output = 1) and saves it.
    A backward that is its last use (no retain_graph, no create_graph) scales that buffer in
    place -- no second B x D buffer; one that is not (retain_graph, as gradcheck uses) makes a
    scaled copy, so every call returns the same, correct gradient."""
    recon, x, logvar = make(likelihood, (4, 10), torch.float32, device, seed=7)
    recon.requires_grad_(True)
    inputs = {t.untyped_storage().data_ptr() for t in (recon, x, logvar) if t is not None}
    r = recon.detach().requires_grad_(True)
    (want,) = torch.autograd.grad(
        3.0 * reference.reconstruction_loss(r, x, likelihood, recon_logvar=logvar, reduction="sum"),
        r,
    )

    def saved_gradient(run):
        kept = []

        def pack(t):
            kept.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=logvar,
                                               reduction="sum", **TRITON)
        (grad,) = [t for t in kept
                   if t.untyped_storage().data_ptr() not in inputs and t.shape == recon.shape]
        return run(3.0 * loss), grad

    got, grad = saved_gradient(lambda loss: torch.autograd.grad(loss, recon)[0])
    assert_close(got, want)
    assert torch.equal(grad, got)  # the saved buffer itself was scaled

    def twice(loss):
        first = torch.autograd.grad(loss, recon, retain_graph=True)[0]
        return first, torch.autograd.grad(loss, recon)[0]

    (first, second), grad = saved_gradient(twice)
    assert_close(first, want)
    assert torch.equal(first, second)
