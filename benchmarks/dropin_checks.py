"""Correctness of :mod:`benchmarks.dropin`'s variants against their originals, and the
fresh-noise check of a compiled training step.

- :func:`check_head`: a variant's loss head against the original's from the same inputs:
  the loss, the gradients of the decoder output and of mu (neither depends on the noise),
  and the gradient of logvar less its noise term ``0.5 * dz * (z - mu)`` (z - mu = eps *
  std, whichever eps was drawn);
- :func:`check_step`: a whole training step (twin model widths, tiny shapes): the variant
  runs first and its eps is read back from its mu, logvar and z (hooks on the layers named
  by the code's ``LATENT_LAYERS``); the original then runs from the same initial weights and
  batch with ``torch.randn_like`` answering that eps, so the two see the same noise on any
  backend; the loss and every parameter's gradient are compared;
- :func:`fresh_noise`: the losses of repeated calls of one compiled forward + loss on one
  batch, the parameters unchanged (backward runs, no optimizer step): with
  ``mode="reduce-overhead"`` on CUDA the third and later calls replay a CUDA graph, and
  equal losses there would mean the noise is frozen into the graph.

Tolerances: fp32, ``|a - b| <= ATOL * scale + RTOL * |b|`` elementwise, the scale being the
largest magnitude of the terms a value was computed from: the value itself for the loss and
the head's gradients, the full logvar gradient for its noise-free part, the model's largest
parameter gradient for a training step's gradients. Different formulas of one value (sigmoid
+ BCE against BCE from logits, torch's and the kernel's sums) agree to rounding, never
bitwise.
"""

from __future__ import annotations

import contextlib

import torch

from benchmarks import dropin

RTOL, ATOL = 1e-5, 1e-6
CHECK_SIZE = dropin.Size(2, 3, 32, 4)  # five stride-2 convs: VanillaVAE's 64 and 128 stack
FRESH_RTOL = 1e-6  # relative change of the loss between replays above which noise is fresh


def _close(a: torch.Tensor, b: torch.Tensor, scale: float | None = None) -> tuple[float, bool]:
    """(max |a - b|, within tolerance); ``scale`` multiplies ATOL (default |b|'s max, >= 1e-30)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return float("inf"), False
    diff = (a - b).abs()
    scale = scale if scale is not None else max(float(b.abs().max()) if b.numel() else 0.0, 1e-30)
    ok = bool((diff <= ATOL * scale + RTOL * b.abs()).all())
    return (float(diff.max()) if diff.numel() else 0.0), ok


def _row(code, variant, size, backend, what, pairs: dict) -> dict:
    diffs = {name: _close(a, b, scale) for name, (a, b, scale) in pairs.items()}
    return {"code": code, "variant": variant, "size": size.name, "backend": backend or "auto",
            "what": what, "max_abs_diff": {k: d for k, (d, _) in diffs.items()},
            "ok": all(ok for _, ok in diffs.values())}


def check_head(code: str, variant: str, size: dropin.Size, device, backend=None, seed=0) -> dict:
    """The variant's loss head against the original's (see the module docstring)."""
    s = dropin.head_inputs(code, size, device, torch.Generator().manual_seed(seed))
    inputs = (s["mu"], s["logvar"], s["out"])
    out = {}
    for name in ("original", variant):
        sampler = dropin.build(code, name, dropin.Size(1, 1, 4, 1), device, twin=True,
                               backend=backend)
        z, loss = dropin.CODES[code].VARIANTS[name].head(sampler, *inputs, s["x"])
        grads = torch.autograd.grad((loss, z), inputs, (s["one"], s["dz"]))
        noise_free_dlogvar = grads[1] - 0.5 * s["dz"] * (z - s["mu"]).detach()
        out[name] = (loss, grads[2], grads[0], noise_free_dlogvar)
        scale = float(grads[1].abs().max())  # the terms the noise-free part was taken from
    names = ("loss", "d_out", "d_mu", "d_logvar_less_noise_term")
    pairs = {n: (got, want, None) for n, got, want in zip(names, out[variant], out["original"])}
    pairs[names[-1]] = (*pairs[names[-1]][:2], scale)
    return _row(code, variant, size, backend, "head", pairs)


@contextlib.contextmanager
def replayed_noise(eps: torch.Tensor):
    """``torch.randn_like`` returns ``eps`` (in the argument's dtype) inside the context."""
    original = torch.randn_like

    def randn_like(t, *args, **kwargs):
        if t.shape != eps.shape:
            raise RuntimeError(f"replayed noise has shape {tuple(eps.shape)}, asked for "
                               f"{tuple(t.shape)}")
        return eps.to(dtype=t.dtype, device=t.device)

    torch.randn_like = randn_like
    try:
        yield
    finally:
        torch.randn_like = original


def _latents_seen(model, layer_names) -> tuple[dict, list]:
    """Hooks storing mu and logvar (outputs of the first two layers) and z (input of the
    third); returns the dict they fill and the hook handles."""
    seen = {}
    mu_layer, logvar_layer, z_layer = (getattr(model, n) for n in layer_names)
    handles = [
        mu_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("mu", o.detach())),
        logvar_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("logvar", o.detach())),
        z_layer.register_forward_pre_hook(lambda m, i: seen.__setitem__("z", i[0].detach())),
    ]
    return seen, handles


def check_step(code: str, variant: str, size: dropin.Size, device, backend=None, seed=0) -> dict:
    """A whole training step's loss and parameter gradients, the variant against the original
    from the same weights, batch and noise (see the module docstring)."""
    mod = dropin.CODES[code]
    torch.manual_seed(seed)
    original = dropin.build(code, "original", size, device, twin=True)
    model = dropin.build(code, variant, size, device, twin=True, backend=backend)
    model.load_state_dict(original.state_dict())
    x = dropin.batches(size, device, torch.Generator().manual_seed(seed), 1)[0]
    seen, handles = _latents_seen(model, mod.LATENT_LAYERS)
    loss = mod.VARIANTS[variant].batch_loss(model, x)
    loss.backward()
    for h in handles:
        h.remove()
    eps = (seen["z"] - seen["mu"]) * torch.exp(-0.5 * seen["logvar"])
    with replayed_noise(eps):
        want = mod.VARIANTS["original"].batch_loss(original, x)
    want.backward()
    grads = {name: p.grad for name, p in original.named_parameters()}
    # The network's gradient scale: a bias before a BatchNorm has a gradient of exactly 0,
    # computed as the rounding residue of the gradients flowing through it.
    scale = max(float(g.abs().max()) for g in grads.values())
    pairs = {"loss": (loss, want, None)}
    pairs.update({name: (p.grad, grads[name], scale) for name, p in model.named_parameters()})
    return _row(code, variant, size, backend, "step", pairs)


def run_checks(device, backend=None, sizes=None) -> list[dict]:
    """Every variant other than the original, head and step, at each of ``sizes`` (default:
    the smoke size and ``CHECK_SIZE``: both AntixK layer stacks, twin widths). cuDNN runs
    deterministic and without TF32 meanwhile (TF32 rounds a convolution's inputs to 10
    mantissa bits: two nearly equal inputs would differ by far more than fp32 rounding)."""
    sizes = sizes or (dropin.SMOKE_SIZES[0], CHECK_SIZE)
    rows = []
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, allow_tf32=False):
        for size in sizes:
            for code, mod in dropin.CODES.items():
                for variant in mod.VARIANTS:
                    if variant != "original":
                        rows.append(check_head(code, variant, size, device, backend))
                        rows.append(check_step(code, variant, size, device, backend))
    return rows


def replays_differ(loss_of, model, x, *, cudagraphs: bool, calls: int = 5) -> dict:
    """Call ``loss_of(x)`` and backward ``calls`` times, the parameters unchanged (no
    optimizer step; grads cleared), a CUDA graph step marked first when ``cudagraphs``.
    Returns the losses, the relative change of each call after the second from the call
    before it (replays, under CUDA graphs), and ``fresh``: every such change above
    ``FRESH_RTOL``."""
    losses = []
    for _ in range(calls):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = loss_of(x)
        loss.backward()
        losses.append(loss.item())
        model.zero_grad(set_to_none=True)
    changes = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(losses[2:], losses[1:])]
    return {"losses": losses, "relative_changes": changes, "fresh": min(changes) > FRESH_RTOL}


def fresh_noise(code: str, variant: str, size: dropin.Size, device, *, backend=None,
                compile_options: dict | None = None, calls=5) -> dict:
    """:func:`replays_differ` on the variant's forward + loss under ``torch.compile(
    **compile_options)`` (default ``mode="reduce-overhead"``), after ``torch._dynamo.reset()``
    (a fresh cache: the compile is not skipped for a recompile limit). ``backend`` is
    fastvae's."""
    torch._dynamo.reset()
    step = dropin.train_step(code, variant, size, device, backend=backend, mode="compile",
                             compile_options=compile_options, n_batches=1)
    options = {"mode": "reduce-overhead"} if compile_options is None else compile_options
    res = replays_differ(step.loss_of, step.model, step.batch, calls=calls,
                         cudagraphs=options.get("mode") == "reduce-overhead")
    return {"code": code, "variant": variant, "size": size.name, "backend": backend or "auto",
            "compile": options, **res}
