"""The fused latent kernel (reparameterize, gaussian_kl, sample_and_kl) against the reference
and against torch.distributions, on CUDA or on the CPU through Triton's interpreter."""

import math

import pytest
import torch
import triton
import triton.language as tl
from helpers import KERNEL_DEVICE, assert_close, kl_oracle
from hypothesis import given, settings
from hypothesis import strategies as st

import fastvae
from fastvae import reference
from fastvae.kernels import latent as latent_kernels
from fastvae.kernels._math import standard_normal, standard_normal4
from fastvae.ops import latent as latent_op

TRITON = {"backend": "triton"}
SHAPES = [(1, 1), (1, 20), (7, 3), (5, 129), (33, 20)]
DTYPES = [
    torch.float32,
    torch.float16,
    torch.float64,
    pytest.param(torch.bfloat16, marks=pytest.mark.cuda),
]


def gen(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


def latent(shape, dtype, device, seed=0, lv_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g)
    lv = torch.randn(shape, generator=g) * lv_scale
    return mu.to(device, dtype), lv.to(device, dtype)


def kernel_eps(shape, device, seed, n_samples=1, dtype=torch.float32):
    """The kernel's noise for ``seed``: with mu = 0 and logvar = 0, z is eps itself."""
    zeros = torch.zeros(shape, device=device, dtype=dtype)
    return fastvae.reparameterize(zeros, zeros, n_samples=n_samples, generator=gen(device, seed),
                                  **TRITON)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_sample_and_kl_forward(shape, dtype, device):
    mu, lv = latent(shape, dtype, device)
    z, kl = fastvae.sample_and_kl(mu, lv, reduction="none", generator=gen(device, 3), **TRITON)
    eps = kernel_eps(shape, device, 3)
    assert z.dtype == dtype and kl.dtype == reference.accumulation_dtype(dtype)
    assert_close(z, reference.reparameterize(mu, lv, eps=eps), dtype=dtype, name="z")
    assert_close(kl, reference.gaussian_kl(mu, lv, "none"), dtype=dtype, name="kl vs reference")
    assert_close(kl, kl_oracle(mu, lv), dtype=dtype, name="kl vs torch.distributions")


@pytest.mark.parametrize("shape", [(6, 5), (300, 30)], ids=["one-program", "many-programs"])
@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
def test_gaussian_kl_reductions(reduction, shape, device):
    """A reduced KL comes from one program below 8192 elements (300 x 30 is above)."""
    mu, lv = latent(shape, torch.float32, device)
    got = fastvae.gaussian_kl(mu, lv, reduction, **TRITON)
    rows = kl_oracle(mu, lv)
    want = {"none": rows, "sum": rows.sum(), "batchmean": rows.mean()}[reduction]
    assert_close(got, want, dtype=torch.float32)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    z, kl = fastvae.sample_and_kl(mu, lv, reduction=reduction, **TRITON)
    assert_close(kl, want, dtype=torch.float32)
    weight = (torch.randn(rows.shape, device=device) if reduction == "none"
              else torch.tensor(2.5, device=device))
    got = torch.autograd.grad((kl * weight).sum(), (mu, lv))
    scale = (weight / shape[0] if reduction == "batchmean" else weight).reshape(-1, 1)
    assert_close(got[0], scale * mu.detach(), name="dmu")
    assert_close(got[1], scale * 0.5 * torch.expm1(lv.detach()), name="dlogvar")


def test_kl_precise_near_zero_and_at_extremes(device):
    lv = torch.tensor(
        [[1e-7, -1e-7, 1e-4, -1e-4, 0.01, -0.3, 0.4999, 0.5, -0.5001, 3.0],
         [-80.0, 80.0, -40.0, 40.0, -1.0, 1.0, 0.2, -0.2, 60.0, -60.0]],
        device=device,
    )
    mu = torch.zeros_like(lv)
    got = fastvae.gaussian_kl(mu, lv, "none", **TRITON)
    assert_close(got, kl_oracle(mu, lv), rtol=1e-5, atol=0)
    # Row of tiny log-variances alone: the cancellation the series exists for.
    tiny = lv[:1, :5]
    assert_close(fastvae.gaussian_kl(tiny * 0, tiny, "none", **TRITON), kl_oracle(tiny * 0, tiny),
                 rtol=1e-5, atol=0)


def test_overflow_and_nan_propagate_like_reference(device):
    mu = torch.tensor([[0.5, 1.0], [float("nan"), 0.0], [0.0, 0.0], [1e20, 0.0]], device=device)
    lv = torch.tensor([[100.0, 0.0], [0.0, 0.0], [0.0, float("inf")], [0.0, -100.0]], device=device)
    z, kl = fastvae.sample_and_kl(mu, lv, reduction="none", generator=gen(device, 1), **TRITON)
    eps = kernel_eps(mu.shape, device, 1)
    assert_close(kl, reference.gaussian_kl(mu, lv, "none"), name="kl")
    assert_close(z, reference.reparameterize(mu, lv, eps=eps), name="z")
    assert torch.isinf(kl[0]) and torch.isnan(kl[1]) and torch.isinf(kl[2]) and torch.isinf(kl[3])


@pytest.mark.parametrize("reduction", ["none", "sum", "batchmean"])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (4, 130)])
def test_sample_and_kl_backward(shape, reduction, device):
    mu, lv = latent(shape, torch.float32, device, seed=1)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    w = torch.randn(shape, device=device)
    row_w = torch.rand(shape[0], device=device) + 0.5

    def objective(z, kl):
        kl_term = (kl * row_w).sum() if reduction == "none" else 3.0 * kl
        return (z * w).sum() + kl_term  # grad_output != 1 for both outputs

    z, kl = fastvae.sample_and_kl(mu, lv, reduction=reduction, generator=gen(device, 7), **TRITON)
    got = torch.autograd.grad(objective(z, kl), (mu, lv))
    eps = kernel_eps(shape, device, 7)
    zr, klr = reference.sample_and_kl(mu, lv, reduction=reduction, eps=eps)
    want = torch.autograd.grad(objective(zr, klr), (mu, lv))
    assert_close(got[0], want[0], dtype=torch.float32, name="dmu")
    assert_close(got[1], want[1], dtype=torch.float32, name="dlogvar")
    # Closed forms (DESIGN.md section 2): dmu = dz + g*mu, dlv = 0.5 dz eps std + g*0.5*(e^lv - 1).
    g = (row_w if reduction == "none"
         else torch.full_like(row_w, 3.0 / (shape[0] if reduction == "batchmean" else 1)))
    std = torch.exp(0.5 * lv.detach())
    assert_close(got[0], w + g[:, None] * mu.detach(), dtype=torch.float32, name="dmu closed form")
    dlv = 0.5 * w * eps * std + g[:, None] * 0.5 * torch.expm1(lv.detach())
    assert_close(got[1], dlv, dtype=torch.float32, name="dlogvar closed form")


@pytest.mark.parametrize("use", ["z", "kl"])
def test_backward_with_one_output_unused(use, device):
    mu, lv = latent((4, 6), torch.float32, device, seed=2)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    z, kl = fastvae.sample_and_kl(mu, lv, generator=gen(device, 5), **TRITON)
    dmu, dlv = torch.autograd.grad(z.sum() if use == "z" else kl, (mu, lv))
    if use == "z":
        eps = kernel_eps((4, 6), device, 5)
        assert_close(dmu, torch.ones_like(mu))
        assert_close(dlv, 0.5 * eps * torch.exp(0.5 * lv.detach()))
    else:
        assert_close(dmu, mu.detach() / 4)
        assert_close(dlv, 0.5 * torch.expm1(lv.detach()) / 4)


def test_reparameterize_n_samples(device):
    mu, lv = latent((3, 5), torch.float32, device, seed=4)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    z = fastvae.reparameterize(mu, lv, n_samples=4, generator=gen(device, 9), **TRITON)
    assert z.shape == (4, 3, 5)
    eps = kernel_eps((3, 5), device, 9, n_samples=4)
    assert_close(z, reference.reparameterize(mu, lv, n_samples=4, eps=eps))
    assert not torch.equal(z[0], z[1])
    # The first sample is the n_samples=1 draw of the same seed: the counter is the element index.
    assert torch.equal(z[0], fastvae.reparameterize(mu, lv, generator=gen(device, 9), **TRITON))
    w = torch.randn(4, 3, 5, device=device)
    got = torch.autograd.grad((z * w).sum(), (mu, lv))
    want = torch.autograd.grad((reference.reparameterize(mu, lv, n_samples=4, eps=eps) * w).sum(),
                               (mu, lv))
    assert_close(got[0], want[0], name="dmu")
    assert_close(got[1], want[1], name="dlogvar")


def test_gradcheck_float64(device):
    mu, lv = latent((3, 4), torch.float64, device, seed=5)
    mu.requires_grad_(True)
    lv.requires_grad_(True)

    def fused(m, v):  # a fresh generator per call: gradcheck needs the same noise every time
        return fastvae.sample_and_kl(m, v, reduction="none", generator=gen(device, 2), **TRITON)

    def multi(m, v):
        return fastvae.reparameterize(m, v, n_samples=3, generator=gen(device, 2), **TRITON)

    def kl_mean(m, v):
        return fastvae.gaussian_kl(m, v, "mean", **TRITON)

    for fn in (fused, multi, kl_mean):
        assert torch.autograd.gradcheck(fn, (mu, lv), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_non_contiguous_inputs(device):
    mu_full, lv_full = latent((6, 10), torch.float32, device, seed=6)
    mu, lv = mu_full[:, ::2], lv_full.t().contiguous().t()[:, 1::2]  # strided views
    assert not mu.is_contiguous() and not lv.is_contiguous()
    z, kl = fastvae.sample_and_kl(mu, lv, reduction="none", generator=gen(device, 4), **TRITON)
    z_c, kl_c = fastvae.sample_and_kl(mu.contiguous(), lv.contiguous(), reduction="none",
                                      generator=gen(device, 4), **TRITON)
    assert torch.equal(z, z_c) and torch.equal(kl, kl_c)


def test_forward_only_and_inputs_untouched(device):
    mu, lv = latent((5, 7), torch.float32, device, seed=8)
    mu0, lv0 = mu.clone(), lv.clone()
    mu.requires_grad_(True)
    with torch.no_grad():
        z, kl = fastvae.sample_and_kl(mu, lv, **TRITON)
    assert z.grad_fn is None and kl.grad_fn is None
    z, kl = fastvae.sample_and_kl(mu, lv, **TRITON)
    (z.sum() + kl).backward()
    assert torch.equal(mu.detach(), mu0) and torch.equal(lv, lv0)


def test_seeded_runs_are_bitwise_reproducible(device):
    mu, lv = latent((9, 11), torch.float32, device, seed=9)
    mu.requires_grad_(True)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        z, kl = fastvae.sample_and_kl(mu, lv, **TRITON)
        (grad,) = torch.autograd.grad((z * z).sum() + kl, mu)
        runs.append((z, kl, grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    # Consecutive calls draw fresh noise; so do different seeds.
    z1 = fastvae.reparameterize(mu, lv, **TRITON)
    z2 = fastvae.reparameterize(mu, lv, **TRITON)
    assert not torch.equal(z1, z2)
    assert not torch.equal(kernel_eps((9, 11), device, 0), kernel_eps((9, 11), device, 1))


def test_noise_statistics(device):
    n = 200_000
    eps = kernel_eps((n // 100, 100), device, 11).double().flatten().cpu()
    # Mean and variance of n standard normals: sd of the mean is 1/sqrt(n), of the variance
    # sqrt(2/n); 6 sd bounds fail a correct generator with probability ~1e-9.
    assert abs(eps.mean().item()) < 6 / math.sqrt(n)
    assert abs(eps.var().item() - 1) < 6 * math.sqrt(2 / n)
    # Kolmogorov-Smirnov against N(0, 1): critical value at alpha = 1e-6 is about 2.7 / sqrt(n).
    s, _ = eps.sort()
    cdf = torch.special.ndtr(s)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 2.7 / math.sqrt(n), f"KS statistic {ks:.5f}"
    # Neighbouring elements (same row, next row) and samples k, k+1 are uncorrelated.
    grid = eps.view(-1, 100)
    for a, b in ((grid[:, :-1], grid[:, 1:]), (grid[:-1], grid[1:])):
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(r) < 6 / math.sqrt(a.numel())
    k = kernel_eps((100, 50), device, 12, n_samples=2).double().cpu()
    r = torch.corrcoef(torch.stack([k[0].flatten(), k[1].flatten()]))[0, 1].item()
    assert abs(r) < 6 / math.sqrt(5000)


def test_counter_uses_high_index_bits(device):
    """Noise for element index i and i + 2**34 (quads 2**32 apart) must differ (int64-safe
    counter), and so must two counter offsets."""
    out = torch.empty(3, 16, device=device)
    _draw_normals[(1,)](out[0], 5, 0, 0, N=16)
    _draw_normals[(1,)](out[1], 5, 0, 2**34, N=16)
    _draw_normals[(1,)](out[2], 5, 1, 0, N=16)
    assert torch.isfinite(out).all()
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])


@triton.jit
def _draw_normals(out_ptr, seed, offset, base, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(out_ptr + offs, standard_normal(seed, offset, base + offs.to(tl.int64)))


@triton.jit
def _quad_normals_and_words(out_ptr, words_ptr, seed, offset, Q: tl.constexpr):
    """standard_normal4 of quads 0..Q-1 (out: (Q, 4)) and the Philox words they came from."""
    q = tl.arange(0, Q).to(tl.int64)
    n0, n1, n2, n3 = standard_normal4(seed, offset, q)
    tl.store(out_ptr + q * 4 + 0, n0)
    tl.store(out_ptr + q * 4 + 1, n1)
    tl.store(out_ptr + q * 4 + 2, n2)
    tl.store(out_ptr + q * 4 + 3, n3)
    off = tl.full([Q], offset, tl.int64).to(tl.uint64, bitcast=True)
    w0, w1, w2, w3 = tl.philox(seed, (off & 0xFFFFFFFF).to(tl.uint32), (off >> 32).to(tl.uint32),
                               q.to(tl.uint32), (q >> 32).to(tl.uint32))
    tl.store(words_ptr + q * 4 + 0, w0.to(tl.int64) & 0xFFFFFFFF)
    tl.store(words_ptr + q * 4 + 1, w1.to(tl.int64) & 0xFFFFFFFF)
    tl.store(words_ptr + q * 4 + 2, w2.to(tl.int64) & 0xFFFFFFFF)
    tl.store(words_ptr + q * 4 + 3, w3.to(tl.int64) & 0xFFFFFFFF)


def test_noise_matches_float64_box_muller(device):
    """The polynomial log / sin / cos (kernels/_math.py) against float64 Box-Muller of the
    same Philox words: |eps - eps64| <= 2e-6 * max(1, |eps|)."""
    Q = 4096
    out = torch.empty(Q, 4, device=device)
    words = torch.empty(Q, 4, dtype=torch.int64, device=device)
    _quad_normals_and_words[(1,)](out, words, 12345, 7, Q=Q)
    w = words.cpu().double()
    def bm(radius_word, angle_word):
        u = (2 * torch.floor(radius_word / 512) + 1) / 2**24
        r = torch.sqrt(-2 * torch.log(u))
        theta = 2 * math.pi * angle_word / 2**32
        return r * torch.cos(theta), r * torch.sin(theta)
    n0, n1 = bm(w[:, 0], w[:, 1])
    n2, n3 = bm(w[:, 2], w[:, 3])
    want = torch.stack([n0, n1, n2, n3], dim=1)
    got = out.cpu().double()
    err = (got - want).abs() / want.abs().clamp(min=1)
    assert err.max().item() <= 2e-6, (
        f"worst at {divmod(err.argmax().item(), 4)}: {err.max().item():.3g}"
    )


def test_noise_is_a_function_of_the_element_index_only(device, monkeypatch):
    """Flat layout (contiguous), row tile (a chunk view of one encoder output) and other block
    sizes / grid caps give bitwise the same z; so do the per-element and per-quad forms."""
    enc = torch.randn(37, 2 * 23, generator=torch.Generator().manual_seed(3)).to(device)
    mu, lv = enc.chunk(2, dim=1)
    key = (987654321, 5)
    z_rows, kl_rows = latent_kernels.sample_and_kl_fwd(mu, lv, key, 2, True, "total", 1)
    z_flat, kl_flat = latent_kernels.sample_and_kl_fwd(mu.contiguous(), lv.contiguous(), key, 2,
                                                       True, "total", 1)
    assert torch.equal(z_rows, z_flat)
    assert_close(kl_rows, kl_flat)
    for block, cap in ((256, 1024), (1024, 1), (512, 2)):
        monkeypatch.setattr(latent_kernels, "_FLAT_BLOCK", block)
        monkeypatch.setattr(latent_kernels, "_MAX_PROGRAMS", cap)
        latent_kernels._layout.cache_clear()
        z, kl = latent_kernels.sample_and_kl_fwd(mu.contiguous(), lv.contiguous(), key, 2, True,
                                                 "total", 1)
        assert torch.equal(z, z_flat), (block, cap)
        assert_close(kl, kl_flat)
    latent_kernels._layout.cache_clear()


@pytest.mark.parametrize("reduction", ["sum", "mean", "batchmean"])
def test_total_kl_over_many_programs_is_deterministic(reduction, device, monkeypatch):
    """The last-program ticket: many programs, one launch, a fixed-order sum; the counter is
    back at 0 after every launch."""
    monkeypatch.setattr(latent_kernels, "_FLAT_BLOCK", 64)
    latent_kernels._layout.cache_clear()
    mu, lv = latent((50, 13), torch.float32, device, seed=12)  # 650 elements: 11 programs
    got = [latent_op.sample_and_kl(mu, lv, None, 1, False, True, reduction)[1] for _ in range(2)]
    rows = kl_oracle(mu, lv)
    want = {"sum": rows.sum(), "mean": rows.sum() / mu.numel(), "batchmean": rows.mean()}[reduction]
    assert torch.equal(got[0], got[1])
    assert_close(got[0], want)
    assert latent_kernels._TICKETS[mu.device].item() == 0
    latent_kernels._layout.cache_clear()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "chunk"])
def test_any_latent_shape(layout, device):
    """(B, C, H, W) latents at the op level: z has mu's shape, the KL sums over all non-batch
    dims; values, gradients and opcheck (fake strides equal real ones)."""
    g = torch.Generator().manual_seed(4)
    if layout == "chunk":
        enc = torch.randn(3, 4, 2, 3, generator=g).to(device)
        mu, lv = enc.chunk(2, dim=1)
    else:
        mu, lv = (torch.randn(3, 2, 2, 3, generator=g).to(device) for _ in range(2))
        if layout == "channels_last":
            mu, lv = (mu.to(memory_format=torch.channels_last),
                      lv.to(memory_format=torch.channels_last))
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    z, kl = latent_op.sample_and_kl(mu, lv, gen(device, 1), 1, True, True, "none")
    assert z.shape == mu.shape and kl.shape == (3,)
    eps = latent_op.sample_and_kl(torch.zeros_like(mu), torch.zeros_like(lv), gen(device, 1), 1,
                                  True, False, "none")[0]
    flat = lambda t: t.reshape(3, -1)  # noqa: E731
    assert_close(z, reference.reparameterize(mu, lv, eps=eps), name="z")
    assert_close(kl, kl_oracle(flat(mu.detach()), flat(lv.detach())), name="kl")
    w = torch.randn(z.shape, generator=g).to(device)
    got = torch.autograd.grad((z * w).sum() + 2 * kl.sum(), (mu, lv))
    zr = reference.reparameterize(mu, lv, eps=eps)
    want = torch.autograd.grad(
        (zr * w).sum() + 2 * reference.gaussian_kl(flat(mu), flat(lv), "none").sum(), (mu, lv)
    )
    assert_close(got[0], want[0], name="dmu")
    assert_close(got[1], want[1], name="dlogvar")
    key = torch.tensor([5, 6], device=device)
    for reduction in ("none", "sum", "mean"):
        torch.library.opcheck(latent_op.sample_and_kl_op,
                              (mu.detach(), lv.detach(), key, 2, True, True, reduction))
    torch.library.opcheck(latent_op.sample_and_kl_backward_op,
                          (mu.detach(), lv.detach(), key, 1, torch.ones(mu.shape, device=device),
                           torch.ones((), device=device), "batchmean", 1.0))


class _FakePhiloxGenerator:
    """The three methods of a CUDA generator that the host key reads."""

    def __init__(self, seed, offset):
        self.seed, self.offset = seed, offset

    def initial_seed(self):
        return self.seed

    def get_offset(self):
        return self.offset

    def set_offset(self, offset):
        self.offset = offset


class _FakeCudaTensor:
    """What the host key reads of a CUDA tensor."""

    is_cuda = True

    def get_device(self):
        return 0


def test_host_key_follows_the_generator_offset(monkeypatch):
    """Eager CUDA draws take (seed, offset / 4) from the generator and advance its offset by
    4 per sample (torch's reservation protocol): no launch, reproducible after reseeding,
    fresh per call. Under torch.compile the key is a device tensor instead."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    cuda = _FakeCudaTensor()
    g = _FakePhiloxGenerator(2**64 - 3, 8)
    assert latent_op.philox_key(g, cuda, 3) == (-3, 2)
    assert g.offset == 8 + 12
    assert latent_op.philox_key(g, cuda, 1) == (-3, 5)  # fresh counters
    g.offset = 8  # what manual_seed does: the same draws again
    assert latent_op.philox_key(g, cuda, 3) == (-3, 2)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert latent_op._host_key(g, cuda, 1) is None  # a captured graph needs a device key
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert latent_op._host_key(g, cuda, 1) is None


@pytest.mark.cuda
def test_cuda_eager_draw_launches_only_the_kernel():
    """On CUDA outside capture the key comes from the generator on the host: one launch, no
    randint; torch.manual_seed reproduces it; consecutive calls differ."""
    from benchmarks import measure

    mu = torch.randn(16, 20, device="cuda")
    lv = torch.randn(16, 20, device="cuda")
    fastvae.sample_and_kl(mu, lv, reduction="sum", **TRITON)
    counted = measure.count_dispatched(
        lambda: fastvae.sample_and_kl(mu, lv, reduction="sum", **TRITON)
    )
    assert "randint" not in counted.ops
    torch.manual_seed(3)
    a = fastvae.reparameterize(mu, lv, **TRITON)
    b = fastvae.reparameterize(mu, lv, **TRITON)
    torch.manual_seed(3)
    assert torch.equal(a, fastvae.reparameterize(mu, lv, **TRITON))
    assert not torch.equal(a, b)


@pytest.mark.cuda
def test_user_generator_in_a_captured_graph():
    """A user generator registered with the graph (graph.register_generator_state) draws
    fresh noise on every replay; an unregistered one is a clear error."""
    mu = torch.zeros(64, 32, device="cuda")
    lv = torch.zeros(64, 32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fastvae.reparameterize(mu, lv, generator=g, **TRITON)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(g)
    with torch.cuda.graph(graph):
        z = fastvae.reparameterize(mu, lv, generator=g, **TRITON)
    graph.replay()
    first = z.clone()
    graph.replay()
    assert not torch.equal(first, z)
    unregistered = torch.Generator(device="cuda")  # made before the capture: torch refuses
    with pytest.raises(ValueError, match="register_generator_state"):  # a new one inside it
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            fastvae.reparameterize(mu, lv, generator=unregistered, **TRITON)


def test_empty_batch(device):
    mu = torch.zeros(0, 4, device=device)
    z, kl = fastvae.sample_and_kl(mu, mu.clone(), reduction="none", **TRITON)
    assert z.shape == (0, 4) and kl.shape == (0,)
    assert fastvae.gaussian_kl(mu, mu.clone(), "sum", **TRITON).item() == 0
    assert torch.isnan(fastvae.gaussian_kl(mu, mu.clone(), "mean", **TRITON))
    assert torch.isnan(fastvae.gaussian_kl(mu, mu.clone(), "batchmean", **TRITON))


def test_empty_latent_rows(device):
    """(B, 0) latents: each row's KL is an empty sum, 0; "batchmean" divides the total 0 by
    B (0, as the reference), only "mean" divides by no elements (NaN)."""
    mu = torch.zeros(3, 0, device=device)
    for reduction in ("none", "sum", "mean", "batchmean"):
        got = fastvae.gaussian_kl(mu, mu.clone(), reduction, **TRITON)
        want = reference.gaussian_kl(mu, mu.clone(), reduction)
        assert got.shape == want.shape and torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.nan_to_num(), want.nan_to_num()), reduction


@pytest.mark.cuda
def test_cuda_graph_replay_draws_fresh_noise():
    mu = torch.zeros(64, 32, device="cuda")
    lv = torch.zeros(64, 32, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fastvae.reparameterize(mu, lv, **TRITON)  # warm-up compiles the kernel outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z = fastvae.reparameterize(mu, lv, **TRITON)
    graph.replay()
    first = z.clone()
    graph.replay()
    assert not torch.equal(first, z)
    assert abs(z.float().std().item() - 1) < 0.1


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 70), dim=st.integers(1, 300), n_samples=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_random_sizes_match_reference(batch, dim, n_samples, seed):
    """Any batch and latent size, any number of samples: z, KL and both gradients."""
    mu, lv = latent((batch, dim), torch.float32, KERNEL_DEVICE, seed=seed)
    mu.requires_grad_(True)
    lv.requires_grad_(True)
    z = fastvae.reparameterize(mu, lv, n_samples=n_samples, generator=gen(KERNEL_DEVICE, seed),
                               **TRITON)
    kl = fastvae.gaussian_kl(mu, lv, "none", **TRITON)
    eps = kernel_eps((batch, dim), KERNEL_DEVICE, seed, n_samples=n_samples)
    z_ref = reference.reparameterize(mu, lv, n_samples=n_samples, eps=eps)
    kl_ref = reference.gaussian_kl(mu, lv, "none")
    assert_close(z, z_ref, name="z")
    assert_close(kl, kl_ref, name="kl")
    got = torch.autograd.grad(z.sum() + kl.sum(), (mu, lv))
    want = torch.autograd.grad(z_ref.sum() + kl_ref.sum(), (mu, lv))
    assert_close(got[0], want[0], name="dmu")
    assert_close(got[1], want[1], name="dlogvar")


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_chunk_views_are_read_in_place(reduction, device):
    """mu, logvar as chunk views of one (B, 2L) encoder output (strided rows, no copy): the
    same z, KL and gradients as contiguous copies, for a per-row and a reduced KL."""
    enc = (torch.randn(9, 2 * 7, generator=torch.Generator().manual_seed(5)).to(device)
           .requires_grad_(True))
    w = torch.randn(9, 7, generator=torch.Generator().manual_seed(6)).to(device)
    outs = []
    for make in (lambda t: t, lambda t: t.contiguous()):
        mu, lv = (make(t) for t in enc.chunk(2, dim=1))
        z, kl = fastvae.sample_and_kl(mu, lv, reduction=reduction, generator=gen(device, 8),
                                      **TRITON)
        (grad,) = torch.autograd.grad((z * w).sum() + 1.5 * kl.sum(), enc)
        outs.append((z, kl, grad))
    assert torch.equal(outs[0][0], outs[1][0])
    assert_close(outs[0][1], outs[1][1], name="kl")
    assert_close(outs[0][2], outs[1][2], name="grad")
