"""Numerically careful elementwise helpers for the kernels (no libdevice: the interpreter lacks it)."""

import triton
import triton.language as tl


@triton.jit
def to_acc(x):
    """Accumulation dtype: float64 stays float64, everything else is computed in float32."""
    if x.dtype != tl.float64:
        x = x.to(tl.float32)
    return x


# log(1 + t) on t in [0, 1] as t * q(t), q a degree-8 polynomial fitted to log1p(t)/t at
# Chebyshev nodes (numpy chebfit, coefficients rounded to fp32). Error budget, measured
# against float64 on 2e5 points of [0, 1] with fp32 Horner evaluation: at most 2.0e-7 relative
# (about 3.4 ulp of the result; the fit alone is 3.1e-8) -- relative, so tiny t keep full
# precision, unlike log(1 + t) whose 1 + t rounds. tests/test_recon_math.py holds this bound.
# fp64 inputs take the accurate path instead: log(u) * t / (u - 1), u = 1 + t (Goldberg),
# which is exact-ish when 1 + t rounds. No libdevice log1p (the interpreter lacks it), and on
# sm_90 the fp32 path is 9 FFMA/FMUL instead of libdevice's long logf.
@triton.jit
def log1p_unit(t):
    """log(1 + t) for t in [0, 1] (see the error budget above); fp32 or fp64 ``t``."""
    if t.dtype == tl.float64:
        u = 1.0 + t
        return tl.where(u == 1.0, t, tl.log(u) * (t / (u - 1.0)))
    else:
        q = 0.005253457929939032
        q = q * t - 0.02958850748836994
        q = q * t + 0.07836166769266129
        q = q * t - 0.13674770295619965
        q = q * t + 0.19111430644989014
        q = q * t - 0.24844369292259216
        q = q * t + 0.33319270610809326
        q = q * t - 0.49999502301216125
        q = q * t + 1.0
        return t * q


@triton.jit
def expm1_and_phi(v):
    """(exp(v) - 1, exp(v) - 1 - v), with a Taylor series to v^10 for |v| < 0.5 where both
    forms cancel (the series is only fed small values, so it cannot overflow)."""
    small = tl.abs(v) < 0.5
    s = tl.where(small, v, 0.0)
    p = 1.0 / 3628800.0
    p = p * s + 1.0 / 362880.0
    p = p * s + 1.0 / 40320.0
    p = p * s + 1.0 / 5040.0
    p = p * s + 1.0 / 720.0
    p = p * s + 1.0 / 120.0
    p = p * s + 1.0 / 24.0
    p = p * s + 1.0 / 6.0
    p = p * s + 0.5
    phi_series = s * s * p
    ev = tl.exp(v)
    expm1 = tl.where(small, s + phi_series, ev - 1.0)
    # Past v = 64, "- 1 - v" is below half an ulp of exp(v) (even in float64): dropping it
    # keeps phi(+inf) = +inf rather than inf - inf = NaN.
    phi = tl.where(small, phi_series, tl.where(v > 64.0, ev, ev - 1.0 - v))
    return expm1, phi


@triton.jit
def standard_normal(seed, offset):
    """N(0, 1) noise for each int64 element index in ``offset``.

    The Philox-4x32-10 counter is (low 32 bits, high 32 bits, 0, 0) of the index and the key is
    the 64-bit seed, so a value depends only on (seed, index): never on block sizes or launch
    layout. Two of the four outputs feed one Box-Muller transform.
    """
    lo = offset.to(tl.uint32)
    hi = (offset >> 32).to(tl.uint32)
    zero = lo * 0
    r0, r1, _, _ = tl.philox(seed, lo, hi, zero, zero)
    n, _ = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(r0), tl.uint_to_uniform_float(r1))
    return n
