"""Numerically careful elementwise helpers for the kernels.

libdevice only behind a constexpr switch that is on when compiling for a GPU: the interpreter
lacks it.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice


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
# precision, unlike log(1 + t) whose 1 + t rounds. tests/test_recon_features.py holds this bound.
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
def exp_acc(x, FAST: tl.constexpr):
    """exp(x) in x's dtype. FAST (set by launchers only when compiling for a GPU: the
    interpreter has no libdevice) uses libdevice's fast_expf for fp32, ex2.approx.ftz: the
    same ex2.approx as tl.exp (about 2 ulp, PTX ISA) without tl.exp's denormal rescaling
    (3 instructions), so results below 2**-126 flush to 0."""
    if FAST and x.dtype == tl.float32:
        return libdevice.fast_expf(x)
    return tl.exp(x)


@triton.jit
def expm1_and_phi(v, ev):
    """(exp(v) - 1, exp(v) - 1 - v) from v and ev = exp(v) (the caller passes the square of
    exp(v / 2), which the sample needs anyway: one exp per element). Where both direct forms
    cancel, phi(v) = v^2 * P(v) instead (only small values reach P, so it cannot overflow):
    float64, |v| < 0.5: the Taylor series to v^8 (truncation below 1e-11 relative); otherwise
    |v| < 1: a degree-6 least-squares fit of (exp(v) - 1 - v) / v^2 on [-1, 1] (fitted in
    float64, coefficients rounded to fp32: relative error 1.3e-7 before fp32 rounding). Past
    |v| = 1 the direct form's error (a few ulp of ev) is below 3e-6 of phi."""
    if v.dtype == tl.float64:
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
    else:
        small = tl.abs(v) < 1.0
        s = tl.where(small, v, 0.0)
        p = 2.5358680431963876e-05
        p = p * s + 0.00020329236576799303
        p = p * s + 0.0013885394437238574
        p = p * s + 0.008330883458256721
        p = p * s + 0.04166673496365547
        p = p * s + 0.16666696965694427
        p = p * s + 0.5
    phi_series = s * s * p
    expm1 = tl.where(small, s + phi_series, ev - 1.0)
    # Past v = 64, "1 + v" is below half an ulp of exp(v) (even in float64): capping v there
    # changes nothing finite and keeps phi(+inf) = +inf rather than inf - inf = NaN.
    phi = tl.where(small, phi_series, ev - 1.0 - tl.minimum(v, 64.0))
    return expm1, phi


# Normal noise: Philox-4x32-10 and Box-Muller without libdevice.
#
# Element e of a draw with key (seed, offset) reads Philox-4x32-10 at key = seed (low, high
# 32 bits) and counter = (offset low, offset high, q low, q high) with q = e // 4, the quad of
# four consecutive elements; this is the counter layout of PyTorch's CUDA generators (the
# offset in counter words 0-1, the "subsequence" in words 2-3), so a draw that reserved its
# offset from a torch generator never overlaps torch's own draws. The four 32-bit words
# (w0, w1, w2, w3) feed two Box-Muller transforms, one per pair (radius word, angle word):
#   n0, n1 = r(w0) * (cos, sin)(theta(w1)),   n2, n3 = r(w2) * (cos, sin)(theta(w3))
#   r(w) = sqrt(-2 ln u),  u = (2 * (w >> 9) + 1) * 2**-24  (exact in fp32, in (0, 1))
#   theta(w) = 2 pi w / 2**32
# and element 4q + j takes n_j. A value depends only on (seed, offset, e), never on block
# sizes or launch layout. |eps| <= sqrt(48 ln 2) = 5.77 (u >= 2**-24).
#
# Error budget (fp32; measured against float64 on the same words, tests/test_kernels_latent.py):
#   ln u: exponent split exactly by integer ops, ln(z) on z in [sqrt(1/2), sqrt(2)) by
#     t * P(t), P of degree 7 fitted (least squares, float64, coefficients rounded to fp32):
#     relative error 1.8e-7; the split keeps it relative even as u -> 1 (k = 24), so r has
#     relative error below 1e-7 + a few ulp.
#   sin/cos: the angle is reduced EXACTLY on the integer word (quadrant = top bits), leaving
#     |x| <= pi/4, where fitted odd degree-7 and even degree-6 polynomials have absolute
#     error 4.2e-9 and 5.5e-8 (plus fp32 rounding).
#   Together: |eps - eps_float64| <= 2e-6 * max(1, |eps|) for every word (tested).

_LN2 = tl.constexpr(0.6931471805599453)
_HALF_PI_OVER_2_30 = tl.constexpr(1.4629180792671596e-09)  # (pi / 2) / 2**30
_SQRT_HALF_BITS = tl.constexpr(0x3F3504F3)  # float32 bits of sqrt(1/2)


@triton.jit
def _minus_two_log_uniform(w):
    """-2 ln u for u = (2 * (w >> 9) + 1) * 2**-24 from a uint32 word: u in (0, 1), result in
    [1.2e-7, 33.3]. The odd integer m = 2 * (w >> 9) + 1 < 2**24 converts to fp32 exactly;
    m = 2**k * z with z in [sqrt(1/2), sqrt(2)) by integer ops on its bits, ln z = t * P(t)
    with t = z - 1 (P of degree 7, see above), and ln u = (k - 24) ln 2 + ln z."""
    m = (((w >> 9) << 1) | 1).to(tl.float32)
    bits = m.to(tl.int32, bitcast=True)
    shifted = bits - _SQRT_HALF_BITS
    # m >= 1, so shifted >= 0 and this is floor(log2(m / sqrt(1/2)))
    k = (shifted >> 23).to(tl.float32)
    z = (bits - (shifted & -8388608)).to(tl.float32, bitcast=True)  # -8388608 = 0xFF800000
    t = z - 1.0
    p = -0.10134179145097733
    p = p * t + 0.1623438149690628
    p = p * t - 0.17247051000595093
    p = p * t + 0.19898544251918793
    p = p * t - 0.24970068037509918
    p = p * t + 0.33335113525390625
    p = p * t - 0.5000036358833313
    p = p * t + 0.9999999403953552
    return -2.0 * ((k - 24.0) * _LN2 + t * p)


@triton.jit
def _cos_sin_turn(w):
    """(cos, sin) of 2 pi w / 2**32 for a uint32 word w. The turn splits exactly into a
    quadrant q (top two bits, rounded) and a signed remainder x in [-pi/4, pi/4), where short
    polynomials are accurate; the quadrant then swaps and negates."""
    v = w + 0x20000000  # + 1/8 turn (uint32 wraps): q = round(4 w / 2**32) mod 4
    q = v >> 30
    x = ((v & 0x3FFFFFFF).to(tl.int32) - 0x20000000).to(tl.float32) * _HALF_PI_OVER_2_30
    s2 = x * x
    sin_x = -0.0001950394216692075
    sin_x = sin_x * s2 + 0.008332036435604095
    sin_x = sin_x * s2 - 0.16666650772094727
    sin_x = x + x * s2 * sin_x
    cos_x = -0.001358582521788776
    cos_x = cos_x * s2 + 0.04165501892566681
    cos_x = cos_x * s2 - 0.4999985694885254
    cos_x = cos_x * s2 + 1.0
    swap = (q & 1) != 0
    c = tl.where(swap, sin_x, cos_x)
    s = tl.where(swap, cos_x, sin_x)
    c = tl.where(((q + 1) & 2) != 0, -c, c)
    s = tl.where((q & 2) != 0, -s, s)
    return c, s


@triton.jit
def _philox_words(seed, offset, quad):
    """The four uint32 Philox-4x32-10 words of ``quad`` (int64 tensor) at key ``seed`` and
    counter words 0-1 ``offset`` (both int64 scalars, read as uint64 bits)."""
    q_lo = quad.to(tl.uint32)
    q_hi = (quad >> 32).to(tl.uint32)
    off = offset.to(tl.int64).to(tl.uint64, bitcast=True)
    o_lo = (off & 0xFFFFFFFF).to(tl.uint32) + q_lo * 0
    o_hi = (off >> 32).to(tl.uint32) + q_lo * 0
    return tl.philox(seed, o_lo, o_hi, q_lo, q_hi)


@triton.jit
def standard_normal4(seed, offset, quad):
    """The four N(0, 1) values (n0, n1, n2, n3) of elements 4 * quad + 0..3 (see above)."""
    w0, w1, w2, w3 = _philox_words(seed, offset, quad)
    r0 = tl.sqrt(_minus_two_log_uniform(w0))
    r2 = tl.sqrt(_minus_two_log_uniform(w2))
    c1, s1 = _cos_sin_turn(w1)
    c3, s3 = _cos_sin_turn(w3)
    return r0 * c1, r0 * s1, r2 * c3, r2 * s3


@triton.jit
def standard_normal(seed, offset, index):
    """N(0, 1) noise of each int64 element index (the value :func:`standard_normal4` gives the
    same element): for layouts that cannot hand a thread whole quads (the per-row KL's row
    tiles in latent.py). Each element runs its quad's Philox and the one Box-Muller half it
    needs; sin is cos a quarter turn earlier."""
    w0, w1, w2, w3 = _philox_words(seed, offset, index >> 2)
    j = index & 3
    first = j < 2
    radius = tl.sqrt(_minus_two_log_uniform(tl.where(first, w0, w2)))
    turn = tl.where(first, w1, w3) - tl.where((j & 1) != 0, 0x40000000, 0).to(tl.uint32)
    c, _ = _cos_sin_turn(turn)
    return radius * c
