"""The latent op: reparameterization sample z = mu + eps * exp(0.5 * logvar) and the Gaussian
KL to N(0, I), in one launch of ``kernels/latent.py`` each way.

Gradients (Kingma & Welling 2014, section 2.4 and Appendix B), with the KL's incoming gradient
w per row: dmu = dz + w mu, dlogvar = 0.5 dz eps exp(0.5 logvar) + 0.5 w (exp(logvar) - 1).
eps is never stored: backward regenerates it from the draw's Philox key.

The Philox key (seed, counter offset). Eager calls on CUDA outside graph capture read it from
the CUDA generator on the host: ``(initial_seed, offset / 4)``, advancing the offset by 4 per
sample, PyTorch's own reservation protocol (its CUDA random kernels advance the same offset), so
the draw costs no launch, ``torch.manual_seed`` reproduces it and consecutive calls get fresh
counters. Under torch.compile or CUDA-graph capture the key must be a device tensor (a Python
int would be baked into the graph and every replay would repeat its noise): there
``torch.randint`` draws it, one launch that a replay repeats with fresh values. CPU generators
(mt19937) have no offset: the CPU (interpreter) path draws with ``torch.randint`` too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from fastvae import kernels
from fastvae.conventions import accumulation_dtype, divisor, nan_if_empty, reduced_shape


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _host_key(generator: torch.Generator | None, t: Tensor, n_samples: int):
    """(seed, counter offset) read and advanced on the host, or None where that would be
    wrong (compiling, capturing) or impossible (not CUDA: a CPU generator has no offset)."""
    if not t.is_cuda or torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        return None
    if generator is None:
        generator = torch.cuda.default_generators[t.get_device()]
    offset = generator.get_offset()
    generator.set_offset(offset + 4 * n_samples)
    return _signed64(generator.initial_seed()), offset // 4


def philox_key(generator: torch.Generator | None, t: Tensor, n_samples: int):
    """The key of one draw of ``n_samples`` samples on ``t``'s device: ``(seed, offset)``
    ints, or an int64 device tensor holding them (see the module docstring).

    Raises:
        ValueError: a user CUDA generator used while capturing a CUDA graph without being
            registered with the graph (``graph.register_generator_state(generator)`` before
            the capture begins: the graph then refreshes its state at every replay).
    """
    key = _host_key(generator, t, n_samples)
    if key is not None:
        return key
    try:
        return torch.randint(
            0, 1 << 62, (2,), generator=generator, device=t.device, dtype=torch.int64
        )
    except RuntimeError as e:
        if generator is not None and "capture" in str(e):
            raise ValueError(
                "generator is used inside a CUDA graph capture but is not registered with the "
                "graph; call graph.register_generator_state(generator) before capturing"
            ) from e
        raise


def _rows(t: Tensor) -> Tensor:
    """``(B, *latent)`` as ``(B, L)`` rows with a unit last stride: a 2-D tensor as it is
    (a ``chunk`` view keeps its row stride), a contiguous one as a view, anything else copied."""
    if t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] == 1):
        return t
    rows = (t.shape[0], math.prod(t.shape[1:]))  # explicit L: B may be 0
    return t.view(rows) if t.is_contiguous() else t.contiguous().view(rows)


def _z_shape(mu: Tensor, n_samples: int) -> tuple[int, ...]:
    return tuple(mu.shape) if n_samples == 1 else (n_samples, *mu.shape)


def launch_forward(mu, logvar, key, n_samples: int, sample: bool, kl: bool, reduction: str):
    """(z or None, KL or None) from one launch; z is ``mu.shape`` (``(K, *mu.shape)`` for
    K > 1), contiguous; the KL is reduced as asked, summed over all non-batch dims."""
    B, numel = mu.shape[0], mu.numel()
    mode = "off" if not kl else "rows" if reduction == "none" else "total"
    z, kl_out = kernels.sample_and_kl_fwd(
        _rows(mu), _rows(logvar), key if sample else None, n_samples, sample, mode,
        divisor(reduction, B, numel),
    )
    if sample and mu.dim() != 2:
        z = z.view(_z_shape(mu, n_samples))
    if kl and numel == 0:  # (B, 0) latents: "batchmean" is 0 / B = 0, "mean" 0 / 0 = NaN
        kl_out = nan_if_empty(kl_out, reduction, B, numel)
    return z, kl_out


def launch_backward(mu, logvar, key, n_samples, grad_z, grad_kl, reduction, kl_weight=1.0):
    """(dmu, dlogvar), contiguous in mu's shape, from one launch; eps regenerated from key.
    grad_z goes to the kernel in its own shape (read flat), a scalar grad_kl as it is (read
    once, stride 0); the kernel multiplies grad_kl by ``kl_weight`` (float32)."""
    dmu, dlv = kernels.sample_and_kl_bwd(
        _rows(mu), _rows(logvar), key, n_samples, grad_z, grad_kl,
        divisor(reduction, mu.shape[0], mu.numel()), kl_weight,
    )
    if mu.dim() != 2:
        return dmu.view(mu.shape), dlv.view(logvar.shape)
    return dmu, dlv


# ---------------------------------------------------------------- what torch.compile traces


def kl_dtype(mu: Tensor) -> torch.dtype:
    """The KL's dtype: float32, float64 for float64 latents."""
    return accumulation_dtype(mu.dtype)


@torch.library.custom_op("fastvae::sample_and_kl", mutates_args=())
def sample_and_kl_op(
    mu: Tensor, logvar: Tensor, key: Tensor, n_samples: int, sample: bool, kl: bool,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    """(z, KL reduced as asked), one launch; ``key`` is the int64 device tensor (seed,
    offset), read only when sampling. An output not asked for is an empty tensor."""
    z, kl_out = launch_forward(mu, logvar, key, n_samples, sample, kl, reduction)
    z = mu.new_empty(0) if z is None else z
    return z, mu.new_empty(0, dtype=kl_dtype(mu)) if kl_out is None else kl_out


@sample_and_kl_op.register_fake
def _(mu, logvar, key, n_samples, sample, kl, reduction):
    z = mu.new_empty(_z_shape(mu, n_samples) if sample else (0,))
    return z, mu.new_empty(
        reduced_shape(reduction, mu.shape[0]) if kl else (0,), dtype=kl_dtype(mu)
    )


@torch.library.custom_op("fastvae::sample_and_kl_backward", mutates_args=())
def sample_and_kl_backward_op(
    mu: Tensor, logvar: Tensor, key: Tensor, n_samples: int, grad_z: Tensor | None,
    grad_kl: Tensor | None, reduction: str, kl_weight: float,
) -> tuple[Tensor, Tensor]:
    """(dmu, dlogvar) from one launch; eps is regenerated from ``key``. ``grad_kl`` is
    ``(B,)`` for reduction "none" and a scalar otherwise."""
    return launch_backward(mu, logvar, key, n_samples, grad_z, grad_kl, reduction, kl_weight)


@sample_and_kl_backward_op.register_fake
def _(mu, logvar, key, n_samples, grad_z, grad_kl, reduction, kl_weight):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def forward(mu, logvar, key, n_samples, sample, kl, reduction):
    """:func:`launch_forward` when called eagerly, its custom op while torch.compile traces
    (which takes the key as a tensor, empty when not sampling)."""
    if torch.compiler.is_compiling():
        if key is None:
            key = mu.new_empty(0, dtype=torch.int64)
        return sample_and_kl_op(mu, logvar, key, n_samples, sample, kl, reduction)
    return launch_forward(mu, logvar, key, n_samples, sample, kl, reduction)


def backward(mu, logvar, key, n_samples, grad_z, grad_kl, reduction, kl_weight=1.0):
    """:func:`launch_backward` when called eagerly, its custom op while torch.compile traces."""
    if torch.compiler.is_compiling():
        if key is None:
            key = mu.new_empty(0, dtype=torch.int64)
        return sample_and_kl_backward_op(
            mu, logvar, key, n_samples, grad_z, grad_kl, reduction, kl_weight
        )
    return launch_backward(mu, logvar, key, n_samples, grad_z, grad_kl, reduction, kl_weight)


# ---------------------------------------------------------------- the op


class Options(NamedTuple):
    """The op's non-tensor arguments, one argument of the Function (each argument of
    ``autograd.Function.apply`` costs host time)."""

    n_samples: int  # K draws per row
    sample: bool  # compute z
    kl: bool  # compute the KL
    reduction: str  # of the KL


class SampleAndKL(torch.autograd.Function):
    """``(z, kl)`` from one launch, ``(dmu, dlogvar)`` from one launch back. Saves mu, logvar
    and the Philox key (a device key as a saved tensor, a host key on ctx); never eps."""

    @staticmethod
    def forward(ctx, mu, logvar, key, options: Options):
        z, kl_out = forward(mu, logvar, key, *options)
        device_key = key if isinstance(key, Tensor) else None
        ctx.save_for_backward(mu, logvar, device_key)
        ctx.host_key = None if device_key is not None else key
        ctx.options = options
        ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros
        return z, kl_out

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        # An output switched off has no gradient, whatever arrives for it (AOT autograd hands
        # the empty placeholder a gradient of zeros, of shape (0,), materialized).
        n_samples, sample, kl, reduction = ctx.options
        grad_z, grad_kl = (grad_z if sample else None), (grad_kl if kl else None)
        if grad_z is None and grad_kl is None:
            return None, None, None, None
        mu, logvar, key = ctx.saved_tensors
        dmu, dlogvar = backward(
            mu, logvar, ctx.host_key if key is None else key, n_samples, grad_z, grad_kl,
            reduction,
        )
        return dmu, dlogvar, None, None


def sample_and_kl(
    mu: Tensor, logvar: Tensor, generator: torch.Generator | None, n_samples: int,
    sample: bool, kl: bool, reduction: str,
):
    """(z, KL reduced as asked) in one launch (no seed launch in eager CUDA use); either may be
    switched off (None eagerly, an empty tensor while traced). Arguments are checked by
    :mod:`fastvae.functional`."""
    key = philox_key(generator, mu, n_samples) if sample else None
    return SampleAndKL.apply(mu, logvar, key, Options(n_samples, sample, kl, reduction))
