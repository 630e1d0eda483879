"""The reconstruction-loss operator's kernel features (issues 9 and 10), at the operator level
(``fastvae.ops.recon.reconstruction_loss`` and the registered ops), against independent torch
oracles: per-element "mean" and "batchmean" divisors, "bernoulli_probs", mixed dtypes, a
broadcast or scalar log-variance, strided and channels_last inputs without copies, the
one-launch forward (in-kernel reduction), the device-side grad_output check, fake strides."""

import math

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from helpers import assert_close

from benchmarks import measure
from fastvae import kernels
from fastvae.kernels import _recon_plan, _recon_reduce
from fastvae.kernels import recon as recon_kernels
from fastvae.kernels._math import log1p_unit
from fastvae.ops import recon as recon_op

OP_REDUCTIONS = ["none", "sum", "mean", "batchmean"]


def loss(recon, x, likelihood, reduction="sum", recon_logvar=None, logvar_value=0.0):
    grad = torch.is_grad_enabled()
    options = recon_op.Options(
        logvar_value, likelihood, reduction, True, grad and recon.requires_grad,
        grad and recon_logvar is not None and recon_logvar.requires_grad,
    )
    return recon_op.reconstruction_loss(recon, x, recon_logvar, options)


def torch_reduce(elem, reduction):
    """torch's meanings: "none" per row, "sum", "mean" per element, "batchmean" sum / B."""
    rows = elem.reshape(elem.shape[0], -1).sum(1)
    return {"none": rows, "sum": elem.sum(), "mean": elem.mean(),
            "batchmean": elem.sum() / elem.shape[0]}[reduction]


def oracle_elem(likelihood, recon, x, var=None):
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(recon, x, reduction="none")
    if likelihood == "bernoulli_probs":
        return F.binary_cross_entropy(recon, x, reduction="none")
    if likelihood == "mse":
        return F.mse_loss(recon, x, reduction="none")
    return F.gaussian_nll_loss(recon, x, var.expand_as(recon), full=True, eps=1e-300,
                               reduction="none")


def inputs(likelihood, shape, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    if likelihood == "bernoulli_probs":
        recon = torch.rand(shape, generator=g, dtype=torch.float64) * 0.98 + 0.01
    else:
        recon = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    return recon.to(device, dtype), x.to(device, dtype)


# ------------------------------------------------------------------ the lean log1p


@triton.jit
def _log1p_unit_kernel(t_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, log1p_unit(tl.load(t_ptr + offs, mask=mask, other=0.0)), mask=mask)


def test_log1p_unit_error_budget_against_float64(device):
    """log1p_unit's stated budget (kernels/_math.py), against float64 log1p of the same input:
    fp32 <= 2.0e-7 relative on [0, 1] (tiny t included); float64 (Goldberg's form) 1e-15."""
    t64 = torch.cat([torch.linspace(0, 1, 16385, dtype=torch.float64),
                     torch.logspace(-30, 0, 255, dtype=torch.float64)])
    for dtype, bound in ((torch.float32, 2.0e-7), (torch.float64, 1e-15)):
        t = t64.to(dtype).to(device)
        out = torch.empty_like(t)
        _log1p_unit_kernel[(triton.cdiv(t.numel(), 4096),)](t_ptr=t, out_ptr=out, n=t.numel(),
                                                            BLOCK=4096)
        exact = torch.log1p(t.double().cpu())
        rel = ((out.double().cpu() - exact).abs() / exact.clamp_min(1e-300)).max().item()
        assert rel <= bound, (dtype, rel)


# ------------------------------------------------------------------ divisors and oracles


@pytest.mark.parametrize("reduction", OP_REDUCTIONS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "bernoulli_probs", "mse", "gaussian"])
def test_every_op_reduction_matches_torch(likelihood, reduction, device):
    shape = (3, 2, 5)
    recon, x = inputs(likelihood, shape, seed=1, device=device)
    var = torch.rand(shape, dtype=torch.float64, device=device) + 0.5
    logvar = var.log() if likelihood == "gaussian" else None
    recon.requires_grad_(True)
    weight = torch.rand(shape[0], dtype=torch.float64, device=device) + 0.5

    def objective(value):  # grad_output != 1
        return (value * weight).sum() if reduction == "none" else 2.5 * value

    got = loss(recon, x, likelihood, reduction, logvar)
    r = recon.detach().requires_grad_(True)
    want = torch_reduce(oracle_elem(likelihood, r, x, var), reduction)
    assert_close(got, want, dtype=torch.float64, name="loss")
    (g_got,) = torch.autograd.grad(objective(got), recon)
    (g_want,) = torch.autograd.grad(objective(want), r)
    assert_close(g_got, g_want, dtype=torch.float64, name="d_recon")


def test_bernoulli_probs_clamp_and_target_gradient(device):
    """F.binary_cross_entropy's exact semantics: log clamped at -100 (p = 0 or 1), its
    gradient (p - x) / max(p (1 - p), 1e-12), and the target gradient."""
    p = torch.tensor([[0.0, 1.0, 1e-30, 1 - 1e-7, 0.5, 1e-8, 0.3, 1.0]], device=device)
    x = torch.tensor([[0.7, 0.2, 1.0, 0.0, 0.5, 0.0, 0.3, 1.0]], device=device)
    for reduction in ("none", "sum"):
        a, b = p.clone().requires_grad_(True), x.clone().requires_grad_(True)
        c, d = p.clone().requires_grad_(True), x.clone().requires_grad_(True)
        got = loss(a, b, "bernoulli_probs", reduction)
        want = torch_reduce(F.binary_cross_entropy(c, d, reduction="none"), reduction)
        assert_close(got, want, rtol=1e-5, atol=1e-4, name="loss")
        got_grads = torch.autograd.grad(got.sum(), (a, b))
        want_grads = torch.autograd.grad(want.sum(), (c, d))
        assert_close(got_grads[0], want_grads[0], rtol=1e-5, atol=1e-5, name="d_p")
        assert_close(got_grads[1], want_grads[1], rtol=1e-5, atol=1e-5, name="d_x")


@pytest.mark.parametrize("likelihood", ["bernoulli_probs", "gaussian"])
def test_gradcheck_new_branches_float64(likelihood, device):
    recon, x = inputs(likelihood, (2, 3), seed=2, device=device)
    args = [recon.requires_grad_(True), x.requires_grad_(True)]
    if likelihood == "gaussian":  # a per-row log-variance, broadcast (stride 0)
        args.append(torch.randn(2, 1, dtype=torch.float64, device=device).requires_grad_(True))
    for reduction in OP_REDUCTIONS:
        fn = lambda r, t, v=None: loss(r, t, likelihood, reduction, v)  # noqa: E731
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ mixed dtypes


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.float64])
def test_mixed_dtypes_each_loaded_in_its_own(x_dtype, device):
    recon, x = inputs("bernoulli", (3, 7), seed=3, dtype=torch.float32, device=device)
    x = x.to(x_dtype)
    recon.requires_grad_(True)
    got = loss(recon, x, "bernoulli", "sum")
    acc = torch.float64 if x_dtype == torch.float64 else torch.float32
    assert got.dtype == acc
    r = recon.detach().to(acc).requires_grad_(True)
    want = F.binary_cross_entropy_with_logits(r, x.to(acc), reduction="sum")
    assert_close(got, want, dtype=torch.float32)
    (g,) = torch.autograd.grad(got, recon)
    assert g.dtype == torch.float32
    assert_close(g, torch.autograd.grad(want, r)[0].float(), dtype=torch.float32)


# ------------------------------------------------------------------ broadcast log-variance


@pytest.mark.parametrize("lv_shape", [(1, 3, 4), (2, 1, 1), (), (1,), (1, 3, 1), (2, 3, 1)])
@pytest.mark.parametrize("reduction", ["none", "batchmean"])
def test_broadcast_logvar_and_its_reduced_gradient(lv_shape, reduction, device):
    shape = (2, 3, 4)
    recon, x = inputs("gaussian", shape, seed=4, device=device)
    lv = (torch.randn(lv_shape, dtype=torch.float64) * 0.5).to(device)
    recon.requires_grad_(True)
    lv.requires_grad_(True)
    got = loss(recon, x, "gaussian", reduction, lv)
    r, v = recon.detach().requires_grad_(True), lv.detach().requires_grad_(True)
    want = torch_reduce(oracle_elem("gaussian", r, x, torch.exp(v).expand(shape)), reduction)
    assert_close(got, want, dtype=torch.float64)
    w = torch.arange(1.0, 3.0, dtype=torch.float64, device=device) if reduction == "none" else 1.5
    g_got = torch.autograd.grad((got * w).sum(), (recon, lv))
    g_want = torch.autograd.grad((want * w).sum(), (r, v))
    assert g_got[1].shape == lv.shape
    for a, b in zip(g_got, g_want):
        assert_close(a, b, dtype=torch.float64)


def test_broadcast_logvar_is_read_without_a_batch_copy(device):
    """A (1, D) log-variance is read with row stride 0: nothing of size B x D is made in the
    forward (only the gradient buffer the kernel writes)."""
    recon, x = inputs("gaussian", (4, 6), seed=5, dtype=torch.float32, device=device)
    lv = torch.zeros(1, 6, device=device)
    counted = measure.count_dispatched(lambda: loss(recon, x, "gaussian", "sum", lv))
    assert counted.ops == ["triton:_recon_loss_fwd_kernel"], counted.ops


@pytest.mark.parametrize("value", [0.0, -1.5, 2.0])
def test_scalar_logvar_float(value, device):
    recon, x = inputs("gaussian", (3, 5), seed=6, device=device)
    recon.requires_grad_(True)
    got = loss(recon, x, "gaussian", "mean", None, value)
    r = recon.detach().requires_grad_(True)
    want = F.gaussian_nll_loss(r, x, torch.full_like(x, math.exp(value)), full=True, eps=1e-300)
    # the float reaches the kernel as fp32: relative error ~6e-8 in v
    assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert_close(torch.autograd.grad(got, recon)[0], torch.autograd.grad(want, r)[0], rtol=1e-6,
                 atol=1e-8)


# ------------------------------------------------------------------ strides, copies, launches


def _no_copies(fn):
    counted = measure.count_dispatched(fn)
    return [op for op in counted.ops if op in ("clone", "copy_", "contiguous", "_to_copy")]


@pytest.mark.parametrize("layout", ["channels_last", "chunk", "expanded_x"])
def test_strided_inputs_are_not_copied(layout, device):
    g = torch.Generator().manual_seed(7)
    if layout == "channels_last":
        recon = (torch.randn(2, 3, 4, 5, generator=g).to(device)
                 .to(memory_format=torch.channels_last))
        x = torch.rand(2, 3, 4, 5, generator=g).to(device).to(memory_format=torch.channels_last)
    elif layout == "chunk":
        recon, x = torch.randn(3, 40, generator=g).to(device).chunk(2, dim=1)
        x = torch.sigmoid(x)
    else:
        recon = torch.randn(3, 20, generator=g).to(device)
        x = torch.rand(1, 20, generator=g).to(device).expand(3, 20)
    recon.requires_grad_(True)
    assert _no_copies(lambda: loss(recon, x, "bernoulli", "sum")) == []
    got = loss(recon, x, "bernoulli", "sum")
    (grad,) = torch.autograd.grad(got, recon)
    want_r = recon.detach().contiguous().requires_grad_(True)
    want = F.binary_cross_entropy_with_logits(want_r, x.contiguous(), reduction="sum")
    assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert_close(grad, torch.autograd.grad(want, want_r)[0])
    if layout == "channels_last":
        assert grad.stride() == recon.stride()  # the gradient keeps the memory format


def test_mixed_layouts_copy_only_the_odd_one(device):
    """recon channels_last, x contiguous: x is copied into recon's layout, recon is not."""
    g = torch.Generator().manual_seed(8)
    recon = torch.randn(2, 3, 2, 2, generator=g).to(device).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 2, 2, generator=g).to(device)
    assert _no_copies(lambda: loss(recon, x, "mse", "none")) == ["copy_"]
    assert_close(loss(recon, x, "mse", "none"),
                 F.mse_loss(recon, x, reduction="none").sum((1, 2, 3)))


def test_opcheck_channels_last_fake_strides(device):
    """The fake implementations return exactly the real strides (a channels_last gradient)."""
    g = torch.Generator().manual_seed(9)
    recon = torch.randn(2, 3, 2, 2, generator=g).to(device).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 2, 2, generator=g).to(device).to(memory_format=torch.channels_last)
    lv = torch.randn(2, 3, 2, 2, generator=g).to(device).to(memory_format=torch.channels_last)
    recon.requires_grad_(True)
    for reduction in ("sum", "mean"):
        torch.library.opcheck(
            recon_op.reconstruction_loss_op,
            (recon.detach(), x, lv, 0.0, "gaussian", reduction, True, True, True, None, 1.0),
        )
    torch.library.opcheck(
        recon_op.reconstruction_loss_op,
        (recon.detach(), x, lv[:1, :, :1, :1], 0.0, "gaussian", "sum", True, True, True, None,
         1.0),
    )
    torch.library.opcheck(
        recon_op.reconstruction_loss_backward_op,
        (recon.detach(), x, lv, 0.0, "gaussian", torch.ones(2, device=device), True, True),
    )


def test_forward_is_one_launch_and_backward_one_tiny_one(device):
    """A scalar reduction: the forward is ONE kernel (loss, gradient and the reduction, no
    separate sum); backward with grad_output 1 is one scale launch that reads grad_output on
    the device (no host sync) and leaves the saved gradient untouched."""
    # 2 chunks per row
    recon, x = inputs("bernoulli", (5, 4100), seed=10, dtype=torch.float32, device=device)
    recon.requires_grad_(True)
    holder = {}
    fwd = measure.count_dispatched(
        lambda: holder.setdefault("loss", loss(recon, x, "bernoulli", "sum"))
    )
    assert fwd.ops == ["triton:_recon_loss_fwd_kernel"] and fwd.syncs == 0
    bwd = measure.count_dispatched(lambda: holder["loss"].backward())
    assert ([op for op in bwd.ops if op.startswith("triton:")]
            == ["triton:_recon_loss_scale_grad_kernel"])
    assert bwd.syncs == 0
    want = torch.sigmoid(recon.detach()) - x
    assert_close(recon.grad, want)


def test_scale_grad_kernel(device):
    buf = torch.arange(5000, dtype=torch.float32, device=device)
    before = buf.clone()
    assert kernels.recon_loss_scale_grad(buf, torch.tensor(1.0, device=device)) is buf
    assert torch.equal(buf, before)
    kernels.recon_loss_scale_grad(buf, torch.tensor(-2.0, device=device))
    assert torch.equal(buf, -2.0 * before)
    kernels.recon_loss_scale_grad(buf, torch.tensor(float("nan"), device=device))
    assert torch.isnan(buf).all()


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_ticket_counter_is_reset_and_results_are_deterministic(reduction, device):
    recon, x = inputs("mse", (3, 9000), seed=11, dtype=torch.float32, device=device)  # 3 chunks/row
    first = loss(recon, x, "mse", reduction)
    assert not recon_kernels._COUNTERS[recon.device].any()
    again = loss(recon, x, "mse", reduction)
    assert torch.equal(first, again)
    assert_close(first, torch_reduce(F.mse_loss(recon, x, reduction="none"), reduction),
                 rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape", [(4, 4000), (6, 5), (2, 4096), (16, 300)])  # masked or even
@pytest.mark.parametrize("case", [
    "bernoulli",
    "gaussian_elements",
    "gaussian_row",
    "strided_x",
    "rows",
])
def test_flat_blocks_and_ticket_groups(case, shape, device, monkeypatch):
    """A scalar reduction over inputs that are each one dense block reads flat blocks that
    span rows; a per-row log-variance, a strided target or a per-row loss keeps the row tiles.
    Tickets are taken in groups (two programs a group here, so that small sizes have several
    groups, a last one of one program). Values and gradients match the torch oracle, and
    every counter is back at 0."""
    monkeypatch.setattr(_recon_reduce, "MIN_GROUP", 2)
    _recon_reduce.ticket_group.cache_clear()
    _recon_plan.fwd_plan.cache_clear()
    seen = []
    launch = recon_kernels._FWD.launch

    def recording(key, n_programs, args, num_warps=4):
        seen.append(dict(zip(recon_kernels._FWD.fn.arg_names, args)))
        return launch(key, n_programs, args, num_warps)

    monkeypatch.setattr(recon_kernels._FWD, "launch", recording)
    try:
        likelihood = "bernoulli" if case in ("bernoulli", "strided_x", "rows") else "gaussian"
        recon, x = inputs(likelihood, shape, seed=13, device=device)
        if case == "strided_x":
            x = torch.cat([x, x], dim=1)[:, : shape[1]]  # row stride 2 D, read in place
        recon.requires_grad_(True)
        g = torch.Generator().manual_seed(14)
        lv = {"gaussian_elements":
              lambda: 0.3 * torch.randn(shape, generator=g, dtype=torch.float64),
              "gaussian_row":
              lambda: 0.3 * torch.randn(shape[0], 1, generator=g, dtype=torch.float64),
              }.get(case, lambda: None)()
        if lv is not None:
            lv = lv.to(device).requires_grad_(True)
        reduction = "none" if case == "rows" else "batchmean"
        w = torch.linspace(0.5, 2.0, shape[0], dtype=torch.float64, device=device)
        got = loss(recon, x, likelihood, reduction, lv)
        rows = oracle_elem(likelihood, recon, x, None if lv is None else lv.exp()).sum(1)
        want = rows if case == "rows" else rows.sum() / shape[0]
        wrt = [t for t in (recon, lv) if t is not None]
        assert_close(got, want, name="loss")
        weight = w if case == "rows" else 1.0
        for a, b in zip(torch.autograd.grad((got * weight).sum(), wrt),
                        torch.autograd.grad((want * weight).sum(), wrt)):
            assert_close(a, b, name="gradient")
        assert [a["FLAT"] for a in seen][:1] == [case in ("bernoulli", "gaussian_elements")]
        assert not recon_kernels._COUNTERS[recon.device].any()
    finally:
        _recon_reduce.ticket_group.cache_clear()
        _recon_plan.fwd_plan.cache_clear()


def test_launches_run_under_a_device_guard(device, monkeypatch):
    """Every recon launch enters kernels._common.device_guard for recon's device (Triton
    launches on the current device, whatever device the pointers live on)."""
    seen = []
    real = recon_kernels.device_guard

    def recording(t):
        seen.append(t.device)
        return real(t)

    monkeypatch.setattr(recon_kernels, "device_guard", recording)
    recon, x = inputs("bernoulli", (2, 3), seed=12, dtype=torch.float32, device=device)
    recon.requires_grad_(True)
    loss(recon, x, "bernoulli", "none").sum().backward()
    loss(recon, x, "bernoulli", "sum").mul(2.0).backward()
    # fwd + bwd of "none", fwd of "sum" and the in-place scale by 2
    assert len(seen) == 4 and all(d == recon.device for d in seen)


@pytest.mark.cuda
def test_second_gpu_launch_uses_its_own_device():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    recon, x = inputs("bernoulli", (4, 33), seed=13, dtype=torch.float32, device="cuda:1")
    recon.requires_grad_(True)
    with torch.cuda.device(0):
        got = loss(recon, x, "bernoulli", "sum")
        got.backward()
    assert_close(got, F.binary_cross_entropy_with_logits(recon.detach(), x, reduction="sum"),
                 rtol=1e-5, atol=1e-4)
    assert_close(recon.grad, torch.sigmoid(recon.detach()) - x)


def test_compiled_channels_last_with_broadcast_logvar(device):
    """torch.compile(fullgraph=True) traces the custom op with channels_last inputs and a
    per-channel log-variance (fake strides and shapes must equal the real ones, or the
    compiled graph asserts or returns a wrong gradient); values and gradients equal eager."""
    g = torch.Generator().manual_seed(14)
    recon = torch.randn(2, 3, 2, 2, generator=g).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 2, 2, generator=g).to(device).to(memory_format=torch.channels_last)
    lv = (0.3 * torch.randn(1, 3, 1, 1, generator=g)).to(device)

    def head(r, v):
        return loss(r * 1.0, x, "gaussian", "batchmean", v) * 2.0

    results = []
    for fn in (head, torch.compile(head, fullgraph=True)):
        r, v = recon.detach().clone().requires_grad_(True), lv.clone().requires_grad_(True)
        value = fn(r, v)
        value.backward()
        results.append((value.detach(), r.grad, v.grad))
    for a, b in zip(*results):
        assert_close(a, b)
