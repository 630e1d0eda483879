"""Bad input across the public API (fastvae.functional, the modules, MLPVAE), as tables.

Every case either raises a ``TypeError``/``ValueError`` whose message names the argument and the
expected and actual shape, dtype, device or value (``ERRORS``), or returns exactly what the
reference returns (NaN/inf, ``PROPAGATION``), or the documented result (empty batch,
``EMPTY``), or the same answer as contiguous inputs (strided and expanded views). Each table
runs under both backends: "torch" (the PyTorch composition) and "triton" (the kernels; through the
interpreter on a CPU-only machine). The Triton launch itself is never reached with an argument
it would crash on: every error below is raised before it.
"""

import math

import pytest
import torch
from helpers import assert_close

import fastvae
from fastvae import reference
from fastvae.models import MLPVAE

BACKENDS = ["torch", "triton"]
X = torch.zeros(2, 3)
L = torch.zeros(2, 3)
META = torch.empty(2, 3, device="meta")


def raises(error, *fragments):
    return error, fragments


# (id, call, (exception type, fragments that must all appear in the message))
ERRORS = [
    # shapes
    ("recon vs x shape", lambda: fastvae.reconstruction_loss(X, torch.zeros(2, 4)),
     raises(ValueError, "x must have the same shape as recon", "expected (2, 3)", "got (2, 4)")),
    ("mu vs logvar shape", lambda: fastvae.gaussian_kl(L, torch.zeros(2, 4)),
     raises(ValueError, "logvar must have the same shape as mu", "expected (2, 3)", "got (2, 4)")),
    ("recon_logvar shape",
     lambda: fastvae.reconstruction_loss(X, X, "gaussian", recon_logvar=torch.zeros(2, 2)),
     raises(ValueError, "recon_logvar must be broadcastable to the shape of recon (2, 3)",
            "got shape (2, 2)")),
    ("recon_logvar larger than recon",
     lambda: fastvae.reconstruction_loss(X, X, "gaussian", recon_logvar=torch.zeros(4, 2, 3)),
     raises(ValueError, "recon_logvar must be broadcastable to the shape of recon (2, 3)",
            "got shape (4, 2, 3)")),
    ("batch of mu vs x", lambda: fastvae.elbo_loss(X, X, torch.zeros(5, 3), torch.zeros(5, 3)),
     raises(ValueError, "mu must have the batch size of x", "expected 2", "got 5")),
    # number of dims
    ("0-dim recon", lambda: fastvae.reconstruction_loss(torch.tensor(1.0), torch.tensor(1.0)),
     raises(ValueError, "recon must have at least 1 dim", "got shape ()")),
    ("1-D mu", lambda: fastvae.sample_and_kl(torch.zeros(3), torch.zeros(3)),
     raises(ValueError, "mu must have at least 2 dims", "the batch and at least one latent dim",
            "got shape (3,)")),
    ("1-D logvar", lambda: fastvae.gaussian_kl(torch.zeros(3, 1), torch.zeros(3)),
     raises(ValueError, "logvar must have at least 2 dims", "got shape (3,)")),
    # dtypes
    ("integer recon", lambda: fastvae.reconstruction_loss(X.long(), X),
     raises(TypeError, "recon must be a floating-point tensor", "float32",
            "got dtype torch.int64")),
    ("bool x", lambda: fastvae.reconstruction_loss(X, X.bool()),
     raises(TypeError, "x must be a floating-point tensor", "got dtype torch.bool")),
    ("integer logvar", lambda: fastvae.gaussian_kl(L, L.int()),
     raises(TypeError, "logvar must be a floating-point tensor", "got dtype torch.int32")),
    ("uint8 mu", lambda: fastvae.reparameterize(L.to(torch.uint8), L),
     raises(TypeError, "mu must be a floating-point tensor", "got dtype torch.uint8")),
    ("mu vs logvar dtype", lambda: fastvae.gaussian_kl(L, L.half()),
     raises(TypeError, "logvar must have the same dtype as mu", "expected torch.float32",
            "got torch.float16")),
    ("integer recon_logvar",
     lambda: fastvae.reconstruction_loss(X, X, "gaussian", recon_logvar=X.long()),
     raises(TypeError, "recon_logvar must be a floating-point tensor", "got dtype torch.int64")),
    ("string recon_logvar", lambda: fastvae.reconstruction_loss(X, X, "gaussian", recon_logvar="0"),
     raises(TypeError, "recon_logvar must be a float tensor or a real number", "got str")),
    ("bool recon_logvar", lambda: fastvae.reconstruction_loss(X, X, "gaussian", recon_logvar=True),
     raises(TypeError, "recon_logvar must be a float tensor or a real number", "got bool")),
    ("recon_logvar on another device",
     lambda: fastvae.reconstruction_loss(X, X, "gaussian", recon_logvar=META),
     raises(ValueError, "recon_logvar must be on the same device as recon", "got meta")),
    ("list, not a tensor", lambda: fastvae.reconstruction_loss([1.0], X),
     raises(TypeError, "recon must be a torch.Tensor", "got list")),
    ("numpy array mu", lambda: fastvae.gaussian_kl(L.numpy(), L),
     raises(TypeError, "mu must be a torch.Tensor", "got ndarray")),
    # devices (the meta device stands in for a second device on a CPU-only machine)
    ("x on another device", lambda: fastvae.reconstruction_loss(X, META),
     raises(ValueError, "x must be on the same device as recon", "expected cpu", "got meta")),
    ("logvar on another device", lambda: fastvae.sample_and_kl(L, META),
     raises(ValueError, "logvar must be on the same device as mu", "expected cpu", "got meta")),
    ("triton on a meta tensor", lambda: fastvae.gaussian_kl(META, META, backend="triton"),
     raises(ValueError, "is on device meta", "need CUDA tensors", "backend='torch'")),
    # names of options
    ("unknown likelihood", lambda: fastvae.reconstruction_loss(X, X, "poisson"),
     raises(ValueError,
            "likelihood must be one of 'bernoulli', 'bernoulli_probs', 'mse', 'gaussian'",
            "got 'poisson'")),
    ("unknown reduction (recon)", lambda: fastvae.reconstruction_loss(X, X, reduction="avg"),
     raises(ValueError, "reduction must be one of 'none', 'sum', 'mean', 'batchmean'",
            "got 'avg'")),
    ("unknown reduction (KL)", lambda: fastvae.gaussian_kl(L, L, "elementwise_mean"),
     raises(ValueError, "reduction must be one of", "got 'elementwise_mean'")),
    ("unknown kl_reduction", lambda: fastvae.elbo_loss(X, X, L, L, kl_reduction="avg"),
     raises(ValueError, "kl_reduction must be one of", "got 'avg'")),
    ("full=False for bernoulli", lambda: fastvae.reconstruction_loss(X, X, full=False),
     raises(ValueError, "full=False", "only used by likelihood='gaussian'",
            "got likelihood='bernoulli'")),
    ("full not a bool",
     lambda: fastvae.reconstruction_loss(X, X, "gaussian", recon_logvar=0.0, full=1),
     raises(TypeError, "full must be a bool", "got int")),
    ("unknown backend", lambda: fastvae.gaussian_kl(L, L, backend="cuda"),
     raises(ValueError, "backend must be one of 'auto', 'triton', 'torch'", "got 'cuda'")),
    ("gaussian without recon_logvar", lambda: fastvae.reconstruction_loss(X, X, "gaussian"),
     raises(ValueError, "recon_logvar is required for likelihood='gaussian'")),
    ("recon_logvar for bernoulli", lambda: fastvae.reconstruction_loss(X, X, recon_logvar=X),
     raises(ValueError, "recon_logvar is only used by likelihood='gaussian'",
            "got likelihood='bernoulli'")),
    # numbers
    ("negative beta", lambda: fastvae.elbo_loss(X, X, L, L, beta=-1.0),
     raises(ValueError, "beta must be a finite number >= 0", "got -1.0")),
    ("NaN beta", lambda: fastvae.elbo_loss(X, X, L, L, beta=float("nan")),
     raises(ValueError, "beta must be a finite number >= 0", "got nan")),
    ("infinite beta", lambda: fastvae.elbo_loss(X, X, L, L, beta=float("inf")),
     raises(ValueError, "beta must be a finite number >= 0", "got inf")),
    ("tensor beta", lambda: fastvae.elbo_loss(X, X, L, L, beta=torch.tensor(1.0)),
     raises(ValueError, "beta must be a finite number >= 0", "got tensor(1.)")),
    ("n_samples 0", lambda: fastvae.reparameterize(L, L, n_samples=0),
     raises(ValueError, "n_samples must be an integer >= 1", "got 0")),
    ("n_samples -2", lambda: fastvae.reparameterize(L, L, n_samples=-2),
     raises(ValueError, "n_samples must be an integer >= 1", "got -2")),
    ("n_samples 2.0", lambda: fastvae.reparameterize(L, L, n_samples=2.0),
     raises(ValueError, "n_samples must be an integer >= 1", "got 2.0")),
    ("generator of another type", lambda: fastvae.reparameterize(L, L, generator=0),
     raises(TypeError, "generator must be a torch.Generator or None", "got int")),
    # nn.Module wrappers: options fail at construction
    ("ELBOLoss negative beta", lambda: fastvae.ELBOLoss(beta=-0.5),
     raises(ValueError, "beta must be a finite number >= 0", "got -0.5")),
    ("ELBOLoss reduction", lambda: fastvae.ELBOLoss(reduction="avg"),
     raises(ValueError, "reduction must be one of", "got 'avg'")),
    ("ReconstructionLoss likelihood", lambda: fastvae.ReconstructionLoss("laplace"),
     raises(ValueError, "likelihood must be one of", "got 'laplace'")),
    ("GaussianSampler reduction", lambda: fastvae.GaussianSampler("avg"),
     raises(ValueError, "reduction must be one of", "got 'avg'")),
    ("ELBOLoss kl_reduction", lambda: fastvae.ELBOLoss(kl_reduction="avg"),
     raises(ValueError, "kl_reduction must be one of", "got 'avg'")),
    ("GaussianKL backend", lambda: fastvae.GaussianKL(backend="gpu"),
     raises(ValueError, "backend must be one of", "got 'gpu'")),
    ("ELBOLoss call, shapes", lambda: fastvae.ELBOLoss()(X, torch.zeros(3, 3), L, L),
     raises(ValueError, "x must have the same shape as recon", "expected (2, 3)", "got (3, 3)")),
    # MLPVAE
    ("MLPVAE latent_dim 0", lambda: MLPVAE(latent_dim=0),
     raises(ValueError, "latent_dim must be an integer >= 1", "got 0")),
    ("MLPVAE likelihood", lambda: MLPVAE(likelihood="poisson"),
     raises(ValueError, "likelihood must be one of", "got 'poisson'")),
    ("MLPVAE hidden width 0", lambda: MLPVAE(hidden_dims=(0,)),
     raises(ValueError, "hidden_dims must all be >= 1", "got (0,)")),
    ("MLPVAE x shape", lambda: MLPVAE().loss(torch.zeros(2, 10)),
     raises(ValueError, "x must have shape (B, 1, 28, 28) or (B, 784)", "got (2, 10)")),
    ("MLPVAE uint8 x", lambda: MLPVAE().loss(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)),
     raises(TypeError, "x must have the model's dtype", "expected torch.float32",
            "got torch.uint8")),
    ("MLPVAE float64 x", lambda: MLPVAE().loss(torch.zeros(2, 784, dtype=torch.float64)),
     raises(TypeError, "x must have the model's dtype", "expected torch.float32",
            "got torch.float64")),
    ("MLPVAE x on another device", lambda: MLPVAE().encode(torch.empty(2, 784, device="meta")),
     raises(ValueError, "x must be on the model's device", "expected cpu", "got meta")),
    ("MLPVAE negative beta", lambda: MLPVAE().loss(torch.zeros(2, 784), beta=-1),
     raises(ValueError, "beta must be a finite number >= 0", "got -1")),
    ("MLPVAE reduction", lambda: MLPVAE().loss(torch.zeros(2, 784), reduction="avg"),
     raises(ValueError, "reduction must be one of", "got 'avg'")),
    ("MLPVAE sample n 0", lambda: MLPVAE().sample(0),
     raises(ValueError, "n must be an integer >= 1", "got 0")),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_bad_input_raises_a_clear_error(case, backend, monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", backend)
    _, call, (error, fragments) = case
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


def test_the_error_table_is_large_enough():
    assert len(ERRORS) >= 25


@pytest.mark.cuda
def test_tensors_on_cpu_and_cuda_are_refused():
    with pytest.raises(ValueError,
                       match=r"x must be on the same device as recon: expected cuda:0, got cpu"):
        fastvae.reconstruction_loss(X.cuda(), X)
    with pytest.raises(ValueError, match="logvar must be on the same device as mu"):
        fastvae.elbo_loss(X.cuda(), X.cuda(), L.cuda(), L)
    with pytest.raises(ValueError, match="generator must be on the device type of mu"):
        fastvae.reparameterize(L.cuda(), L.cuda(), generator=torch.Generator())


# ------------------------------------------------------------------ NaN and inf: as the reference


def poisoned(shape, where, value, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g)
    t[where] = value
    return t


RECON_INPUTS = [("bernoulli", "recon"), ("bernoulli", "x"), ("mse", "recon"), ("mse", "x"),
                ("gaussian", "recon"), ("gaussian", "x"), ("gaussian", "recon_logvar")]
VALUES = [float("nan"), float("inf"), float("-inf")]
PROPAGATION = (
    [(f"recon_{lik}_{name}_{v}", "recon", lik, name, v)
     for lik, name in RECON_INPUTS for v in VALUES]
    + [(f"kl_{name}_{v}", "kl", None, name, v) for name in ("mu", "logvar") for v in VALUES]
)


@pytest.mark.parametrize("case", PROPAGATION, ids=[c[0] for c in PROPAGATION])
def test_nan_and_inf_give_the_reference_result(case, device):
    """One NaN/+inf/-inf element in one input: the Triton path returns, per sample and in the
    gradients, what the reference returns (NaN where it has NaN, the same infinities)."""
    _, op, likelihood, name, value = case
    shape, where = (3, 5), (1, 2)
    if op == "recon":
        inputs = {
            "recon": torch.randn(shape, generator=torch.Generator().manual_seed(1)),
            "x": torch.rand(shape, generator=torch.Generator().manual_seed(2)),
            "recon_logvar": torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 0.5
            if likelihood == "gaussian" else None,
        }
        inputs[name] = inputs[name].clone()
        inputs[name][where] = value

        def run(backend, dev):
            t = {k: None if v is None else v.to(dev).requires_grad_(k != "x")
                 for k, v in inputs.items()}
            args = (t["recon"], t["x"], likelihood)
            out = (
                reference.reconstruction_loss(*args, recon_logvar=t["recon_logvar"],
                                              reduction="none")
                if backend == "reference" else
                fastvae.reconstruction_loss(*args, recon_logvar=t["recon_logvar"],
                                            reduction="none", backend=backend)
            )
            out.sum().backward()
            grads = [t[k].grad for k in ("recon", "recon_logvar") if t[k] is not None]
            return out, grads
    else:
        inputs = {"mu": poisoned(shape, where, 0.0, 4), "logvar": poisoned(shape, where, 0.0, 5)}
        inputs[name][where] = value

        def run(backend, dev):
            mu, lv = (inputs[k].to(dev).requires_grad_(True) for k in ("mu", "logvar"))
            out = (reference.gaussian_kl(mu, lv, "none") if backend == "reference"
                   else fastvae.gaussian_kl(mu, lv, "none", backend=backend))
            out.sum().backward()
            return out, [mu.grad, lv.grad]

    want, want_grads = run("reference", "cpu")
    got, got_grads = run("triton", device)
    assert not torch.isfinite(want).all(), "the poisoned value must reach the result"
    assert_close(got, want, name="loss")
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w, name="gradient")


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("name", ["mu", "logvar"])
def test_nan_and_inf_in_the_sample_are_where_the_reference_has_them(name, value, device):
    """z = mu + eps * exp(logvar / 2): the noise differs between the backends (Philox in the
    kernel, torch's generator in the reference), so compare where z is NaN or infinite."""
    mu, lv = torch.zeros(3, 5), torch.zeros(3, 5)
    {"mu": mu, "logvar": lv}[name][1, 2] = value
    want = fastvae.reparameterize(mu, lv, backend="torch")
    got = fastvae.reparameterize(mu.to(device), lv.to(device), backend="triton").cpu()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    if name == "logvar" and value < 0:  # zero variance: z is mu itself
        assert got[1, 2] == want[1, 2] == 0.0
    else:
        assert not torch.isfinite(want).all()


# ------------------------------------------------------------------ empty batch: documented result

EMPTY = [
    ("recon none",
     lambda e, b: fastvae.reconstruction_loss(e(0, 4), e(0, 4), reduction="none", backend=b),
     (0,)),
    ("recon sum",
     lambda e, b: fastvae.reconstruction_loss(e(0, 4), e(0, 4), "mse", reduction="sum", backend=b),
     0.0),
    ("recon mean",
     lambda e, b: fastvae.reconstruction_loss(e(0, 4), e(0, 4), reduction="mean", backend=b),
     "nan"),
    ("recon batchmean",
     lambda e, b: fastvae.reconstruction_loss(e(0, 4), e(0, 4), "mse", backend=b),
     "nan"),
    ("probs sum",
     lambda e, b: fastvae.reconstruction_loss(e(0, 4), e(0, 4), "bernoulli_probs",
                                              reduction="sum", backend=b),
     0.0),
    ("gaussian float logvar sum",
     lambda e, b: fastvae.reconstruction_loss(e(0, 4), e(0, 4), "gaussian", recon_logvar=0.5,
                                              reduction="sum", backend=b),
     0.0),
    ("kl batchmean spatial",
     lambda e, b: fastvae.gaussian_kl(e(0, 2, 3), e(0, 2, 3), backend=b),
     "nan"),
    ("sample_and_kl spatial z",
     lambda e, b: fastvae.sample_and_kl(e(0, 2, 3), e(0, 2, 3), backend=b).z,
     (0, 2, 3)),
    ("gaussian sum",
     lambda e, b: fastvae.reconstruction_loss(e(0, 2, 2), e(0, 2, 2), "gaussian",
                                              recon_logvar=e(0, 2, 2), reduction="sum", backend=b),
     0.0),
    ("kl none", lambda e, b: fastvae.gaussian_kl(e(0, 3), e(0, 3), "none", backend=b), (0,)),
    ("kl sum", lambda e, b: fastvae.gaussian_kl(e(0, 3), e(0, 3), "sum", backend=b), 0.0),
    ("kl mean", lambda e, b: fastvae.gaussian_kl(e(0, 3), e(0, 3), "mean", backend=b), "nan"),
    ("reparameterize", lambda e, b: fastvae.reparameterize(e(0, 3), e(0, 3), backend=b), (0, 3)),
    ("reparameterize K=4",
     lambda e, b: fastvae.reparameterize(e(0, 3), e(0, 3), n_samples=4, backend=b),
     (4, 0, 3)),
    ("sample_and_kl z", lambda e, b: fastvae.sample_and_kl(e(0, 3), e(0, 3), backend=b).z, (0, 3)),
    ("elbo mean",
     lambda e, b: fastvae.elbo_loss(e(0, 4), e(0, 4), e(0, 3), e(0, 3), backend=b).loss,
     "nan"),
    ("elbo sum",
     lambda e, b: fastvae.elbo_loss(e(0, 4), e(0, 4), e(0, 3), e(0, 3), reduction="sum",
                                    backend=b).loss,
     0.0),
    ("MLPVAE loss sum",
     lambda e, b: MLPVAE((4,), (5,), 3, backend=b).loss(e(0, 4), reduction="sum").loss,
     0.0),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", EMPTY, ids=[c[0] for c in EMPTY])
def test_empty_batch_gives_the_documented_result(case, backend, device):
    """B = 0: "none" -> (0,), "sum" -> 0, "mean"/"batchmean" -> NaN, samples (0, *latent);
    backward runs."""
    made = []

    def empty(*shape):
        t = torch.zeros(shape, device=device, requires_grad=True)
        made.append(t)
        return t

    _, call, expected = case
    out = call(empty, backend)
    if isinstance(expected, tuple):
        assert out.shape == expected
    elif expected == "nan":
        assert out.shape == () and math.isnan(out.item())
    else:
        assert out.shape == () and out.item() == expected
    out.sum().backward()
    for t in made:
        assert t.grad is None or t.grad.shape == t.shape


# ------------------------------------------------------------------ strided and expanded views


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "mse", "gaussian"])
def test_strided_and_expanded_inputs_give_the_dense_answer(likelihood, backend, device):
    """recon a transposed view, x a (1, D) row expanded over the batch (stride 0), logvar one
    scalar expanded to the full shape: values and gradients equal those of dense copies."""
    g = torch.Generator().manual_seed(7)
    base_r = torch.randn(6, 5, generator=g).to(device).requires_grad_(True)
    row = torch.rand(1, 6, generator=g).to(device)
    lv0 = torch.tensor(0.3, device=device, requires_grad=True)
    recon, x = base_r.t(), row.expand(5, 6)
    lv = lv0.expand(5, 6) if likelihood == "gaussian" else None
    assert not recon.is_contiguous() and x.stride() == (0, 1)
    got = fastvae.reconstruction_loss(recon, x, likelihood, recon_logvar=lv, reduction="none",
                                      backend=backend)
    (got * torch.arange(1.0, 6.0, device=device)).sum().backward()

    r2 = base_r.detach().t().contiguous().requires_grad_(True)
    lv2 = torch.full((5, 6), 0.3, device=device, requires_grad=True) if lv is not None else None
    want = reference.reconstruction_loss(r2, x.contiguous(), likelihood, recon_logvar=lv2,
                                         reduction="none")
    (want * torch.arange(1.0, 6.0, device=device)).sum().backward()
    assert_close(got, want)
    assert_close(base_r.grad, r2.grad.t())
    if lv is not None:
        assert_close(lv0.grad, lv2.grad.sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_expanded_latents_give_the_dense_answer(backend, device):
    """mu one row expanded over the batch, logvar every other column of a wider tensor: the
    same z (same generator seed) and KL, and the same gradients, as dense copies."""
    g = torch.Generator().manual_seed(8)
    mu_row = torch.randn(1, 4, generator=g).to(device).requires_grad_(True)
    wide = torch.randn(3, 8, generator=g).to(device).requires_grad_(True)
    mu, lv = mu_row.expand(3, 4), wide[:, ::2]
    assert mu.stride() == (0, 1) and not lv.is_contiguous()
    gen = lambda: torch.Generator(device=device).manual_seed(11)  # noqa: E731
    z, kl = fastvae.sample_and_kl(mu, lv, reduction="none", generator=gen(), backend=backend)
    (z.sum() + (kl * 2).sum()).backward()

    mu2 = mu.detach().contiguous().requires_grad_(True)
    lv2 = lv.detach().contiguous().requires_grad_(True)
    z2, kl2 = fastvae.sample_and_kl(mu2, lv2, reduction="none", generator=gen(), backend=backend)
    (z2.sum() + (kl2 * 2).sum()).backward()
    assert torch.equal(z, z2) and torch.equal(kl, kl2)
    assert_close(mu_row.grad, mu2.grad.sum(0, keepdim=True))
    assert_close(wide.grad[:, ::2], lv2.grad)
    assert torch.equal(wide.grad[:, 1::2], torch.zeros(3, 4, device=device))


# ------------------------------------------------------------------ rows past 2**31 elements


def _free_gib():
    return torch.cuda.mem_get_info()[0] / 2**30 if torch.cuda.is_available() else 0.0


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(3, 2**30 + 7), (1, 2**31 + 5)],
                         ids=["many-rows", "one-huge-row"])
def test_recon_loss_indexes_past_2_31_elements(shape):
    """fp16 recon with element offsets beyond 2**31 (row * D, and a single row longer than
    2**31): int32 offsets would wrap and read or write the wrong memory. recon is 0 except the
    last 1000 elements of the last row, set to 2, and x = 0, so the MSE rows are known exactly:
    0 for every row but the last, 1000 * 2**2 there; the gradient is 4 there and 0 elsewhere."""
    numel = math.prod(shape)
    need = 4.5 * numel * 2 / 2**30  # recon, x, the fused gradient, its scaled copy (fp16)
    if _free_gib() < need:
        pytest.skip(f"needs about {need:.0f} GiB of free GPU memory")
    recon = torch.zeros(shape, dtype=torch.float16, device="cuda")
    recon[-1, -1000:] = 2.0
    x = torch.zeros_like(recon)
    rows = fastvae.reconstruction_loss(recon, x, "mse", reduction="none", backend="triton")
    want = torch.zeros(shape[0], device="cuda")
    want[-1] = 4000.0
    assert torch.equal(rows, want)
    del rows
    recon.requires_grad_(True)
    fastvae.reconstruction_loss(recon, x, "mse", reduction="sum", backend="triton").backward()
    grad = recon.grad
    assert torch.equal(grad[-1, -1000:],
                       torch.full((1000,), 4.0, dtype=torch.float16, device="cuda"))
    assert int(torch.count_nonzero(grad)) == 1000


@pytest.mark.cuda
def test_latent_ops_index_past_2_31_elements():
    """B * L > 2**31 (fp16): mu = 0 and logvar = 0 except the last row, mu = 3 there. The KL is
    0 per row but 0.5 * L * 9 in the last; z = eps there shifted by 3 (finite, not a copy of
    row 0's noise, which a wrapped counter would give)."""
    B, L = 2**25 + 3, 64
    if _free_gib() < 4 * B * L * 2 / 2**30:
        pytest.skip(f"needs about {4 * B * L * 2 / 2**30:.0f} GiB of free GPU memory")
    mu = torch.zeros(B, L, dtype=torch.float16, device="cuda")
    mu[-1] = 3.0
    lv = torch.zeros_like(mu)
    z, kl = fastvae.sample_and_kl(mu, lv, reduction="none", backend="triton")
    assert kl.shape == (B,) and float(kl[-1]) == 0.5 * L * 9 and float(kl[:-1].abs().max()) == 0.0
    last = z[-1].float() - 3.0
    assert torch.isfinite(last).all() and 0.3 < float(last.std()) < 2.0
    assert not torch.equal(z[-1] - 3.0, z[0])
