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
from fastvae.iwae import log_importance_weights
from fastvae.models import VAE

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
        progress: a tqdm bar over batches.

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
    bar = tqdm(batches, desc=f"IWAE NLL (k={k})", unit="batch", disable=not progress or None,
               leave=False)
    for x, _ in bar:
        if gen is None:
            gen = torch.Generator(device=x.device).manual_seed(seed)
        b = x.shape[0]
        chunk = k_chunk or max(1, min(k, CHUNK_ELEMENTS // max(1, b * model.decoder_channels * model.input_dim)))
        lse, total = [], torch.zeros(b, dtype=torch.float64, device=x.device)
        for lo in range(0, k, chunk):
            logw = log_importance_weights(model, x, min(chunk, k - lo), generator=gen)
            lse.append(torch.logsumexp(logw, dim=0))
            total += logw.sum(0)
        log_px = torch.logsumexp(torch.stack(lse), dim=0) - math.log(k)
        nll_sum += float(-log_px.sum())
        elbo_sum += float(-(total / k).sum())
        n += b
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
    """Everything ``fastvae evaluate`` reports for a checkpoint of ``fastvae train``.

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
    from fastvae import builders
    from fastvae.train import TrainConfig, evaluate, load_checkpoint, resolve_device

    from fastvae.autoencoder import Autoencoder

    dev = resolve_device(device)
    if fid is not None and (isinstance(fid_samples, bool) or fid_samples < 2):
        raise ValueError(f"fid_samples must be >= 2 (FID fits a covariance), got {fid_samples}")
    model, ckpt = load_checkpoint(path, map_location=dev)
    if k and isinstance(model, Autoencoder):
        raise ValueError(f"{path} holds a plain autoencoder, which has no posterior to "
                         f"importance-sample for an NLL; pass --k 0")
    cfg = TrainConfig.from_dict({**ckpt["config"], "limit_test": limit})
    split, _, _ = builders.load_split(cfg, False, dev)

    def test_batches():
        return ImageBatches(*split, batch_size, shuffle=False, binarize=cfg.binarize, seed=seed)

    result: dict[str, Any] = {
        "checkpoint": str(path), "epoch": ckpt["epoch"], "images": split.images.shape[0],
        "elbo": evaluate(model, test_batches(), seed=seed + 1),
    }
    if k:
        result["iwae"] = importance_weighted_nll(
            model, test_batches(), k=k, k_chunk=k_chunk, seed=seed + 2, progress=progress
        )
    if fid is not None:
        from fastvae.fid import fid_metric, frechet_distance

        metric = fid_metric(fid, inception_weights=inception_weights,
                            classifier_path=classifier_path, device=dev)
        gen = torch.Generator(device=dev).manual_seed(seed + 3)
        fakes = (
            model.sample(min(batch_size, fid_samples - i), generator=gen).clamp(0, 1)
            for i in range(0, fid_samples, batch_size)
        )
        n_real = min(fid_samples, split.images.shape[0])
        real_split = (split.images[:n_real], split.labels[:n_real])
        reals = (x for x, _ in ImageBatches(*real_split, batch_size, shuffle=False))
        result["fid"] = {
            "feature": fid if isinstance(fid, str) else type(fid).__name__,
            "value": frechet_distance(reals, fakes, metric),
            "samples": fid_samples,
            "real": n_real,
        }
    return result
