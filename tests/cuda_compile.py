"""Compile every Triton kernel variant the public API launches for an H100 (sm_90), without a GPU.

Run as a script in a process WITHOUT ``TRITON_INTERPRET`` (the interpreter replaces
``@triton.jit`` functions by plain Python ones, which skips everything the GPU compiler checks:
constexpr globals, dtype rules, lowering of fp64 math). The public functions are called
forward and backward over a matrix of dtypes, likelihoods, reductions, sample counts and
shapes (odd and 16-divisible sizes, strided views), with the Triton launches recorded instead
of run; each distinct launch is compiled with the runtime specialization Triton gives its
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

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# float32 gets the whole matrix; the other dtypes the shapes and modes that change the code
# (their specializations otherwise repeat float32's, at a compile each).
RECON_SHAPES = {"full": ((3, 785), (4, 784)), "lean": ((3, 785),)}  # odd D, 16-divisible D
LATENT_SHAPES = {"full": ((4, 3), (128, 20), (512, 20)), "lean": ((4, 3),)}  # odd; 1 program; several
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


def calls():
    for dtype in DTYPES:
        matrix = "full" if dtype == torch.float32 else "lean"
        for B, D in RECON_SHAPES[matrix]:
            yield from _recon_calls(dtype, B, D, REDUCTIONS[matrix])
        for B, L in LATENT_SHAPES[matrix]:
            yield from _latent_calls(dtype, B, L, REDUCTIONS[matrix])


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
