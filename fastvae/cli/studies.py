"""The study commands of the ``fastvae`` CLI: ``evaluate``, ``experiment NAME``,
``train-classifier``.

:func:`add_commands` adds them to the CLI's subparsers; each sets ``handler`` (a function of
the parsed arguments and the argument list, returning the exit status).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from fastvae.cli.args import add, device, nonnegative_int, optional_int, positive_int


def add_commands(sub) -> None:
    """Add ``evaluate``, ``experiment`` and ``train-classifier`` to ``sub`` (argparse
    subparsers)."""
    _add_evaluate(sub)
    _add_train_classifier(sub)
    _add_experiments(sub)


def _add_evaluate(sub) -> None:
    from fastvae.studies.fid import FEATURES

    e = sub.add_parser(
        "evaluate",
        help="test negative ELBO, importance-weighted NLL and FID of a checkpoint",
        description="Evaluate a checkpoint of `fastvae train` on its data set's test split: the "
        "negative ELBO (reconstruction + KL), the importance-weighted NLL estimate with k samples "
        "(Burda et al. 2015, eq. 8) and, with --fid, the Frechet distance of model samples to the "
        "test images. All losses in nats per image.",
    )
    add(e, "checkpoint", metavar="RUN",
                   help="a run folder of `fastvae train`, or its checkpoint.pt")
    add(e, "--k", type=nonnegative_int, default=5000,
                   help="importance samples per image (0: skip)")
    add(e, "--k-chunk", type=positive_int, default=None,
                   help="samples per forward pass (default: bounded memory)")
    add(e, "--batch-size", type=positive_int, default=100, help="test images per batch")
    add(e, "--limit", type=optional_int, default=None,
                   help="evaluate only the first N test images (default: all)")
    add(e, "--fid", choices=FEATURES, default=None,
                   help="also compute FID with this feature network")
    add(e, "--fid-samples", type=positive_int, default=10000,
                   help="FID: this many model samples against as many real test images (the "
                   "first N of the split; all of them if it holds fewer)")
    add(e, "--inception-weights", default=None,
                   help="local path of torch-fidelity's Inception-v3 weights (--fid inception)")
    add(e, "--classifier", default=None,
                   help="MNIST feature classifier (default: the cached one, trained if absent)")
    add(e, "--seed", type=int, default=0, help="seed of every random draw")
    add(e, "--device", type=device, default="auto", help="auto, cpu, cuda, ...")
    add(e, "--json", default=None, help="also write the results to this JSON file")
    e.set_defaults(handler=_evaluate)


def _add_train_classifier(sub) -> None:
    c = sub.add_parser(
        "train-classifier",
        help="train and cache the small MNIST CNN whose features give the MNIST FID",
    )
    add(c, "--epochs", type=positive_int, default=3, help="training epochs")
    add(c, "--out", default=None, help="where to save it (default: the cache path)")
    add(c, "--limit-train", type=optional_int, default=None,
                   help="first N training images only")
    add(c, "--seed", type=int, default=0, help="seed")
    add(c, "--device", type=device, default="auto", help="auto, cpu, cuda, ...")
    c.set_defaults(handler=_train_classifier)


def _add_experiments(sub) -> None:
    from fastvae.studies.experiments import EXPERIMENTS

    x = sub.add_parser(
        "experiment", help="the classic VAE experiments, one command each (PNGs + report.md)",
        description="Run one experiment (on MNIST unless its flags say otherwise): each trains "
        "its models, writes PNG figures and a report.md embedding them with the numbers into "
        "--out.",
    )
    names = x.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for name, (_, about) in EXPERIMENTS.items():
        p = names.add_parser(name, help=about, description=about)
        add(p, "--out", default=f"runs/experiments/{name}", help="experiment folder")
        add(p, "--epochs", type=positive_int, default=None,
                       help="epochs per model (default: 10; 1 with --quick)")
        add(p, "--quick", action="store_true",
                       help="a try: 1 epoch on 5,000 training and 1,000 test images")
        add(p, "--seed", type=int, default=0, help="seed of every run")
        add(p, "--device", type=device, default="auto", help="auto, cpu, cuda, ...")
        add(p, "--overwrite", action="store_true",
                       help="replace the runs this experiment trained before in --out")
        add(p, "--limit-train", type=optional_int, default=None,
                       help="first N training images (overrides --quick's)")
        add(p, "--limit-test", type=optional_int, default=None,
                       help="first N test images (overrides --quick's)")
        _add_experiment_flags(p, name)
        p.set_defaults(handler=_experiment)


def _add_experiment_flags(p, name: str) -> None:
    """The flags of experiment ``name`` beyond the common ones."""
    from fastvae.models import MODEL_LIKELIHOODS, MODELS
    from fastvae.studies.experiments import sweeps
    from fastvae.studies.experiments.ae_vs_vae import ARCHS
    from fastvae.studies.fid import FEATURES

    if name == "latent-sweep":
        add(p, "--latent-dims", type=positive_int, nargs="+",
                       default=list(sweeps.LATENT_DIMS))
    elif name == "beta-sweep":
        add(p, "--betas", type=float, nargs="+", default=list(sweeps.BETAS))
    elif name == "ae-vs-vae":
        add(p, "--latent-dim", type=positive_int, default=20,
                       help="latent size of every model")
        add(p, "--archs", nargs="+", choices=tuple(MODELS),
                       default=list(ARCHS),
                       help="architectures, one VAE and one autoencoder each")
        add(p, "--likelihood", choices=("bernoulli", "mse"), default="bernoulli",
                       help="reconstruction loss of every model: Bernoulli cross-entropy or "
                       "squared error")
        add(p, "--fid", choices=FEATURES, default=None,
                       help="also the FID of prior samples with this feature network")
        add(p, "--fid-samples", type=positive_int, default=2000,
                       help="FID: this many samples and as many test images")
        add(p, "--inception-weights", default=None,
                       help="--fid inception: local path of torch-fidelity's weights")
        _data_flags(p)
    elif name == "animal-faces":
        _data_flags(p, animal_faces=True)
        add(p, "--model", choices=tuple(MODELS), default="conv", help="network")
        add(p, "--latent-dim", type=positive_int, default=64, help="latent size")
        add(p, "--likelihood", choices=MODEL_LIKELIHOODS, default="bernoulli",
                       help="decoder likelihood")
        add(p, "--batch-size", type=positive_int, default=64,
                       help="training batch size")
    elif name != "decoder-sampling":
        add(p, "--run", default=None,
                       help="use this run folder of `fastvae train` (or its checkpoint.pt) "
                       "instead of training")
        add(p, "--latent-dim", type=positive_int, default=argparse.SUPPRESS,
                       help="latent size of the model trained when --run is not given "
                       "(default: 2 for latent-scatter, else 20)")
        _data_flags(p)


DATA_KEYS = ("dataset", "data_dir", "image_size", "grayscale")


def _data_flags(p, animal_faces: bool = False) -> None:
    """The data set flags of the experiments that train on MNIST or Animal Faces."""
    from fastvae.train.config import DATASETS

    if not animal_faces:
        add(p, "--dataset", choices=DATASETS, default="mnist",
                       help="data set of the models trained (not with --run)")
    add(p, "--data-dir", default=None,
                   help="animal-faces: the AFHQ folder with train/ and val/ (default: "
                   "$FASTVAE_DATA/afhq; the 43-image sample: $FASTVAE_DATA/afhq_sample)")
    add(p, "--image-size", type=positive_int, default=64 if animal_faces else None,
                   help="animal-faces: side of the square images (default: 128)"
                   if not animal_faces else "side of the square images")
    add(p, "--grayscale", action="store_true",
                   help="animal-faces: one luminance channel instead of RGB")


def _evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    from fastvae.studies.evaluation import evaluate_checkpoint

    r = evaluate_checkpoint(
        args.checkpoint, k=args.k, k_chunk=args.k_chunk, batch_size=args.batch_size,
        limit=args.limit, fid=args.fid, fid_samples=args.fid_samples,
        inception_weights=args.inception_weights, classifier_path=args.classifier,
        seed=args.seed, device=args.device,
    )
    elbo = r["elbo"]
    print(f"{r['checkpoint']} (epoch {r['epoch']}), {r['images']} test images, nats per image:")
    print(f"  negative ELBO  {elbo['loss']:.2f}  (recon {elbo['recon']:.2f}, KL {elbo['kl']:.2f})")
    if "iwae" in r:
        iw = r["iwae"]
        print(f"  NLL (IWAE, k={iw['k']})  {iw['nll']:.2f}  (negative ELBO from the same "
              f"samples {iw['elbo']:.2f})")
    if "fid" in r:
        print(f"  FID ({r['fid']['feature']}, {r['fid']['samples']} samples against "
              f"{r['fid']['real']} test images)  {r['fid']['value']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    return 0


def _train_classifier(args: argparse.Namespace, argv: list[str]) -> int:
    from fastvae.studies.fid import default_classifier_path, train_mnist_classifier
    from fastvae.train.config import resolve_device

    out = args.out or default_classifier_path()
    _, acc = train_mnist_classifier(args.epochs, out=out, limit_train=args.limit_train,
                                    seed=args.seed, device=resolve_device(args.device))
    print(f"MNIST feature classifier: test accuracy {acc:.4f}; saved to {out}")
    return 0


def _experiment(args: argparse.Namespace, argv: list[str]) -> int:
    from fastvae.studies.experiments import EXPERIMENTS, Options

    fn, _ = EXPERIMENTS[args.experiment]
    data = {k: getattr(args, k) for k in DATA_KEYS if getattr(args, k, None)}
    if args.experiment == "animal-faces":
        data["dataset"] = "animal-faces"
    options = Options(
        out=args.out, epochs=args.epochs, quick=args.quick, seed=args.seed, device=args.device,
        limit_train=args.limit_train, limit_test=args.limit_test, overwrite=args.overwrite,
        command=" ".join(["fastvae"] + [shlex.quote(a) for a in argv]),
        data=data,
    )
    common = {"command", "experiment", "handler", "out", "epochs", "quick", "seed", "device",
              "limit_train", "limit_test", "overwrite", *DATA_KEYS}
    extra = {k: v for k, v in vars(args).items() if k not in common}
    report = fn(options, **extra)
    print(f"wrote {report}")
    return 0
