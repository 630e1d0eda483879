"""Shared test helpers: the per-dtype tolerances (stated once) and a comparison that names indices.

Import from test files as ``from helpers import assert_close, TOLERANCES`` (pytest puts
``tests/`` on ``sys.path`` because it has no ``__init__.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
from torch.distributions import Normal, kl_divergence

# Where the kernel tests run: CUDA when present, else the CPU through Triton's interpreter
# (tests/conftest.py sets TRITON_INTERPRET=1 there).
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (major, minor) of the installed Triton: pyproject.toml allows 3.2 and later.
TRITON_VERSION = tuple(int(p) for p in triton.__version__.split(".")[:2])

# dtype -> (rtol, atol). A pair passes where |actual - expected| <= atol + rtol * |expected|
# (torch.isclose semantics), elementwise, compared in float64.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    # float32: unit roundoff u = 2**-24 ~ 6e-8. A row sum of n ~ 1000 terms (D = 785) adds
    # roughly log2(n) * u ~ 6e-7 relative error with pairwise summation, and exp/log in a kernel
    # (Triton's exp2-based exp, libm here) differ by a few ulp, so rtol 1e-5 leaves more than
    # 10x headroom while still catching a wrong constant or a dropped term. atol 1e-5 covers
    # values whose exact value is ~0 after cancellation (sigmoid(l) - x, mu + eps * sigma,
    # a row sum of signed terms of size ~1), where the error is a few u times the size of the
    # cancelled terms, not of the result.
    torch.float32: (1e-5, 1e-5),
    # float64: u ~ 1e-16, but kernels materialize Python float constants (log(2 pi), 1/n!, 0.5)
    # as fp32 literals, which moves results by ~1e-8 relative; rtol 1e-7 allows that and nothing
    # coarser (an fp32 accumulation, ~1e-7 to 1e-6, would fail). atol 1e-8 covers the same
    # constant rounding on results that cancel to ~0.
    torch.float64: (1e-7, 1e-8),
    # float16: 10-bit mantissa, one rounding of the output moves it by up to 2**-11 ~ 4.9e-4
    # relative, and two computations that agree to fp32 precision can round to adjacent fp16
    # values (1 ulp = 2**-10 ~ 9.8e-4 relative). Losses are accumulated in fp32, so only the
    # input/output roundings count: rtol 2e-3 = 2 ulp. atol 1e-5 covers results in the fp16
    # subnormal range (< 6.1e-5, spacing 6e-8) and fp32-level cancellation residue.
    torch.float16: (2e-3, 1e-5),
    # bfloat16: 7-bit mantissa, 1 ulp = 2**-7 ~ 7.8e-3 relative; same reasoning as fp16:
    # rtol 1.6e-2 = 2 ulp, atol for cancellation residue of fp32 intermediates.
    torch.bfloat16: (1.6e-2, 1e-5),
}


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.as_tensor(value)


def _tolerance_dtype(actual: torch.Tensor, expected: torch.Tensor) -> torch.dtype:
    """The least precise floating dtype of the two (float32 when neither is floating)."""
    candidates = [t.dtype for t in (actual, expected) if t.dtype in TOLERANCES]
    if not candidates:
        return torch.float32
    return max(candidates, key=lambda d: TOLERANCES[d][0])


def assert_close(
    actual,
    expected,
    *,
    dtype: torch.dtype | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    name: str = "value",
) -> None:
    """Assert ``actual`` matches ``expected`` elementwise, comparing in float64.

    Tolerances: explicit ``rtol``/``atol`` win; otherwise ``TOLERANCES[dtype]``, where ``dtype``
    defaults to the less precise floating dtype of the two arguments. NaN matches NaN at the
    same position; +inf/-inf match only the same infinity. Shapes must be equal exactly (no
    broadcasting). On failure the message gives the first mismatching index (a tuple), how many
    elements mismatch out of the total, the values there and the tolerance used.
    """
    a, e = _as_tensor(actual), _as_tensor(expected)
    if a.shape != e.shape:
        raise AssertionError(
            f"{name}: shape mismatch: actual {tuple(a.shape)} vs expected {tuple(e.shape)}"
        )
    tol_dtype = dtype if dtype is not None else _tolerance_dtype(a, e)
    if tol_dtype not in TOLERANCES:
        raise KeyError(f"no tolerance stated for {tol_dtype}; add it to TOLERANCES")
    default_rtol, default_atol = TOLERANCES[tol_dtype]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol

    a64 = a.to(device="cpu", dtype=torch.float64)
    e64 = e.to(device="cpu", dtype=torch.float64)
    a_nan, e_nan = torch.isnan(a64), torch.isnan(e64)
    a_inf, e_inf = torch.isinf(a64), torch.isinf(e64)
    finite = ~(a_nan | e_nan | a_inf | e_inf)
    with torch.no_grad():
        close_finite = (a64 - e64).abs() <= atol + rtol * e64.abs()
    ok = torch.where(finite, close_finite, torch.zeros_like(close_finite))
    ok |= a_nan & e_nan
    ok |= a_inf & e_inf & (a64 == e64)  # same-signed infinity
    if bool(ok.all()):
        return

    bad = ~ok
    n_bad, n_total = int(bad.sum()), bad.numel()
    first = tuple(int(i) for i in bad.nonzero()[0].tolist()) if bad.dim() > 0 else ()
    av, ev = a64[first].item(), e64[first].item()
    diff = abs(av - ev)
    raise AssertionError(
        f"{name}: {n_bad} of {n_total} elements mismatch; first at index {first}: "
        f"actual {av!r} vs expected {ev!r} (|diff| {diff:.3g}, allowed "
        f"{atol + rtol * abs(ev):.3g} from rtol={rtol:g}, atol={atol:g}"
        f"{'' if dtype is None else f' for {dtype}'})"
    )


# ------------------------------------------------------------------ independent oracles


def reduce(rows: torch.Tensor, reduction: str, numel: int | None = None) -> torch.Tensor:
    """Per-sample ``rows`` reduced by torch's names: "mean" divides the total by ``numel``
    (the elements the rows summed over), "batchmean" by the batch size."""
    if reduction == "mean":
        return rows.sum() / numel
    return {"none": rows, "sum": rows.sum(), "batchmean": rows.mean()}[reduction]


def kl_oracle(mu: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mu, exp(lv)) || N(0, 1)) in float64 via torch.distributions."""
    mu64, lv64 = mu.double(), lv.double()
    q = Normal(mu64, torch.exp(0.5 * lv64), validate_args=False)
    p = Normal(torch.zeros_like(mu64), torch.ones_like(mu64), validate_args=False)
    return kl_divergence(q, p).sum(-1)


def recon_oracle(likelihood, recon, x, logvar=None) -> torch.Tensor:
    """Per-sample losses in float64 from torch.nn.functional."""
    r, t = recon.double(), x.double()
    if likelihood == "bernoulli":
        elem = F.binary_cross_entropy_with_logits(r, t, reduction="none")
    elif likelihood == "bernoulli_probs":
        elem = F.binary_cross_entropy(r, t, reduction="none")
    elif likelihood == "mse":
        elem = F.mse_loss(r, t, reduction="none")
    else:
        # gaussian_nll_loss clamps var at eps (under no_grad) and divides by it; with a tiny eps
        # and the inputs used here (logvar >= -8, var >= 3e-4) it never clamps.
        var = torch.exp(logvar.double())
        elem = F.gaussian_nll_loss(r, t, var, full=True, eps=1e-300, reduction="none")
    return elem.reshape(elem.shape[0], -1).sum(1)
