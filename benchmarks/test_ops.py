"""pytest-benchmark: fastvae against PyTorch eager and torch.compile, forward + backward.

    pytest benchmarks/ --benchmark-columns=median,iqr,rounds --benchmark-group-by=param:case

Cases: the VAE loss head at MNIST size (B=128, D=784, L=20) and the Bernoulli and MSE
reconstruction losses at B=4096, D=49152 on CUDA (B=64, D=784 on a CPU, where fastvae runs its
PyTorch reference and torch.compile uses AOT autograd's eager backend, so the numbers only show
that the harness works). :mod:`benchmarks.report` is the full sweep with bandwidth, memory and
launch counts; this suite is for quick A/B timing while working on a kernel.
"""

import pytest
import torch

from benchmarks import losses
from benchmarks.losses import Case

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
BIG = (4096, 49152) if CUDA else (64, 784)
CASES = {
    "loss_head-128x784": Case("loss_head", 128, 784, torch.float32, "fwd+bwd"),
    f"recon_bernoulli-{BIG[0]}x{BIG[1]}": Case("recon_bernoulli", *BIG, torch.float32, "fwd+bwd"),
    f"recon_mse-{BIG[0]}x{BIG[1]}": Case("recon_mse", *BIG, torch.float32, "fwd+bwd"),
}


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", losses.IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_step(benchmark, case, impl):
    c = CASES[case]
    if impl == "compile":
        torch._dynamo.reset()
    fn = losses.forward_fn(c.op, impl, "inductor" if CUDA else "aot_eager")
    generator = torch.Generator().manual_seed(0)
    sets = [losses.make_set(c, DEVICE, generator) for _ in range(2)]
    step = losses.step_fn(c, fn, sets)

    def run():
        out = step()
        _sync()
        return out

    run()  # warm-up: compiles kernels / the graph
    out, grads = benchmark(run)
    assert all(torch.isfinite(g).all() for g in grads)
