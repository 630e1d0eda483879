"""Evaluation of a trained VAE: the test negative ELBO, an importance-weighted NLL, FID.

The marginal likelihood log p(x) is estimated by importance sampling with the encoder as the
proposal (Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016, eq. 8;
Rezende et al. 2014, appendix E):

    log p(x) ~= L_k(x) = logsumexp_i(log w_i) - log k,
    log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x),   z_1..z_k ~ q(z | x) i.i.d.

L_k is a lower bound on log p(x) in expectation, increasing in k, and equal to the ELBO for
k = 1; for the SAME draws, L_k >= mean_i log w_i (Jensen), so the reported NLL = -L_k is never
above the k-sample ELBO estimate computed alongside it. The draws come from
:func:`fastvae.reparameterize` with ``n_samples`` (the fused multi-sample kernel on CUDA),
in chunks over k so that memory stays bounded; everything is reported in nats per image.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from tqdm.auto import tqdm

from fastvae import _checks
from fastvae.data import ImageBatches
from fastvae.models import VAE, log_importance_weights
from fastvae.train import build
from fastvae.train.checkpoint import checkpoint_file, load_checkpoint
from fastvae.train.config import TrainConfig, resolve_device
from fastvae.train.testset import evaluate

# Default chunk over k: about this many decoder output values per chunk (k_chunk * B * D).
CHUNK_ELEMENTS = 2**24


@torch.no_grad()
def importance_weighted_nll(
    model: VAE,
    batches: Iterable[tuple[torch.Tensor, Any]],
    *,
    k: int = 5000,
    k_chunk: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Importance-weighted estimate of the test NLL -log p(x), in nats per image (module doc).

    Args:
        model: a trained VAE (put in eval mode here, restored after).
        batches: ``(x, label)`` pairs (an :class:`fastvae.data.ImageBatches`, a DataLoader);
            every image is used once.
        k: importance samples per image (Burda et al. use 5000 for their test NLLs).
        k_chunk: draws per forward pass (default: about ``CHUNK_ELEMENTS`` decoder outputs);
            the result does not depend on it except through the random stream.
        seed: seeds the draws (a generator on the device of the first batch).
        progress: a tqdm bar counting the draws (images x k; its total is known when
            ``batches`` has ``num_images``, as :class:`fastvae.data.ImageBatches` does).

    Returns:
        ``{"nll", "elbo", "k", "images"}``: nll = mean over images of -L_k(x); elbo = mean over
        images of -(1/k) sum_i log w_i, the negative ELBO estimated from the same draws
        (so nll <= elbo always).
    """
    _checks.positive_int("k", k)
    if k_chunk is not None:
        _checks.positive_int("k_chunk", k_chunk)
    was_training = model.training
    model.eval()
    gen = None
    nll_sum = elbo_sum = 0.0
    n = 0
    images = getattr(batches, "num_images", None)
    bar = tqdm(desc=f"IWAE NLL (k={k})", total=images * k if images else None, unit="draw",
               unit_scale=True, disable=not progress or None, leave=False)
    per_image = model.decoder_channels * model.input_dim
    for x, _ in batches:
        if gen is None:
            gen = torch.Generator(device=x.device).manual_seed(seed)
        b = x.shape[0]
        chunk = k_chunk or max(1, min(k, CHUNK_ELEMENTS // max(1, b * per_image)))
        lse, total = [], torch.zeros(b, dtype=torch.float64, device=x.device)
        for lo in range(0, k, chunk):
            logw = log_importance_weights(model, x, min(chunk, k - lo), generator=gen)
            lse.append(torch.logsumexp(logw, dim=0))
            total += logw.sum(0)
            bar.update(b * min(chunk, k - lo))
        log_px = torch.logsumexp(torch.stack(lse), dim=0) - math.log(k)
        nll_sum += float(-log_px.sum())
        elbo_sum += float(-(total / k).sum())
        n += b
    bar.close()
    model.train(was_training)
    return {"nll": nll_sum / n, "elbo": elbo_sum / n, "k": k, "images": n}


def evaluate_checkpoint(
    path,
    *,
    k: int = 5000,
    k_chunk: int | None = None,
    batch_size: int = 100,
    limit: int | None = None,
    fid: str | None = None,
    fid_samples: int = 10000,
    inception_weights=None,
    classifier_path=None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Everything ``fastvae evaluate`` reports for a checkpoint of ``fastvae train`` (``path``:
    the checkpoint or its run folder; errors as :func:`fastvae.train.checkpoint.read_checkpoint`).

    The test split (and binarization) of the checkpoint's own config, its first ``limit``
    images if given; binarized data are binarized once with a fixed seed, the same draw for
    every metric. Returns a dict with ``checkpoint``, ``epoch``, ``images``, ``elbo``
    (``{"loss", "recon", "kl"}``: the single-sample negative ELBO with the closed-form KL),
    ``iwae`` (:func:`importance_weighted_nll`; absent when ``k == 0``) and ``fid``
    (``{"feature", "value", "samples", "real"}``; absent when ``fid`` is None): the FID of
    ``fid_samples`` model samples against the first ``fid_samples`` test images (all of them
    when the split holds fewer; ``real`` says how many).

    Raises:
        ValueError: ``k`` > 0 for an autoencoder (it has no posterior to importance-sample;
            pass k = 0); ``fid_samples`` < 2.
    """
    path = checkpoint_file(path)
    dev = resolve_device(device)
    if fid is not None and (isinstance(fid_samples, bool) or fid_samples < 2):
        raise ValueError(f"fid_samples must be >= 2 (FID fits a covariance), got {fid_samples}")
    model, ckpt = load_checkpoint(path, map_location=dev)
    if k and not model.has_posterior:
        raise ValueError(f"{path} holds a plain autoencoder, which has no posterior to "
                         f"importance-sample for an NLL; pass --k 0")
    cfg = TrainConfig.from_dict({**ckpt["config"], "limit_test": limit})
    split, _, _ = build.load_split(cfg, False, dev)

    def test_batches():
        return ImageBatches(*split, batch_size, shuffle=False, binarize=cfg.binarize, seed=seed)

    elbo_batches = tqdm(test_batches(), desc="test NELBO", unit="batch", leave=False,
                        disable=not progress or None)
    result: dict[str, Any] = {
        "checkpoint": str(path), "epoch": ckpt["epoch"], "images": split.images.shape[0],
        "elbo": evaluate(model, elbo_batches, seed=seed + 1),
    }
    if k:
        result["iwae"] = importance_weighted_nll(
            model, test_batches(), k=k, k_chunk=k_chunk, seed=seed + 2, progress=progress
        )
    if fid is not None:
        result["fid"] = _fid(model, split, fid, fid_samples, batch_size, seed + 3, progress,
                             inception_weights=inception_weights,
                             classifier_path=classifier_path)
    return result


def _fid(model, split, feature, n: int, batch_size: int, seed: int, progress: bool,
         **network) -> dict[str, Any]:
    """FID of ``n`` samples of ``model`` against the first ``n`` images of ``split`` (all of
    them when it holds fewer), with tqdm bars over both sets."""
    from fastvae.studies.fid import fid_metric, frechet_distance

    device = next(model.parameters()).device
    metric = fid_metric(feature, device=device, **network)
    gen = torch.Generator(device=device).manual_seed(seed)
    bar = dict(unit="batch", leave=False, disable=not progress or None)
    fakes = (model.sample(min(batch_size, n - i), generator=gen).clamp(0, 1)
             for i in tqdm(range(0, n, batch_size), desc="FID: model samples", **bar))
    n_real = min(n, split.images.shape[0])
    real = ImageBatches(split.images[:n_real], split.labels[:n_real], batch_size, shuffle=False)
    reals = (x for x, _ in tqdm(real, desc="FID: test images", **bar))
    return {"feature": feature if isinstance(feature, str) else type(feature).__name__,
            "value": frechet_distance(reals, fakes, metric), "samples": n, "real": n_real}
