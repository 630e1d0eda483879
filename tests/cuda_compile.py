"""Compile every Triton kernel variant the public API launches for an H100 (sm_90), without a
GPU.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces
``@triton.jit`` functions by plain Python ones, which skips everything the GPU compiler checks:
constexpr globals, dtype rules, lowering of fp64 math). The public functions are called
forward and backward over a matrix of dtypes, likelihoods, reductions, sample counts and
shapes (odd and 16-divisible sizes, strided views), plus the recon modes that matrix leaves
out, through the op-level entry (:func:`_recon_mode_calls`), with the Triton launches recorded
instead of run; each distinct launch is compiled with the runtime specialization Triton gives its
arguments (:mod:`benchmarks.launches`, shared with the static report), so what compiles here
is what a GPU run compiles. Prints one line per compiled variant, then the number of variants.
"""

import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ from a checkout

import fastvae  # noqa: E402
from benchmarks import launches  # noqa: E402
from fastvae.ops import recon as recon_op  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# float32 gets the whole matrix; the other dtypes the shapes and modes that change the code
# (their specializations otherwise repeat float32's, at a compile each).
RECON_SHAPES = {"full": ((3, 785), (4, 784)), "lean": ((3, 785),)}  # odd D, 16-divisible D
# odd; 1 program; several
LATENT_SHAPES = {"full": ((4, 3), (128, 20), (512, 20)), "lean": ((4, 3),)}
REDUCTIONS = {"full": ("none", "sum", "mean"), "lean": ("none", "sum")}


def _recon_calls(dtype, B, D, reductions):
    for lik, reduction, grad in itertools.product(
        ("bernoulli", "mse", "gaussian"), reductions, (True, False)
    ):
        def call(lik=lik, reduction=reduction, grad=grad):
            r = torch.empty(B, D, dtype=dtype).requires_grad_(grad)
            x = torch.empty(B, D, dtype=dtype)
            v = torch.empty(B, D, dtype=dtype).requires_grad_(grad) if lik == "gaussian" else None
            with torch.set_grad_enabled(grad):
                loss = fastvae.reconstruction_loss(r, x, lik, recon_logvar=v, reduction=reduction,
                                                   backend="triton")
            if grad:
                wrt = [t for t in (r, v) if t is not None]
                torch.autograd.grad(loss, wrt, torch.ones_like(loss))

        yield call


def _recon_mode_calls():
    """The recon modes the public-API matrix above leaves out, through the op-level entry
    ``fastvae.ops.recon.reconstruction_loss``: probabilities ("bernoulli_probs"), a log-variance
    broadcast over rows ``(1, D)``, one per row ``(B, 1)`` or a float (no tensor), x in another
    dtype than recon, channels_last images, and rows longer than one program (several
    programs per row: the per-row reduction by the last program)."""
    B, D = 3, 785

    def run(recon, x, logvar=None, logvar_value=0.0, lik="gaussian", reduction="sum"):
        wrt = [t for t in (recon, logvar) if t is not None and t.requires_grad]
        options = recon_op.Options(logvar_value, lik, reduction, True, recon.requires_grad,
                                   logvar is not None and logvar.requires_grad)
        loss = recon_op.reconstruction_loss(recon, x, logvar, options)
        torch.autograd.grad(loss, wrt, torch.ones_like(loss))

    def empty(*shape, dtype=torch.float32, grad=True):
        return torch.empty(*shape, dtype=dtype).requires_grad_(grad)

    for dtype, reduction in itertools.product((torch.float32, torch.bfloat16), ("none", "mean")):
        yield lambda d=dtype, red=reduction: run(empty(B, D, dtype=d),
                                                 empty(B, D, dtype=d, grad=False),
                                                 lik="bernoulli_probs", reduction=red)
    for shape, reduction in itertools.product(((1, D), (B, 1)), ("none", "sum")):
        yield lambda sh=shape, red=reduction: run(empty(B, D), empty(B, D, grad=False), empty(*sh),
                                                  reduction=red)
    yield lambda: run(empty(B, D), empty(B, D, grad=False), None, -0.5)  # a float log-variance
    # mixed dtypes
    yield lambda: run(empty(B, D, dtype=torch.bfloat16), empty(B, D, grad=False), lik="bernoulli")
    yield lambda: run(empty(B, D, dtype=torch.float16),
                      empty(B, D, dtype=torch.float64, grad=False), lik="mse")

    def channels_last(lik, logvar):
        recon = torch.empty(2, 3, 5, 7).to(memory_format=torch.channels_last).requires_grad_()
        x = torch.empty(2, 3, 5, 7).to(memory_format=torch.channels_last)
        lv = (torch.empty(2, 3, 5, 7).to(memory_format=torch.channels_last).requires_grad_()
              if logvar else None)
        run(recon, x, lv, lik=lik)

    yield lambda: channels_last("bernoulli", False)
    yield lambda: channels_last("gaussian", True)
    # 2 programs a row
    yield lambda: run(empty(B, 4100), empty(B, 4100, grad=False), lik="mse", reduction="none")


def _latent_calls(dtype, B, L, reductions):
    def views():
        both = torch.empty(B, 2 * L, dtype=dtype, requires_grad=True)
        return both.chunk(2, dim=1)  # as a model hands them over

    for reduction in reductions:
        def sample_kl(reduction=reduction):
            mu, lv = views()
            z, kl = fastvae.sample_and_kl(mu, lv, reduction=reduction, backend="triton")
            torch.autograd.grad([z, kl], [mu, lv], [torch.empty_like(z), torch.ones_like(kl)])

        def kl_only(reduction=reduction):
            mu, lv = views()
            kl = fastvae.gaussian_kl(mu, lv, reduction, backend="triton")
            torch.autograd.grad(kl, [mu, lv], torch.ones_like(kl))

        yield sample_kl
        yield kl_only
    for k in (1, 3):
        def sample(k=k):
            mu, lv = views()
            z = fastvae.reparameterize(mu, lv, n_samples=k, backend="triton")
            torch.autograd.grad(z, [mu, lv], torch.empty_like(z))

        yield sample


def _elbo_calls():
    """The objective's fused addition (the KL added by the recon kernel: a total, rows of one
    program and rows of several), its unfused forms, and a Gaussian without the constant."""
    B, L = 3, 5

    def run(D, reduction, kl_reduction, dtype=torch.float32, lik="bernoulli", full=True):
        r = torch.empty(B, D, dtype=dtype, requires_grad=True)
        mu, lv = torch.empty(B, 2 * L, dtype=dtype, requires_grad=True).chunk(2, dim=1)
        v = -0.5 if lik == "gaussian" else None
        out = fastvae.elbo_loss(r, torch.empty(B, D, dtype=dtype), mu, lv, beta=0.5, likelihood=lik,
                                recon_logvar=v, full=full, reduction=reduction,
                                kl_reduction=kl_reduction, backend="triton")
        torch.autograd.grad(out.loss, [r, mu, lv], torch.ones_like(out.loss))

    for D, reduction, kl_reduction in itertools.product(
        (785, 4100), ("none", "sum"), ("none", "batchmean")
    ):
        yield lambda D=D, red=reduction, kl_red=kl_reduction: run(D, red, kl_red)
    yield lambda: run(785, "mean", "mean", dtype=torch.float64)
    yield lambda: run(785, "batchmean", "batchmean", lik="gaussian", full=False)


def calls():
    yield from _elbo_calls()
    for dtype in DTYPES:
        matrix = "full" if dtype == torch.float32 else "lean"
        for B, D in RECON_SHAPES[matrix]:
            yield from _recon_calls(dtype, B, D, REDUCTIONS[matrix])
        for B, L in LATENT_SHAPES[matrix]:
            yield from _latent_calls(dtype, B, L, REDUCTIONS[matrix])
    yield from _recon_mode_calls()


def main():
    seen = set()
    for call in calls():
        with launches.recording() as rec:
            call()
        for launch in rec.launches:
            _, _, signature, constexprs, attrs = launches.bind(launch)
            key = (launch.kernel, repr(signature), repr(constexprs), repr(attrs))
            if key in seen:
                continue
            seen.add(key)
            compiled = launches.compile_sm90(launch)
            assert compiled.asm("cubin"), launch.name
            print("compiled", launch.name, compiled.signature, compiled.constexprs, flush=True)
    print(f"variants {len(seen)}")


if __name__ == "__main__":
    main()
