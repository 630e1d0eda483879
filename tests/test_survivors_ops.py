"""Op-layer and kernel behaviour that single-point mutants once changed without failing a test
(tests/mutation/mutants.py names them): the KL series near its cutoffs (float64 and float32),
the Philox counter's high offset word, the per-row log-variance gradient of rows longer than
one program, the fp16 noise layout, the gradient written when only the log-variance learns,
and the launch cache's alignment rule."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, kl_oracle

import fastvae
from benchmarks import measure
from fastvae import kernels, reference

TRITON = {"backend": "triton"}


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_float64_kl_series_near_its_cutoff(reduction, device):
    """Rows whose log-variances all have one sign, just inside the float64 series' range
    (|lv| < 0.5, kernels/_math.py): there the v^7 term of phi(v) = exp(v) - 1 - v is about
    5% of phi, and a wrong coefficient shifts each row by the same sign (in a mixed-sign row
    the errors cancel). float64 oracle: torch.distributions (exp and log, no series)."""
    values = [0.4999, 0.45, 0.3, -0.3, -0.45, -0.4999]
    lv = torch.tensor(values, dtype=torch.float64, device=device).repeat_interleave(8).view(6, 8)
    mu = torch.zeros_like(lv)
    got = fastvae.gaussian_kl(mu, lv, reduction, **TRITON)
    want = kl_oracle(mu, lv)
    want = want if reduction == "none" else want.sum()
    # The float64 tolerance (helpers.TOLERANCES: rtol 1e-7) is 7x tighter than the effect of
    # 1/7! written as 1/5400 at lv = 0.4999 (6.9e-7 relative).
    assert_close(got, want, dtype=torch.float64, name="float64 KL")
    assert_close(reference.gaussian_kl(mu, lv, reduction), want, dtype=torch.float64,
                 name="reference KL")


def test_float32_kl_of_each_element_near_zero(device):
    """float32 phi(v) = exp(v) - 1 - v of single elements, |v| < 3, within the float32
    tolerance relative to phi itself: below |v| = 1 the series (exp(v) - 1 - v loses up to
    four digits at |v| = 0.1), above it the direct form (kernels/_math.py's error budget)."""
    lv = torch.linspace(-2.9, 2.9, 581, dtype=torch.float32, device=device).view(-1, 1)
    got = fastvae.gaussian_kl(torch.zeros_like(lv), lv, "none", **TRITON)
    # float64 oracle: expm1(v) - v keeps its relative accuracy down to v = 0 (exp(v) - 1 - v,
    # torch.distributions' form, would not at |v| ~ 1e-7).
    v = lv.double().view(-1)
    assert_close(got, 0.5 * (torch.expm1(v) - v), rtol=1e-5, atol=0, name="float32 KL")


def test_noise_counter_holds_the_whole_64_bit_offset(device):
    """The draw's counter offset fills Philox counter words 0 (low 32 bits) and 1 (high 32
    bits), torch's layout: at an offset past 2**32 the noise is the float64 Box-Muller of
    exactly those words (kernels/_math.py's bound: 2e-6 * max(1, |eps|))."""
    from test_kernels_latent import _quad_normals_and_words

    Q = 256
    got = torch.empty(Q, 4, device=device)
    words = torch.empty(Q, 4, dtype=torch.int64, device=device)
    _quad_normals_and_words[(1,)](got, words, 12345, 2**40 + 7, Q=Q)
    w = words.cpu().double()
    radius = torch.sqrt(-2 * torch.log((2 * torch.floor(w[:, 0::2] / 512) + 1) / 2**24))
    turn = 2 * math.pi * w[:, 1::2] / 2**32
    want = torch.stack([radius * torch.cos(turn), radius * torch.sin(turn)], 2).reshape(Q, 4)
    assert_close(got.cpu(), want, rtol=2e-6, atol=2e-6, name="eps at offset 2**40 + 7")


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_per_row_logvar_gradient_sums_every_chunk_of_the_row(reduction, device):
    """A (B, 1) log-variance on rows of 5000 elements: two programs per row (4096 elements
    each), whose partial gradients must be added per row."""
    g = torch.Generator().manual_seed(21)
    recon = torch.randn(3, 5000, generator=g, dtype=torch.float64).to(device)
    x = torch.rand(3, 5000, generator=g, dtype=torch.float64).to(device)
    lv = (torch.randn(3, 1, generator=g, dtype=torch.float64) * 0.3).to(device)
    lv.requires_grad_(True)
    got = fastvae.reconstruction_loss(recon, x, "gaussian", recon_logvar=lv, reduction=reduction,
                                      **TRITON)
    v = lv.detach().clone().requires_grad_(True)
    elem = F.gaussian_nll_loss(recon, x, torch.exp(v).expand(3, 5000), full=True, eps=1e-300,
                               reduction="none")
    want = elem.sum(1) if reduction == "none" else elem.sum()
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, device=device)
    weight = w if reduction == "none" else 1.5
    (d_got,) = torch.autograd.grad((got * weight).sum(), lv)
    (d_want,) = torch.autograd.grad((want * weight).sum(), v)
    assert_close(got, want, dtype=torch.float64, name="loss")
    assert_close(d_got, d_want, dtype=torch.float64, name="d loss / d logvar")


def test_fp16_noise_is_the_noise_of_every_other_layout(device):
    """fp16 latents draw their noise in groups of eight elements (two Philox quads per 128-bit
    access, kernels/_latent_tiles.py); fp32 in groups of four, and the per-row KL's row tile one
    element at a time. One seed must give every layout the same eps: fp16 ``reparameterize``
    against fp32 ``reparameterize`` of the same values, and against fp16 ``sample_and_kl``
    with a per-row KL (the row tile)."""
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(6, 40, generator=g).to(device, torch.float16)
    lv = (torch.randn(6, 40, generator=g) * 0.5).to(device, torch.float16)

    def draw(fn, *args, **kwargs):
        return fn(*args, generator=torch.Generator(device=device).manual_seed(77), **kwargs,
                  **TRITON)

    z16 = draw(fastvae.reparameterize, mu, lv)
    z32 = draw(fastvae.reparameterize, mu.float(), lv.float())
    rows, _ = draw(fastvae.sample_and_kl, mu, lv, reduction="none")
    # The fp32 z rounded once to fp16 is the fp16 z up to that rounding.
    assert_close(z16, z32, dtype=torch.float16, name="fp16 z vs fp32 z")
    assert_close(z16, rows, dtype=torch.float16, name="flat fp16 z vs row-tile fp16 z")


@pytest.mark.parametrize("api", ["reconstruction_loss", "elbo_loss"])
def test_only_the_logvar_learns_the_forward_writes_its_gradient(api, device):
    """recon is fixed and only recon_logvar requires grad: the forward launch writes d loss /
    d logvar, so backward only scales it (no second pass over B x D)."""
    g = torch.Generator().manual_seed(8)
    recon = torch.randn(4, 300, generator=g).to(device)
    x = torch.rand(4, 300, generator=g).to(device)
    lv = (torch.randn(4, 300, generator=g) * 0.3).to(device).requires_grad_(True)
    mu = torch.zeros(4, 3, device=device)
    out = {}

    def forward():
        if api == "elbo_loss":
            out["loss"] = fastvae.elbo_loss(recon, x, mu, mu, likelihood="gaussian",
                                            recon_logvar=lv, reduction="sum", **TRITON).loss
        else:
            out["loss"] = fastvae.reconstruction_loss(recon, x, "gaussian", recon_logvar=lv,
                                                      reduction="sum", **TRITON)

    measure.count_dispatched(forward)
    bwd = measure.count_dispatched(lambda: out["loss"].backward())
    launched = [op for op in bwd.ops if op.startswith("triton:")]
    assert launched == ["triton:_recon_loss_scale_grad_kernel"], launched
    want = 0.5 - 0.5 * (x - recon) ** 2 * torch.exp(-lv.detach())
    assert_close(lv.grad, want, name="d loss / d logvar")


def test_launch_key_only_for_16_byte_aligned_pointers(monkeypatch):
    """Triton specializes a pointer on 16-byte alignment, so a launch whose pointers are not
    all 16-byte aligned gets no key (kernels/_launch.py): it always takes Triton's own path.
    The rule itself, as a compiled GPU run applies it (here on CPU tensors)."""
    _launch = kernels._launch
    monkeypatch.setattr(_launch, "INTERPRETED", False)
    base = torch.zeros(64)  # fp32: element 4 is 16 bytes in, element 2 is 8 and element 1 is 4
    aligned = base[4:20]
    assert aligned.data_ptr() % 16 == 0
    key = _launch.launch_key((aligned, base), (16,))
    assert key == (aligned.get_device(), torch.float32, torch.float32, 16)
    for offset in (1, 2, 3):
        assert _launch.launch_key((base[offset:offset + 16], base), (16,)) is None, offset
        assert _launch.launch_key((aligned, base[offset:]), (16,)) is None, offset
