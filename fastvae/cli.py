"""The ``fastvae`` command line (also ``python -m fastvae``).

    fastvae train [--epochs 10] [--batch-size 128] [--lr 1e-3] ... [--out runs/DATASET] [--overwrite]
    fastvae train --resume runs/mnist [--epochs 20]
    fastvae sample runs/mnist [--n 64] [--out samples.png] [--seed 0]
    fastvae bench [--smoke] [...]     (python -m benchmarks.report, from a source checkout)
    fastvae evaluate runs/mnist [--k 5000] [--fid mnist-classifier]
    fastvae experiment {latent-sweep,beta-sweep,reconstructions,...} [--epochs N] [--quick]
    fastvae train-classifier

``train`` has one flag per :class:`fastvae.train.TrainConfig` field, with the same defaults.
Every command that takes a checkpoint takes its run folder too. Errors are one line on stderr
(exit status 2 for bad arguments or data, 1 for a refused or failed training, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fastvae.animal_faces import CLASSES
from fastvae.builders import DATASETS, MODELS
from fastvae.cli_args import HelpFormatter, Parser, device, optional_int, positive_int
from fastvae.cli_studies import add_commands as add_study_commands
from fastvae.cli_studies import add_train_flags as add_study_train_flags
from fastvae.data import BINARIZE
from fastvae.functional import BACKENDS
from fastvae.models import MODEL_LIKELIHOODS as LIKELIHOODS
from fastvae.train import (
    LR_SCHEDULES,
    NONFINITE,
    RESUME_OVERRIDES,
    NonFiniteLossError,
    RunExistsError,
    TrainConfig,
    TrainingInterrupted,
    load_checkpoint,
    resolve_device,
    resume_config,
    train,
)

def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    parser = Parser(
        prog="fastvae",
        description="fastvae: VAEs with fused Triton losses. Train a VAE on MNIST or Animal "
        "Faces, sample from it, evaluate it, or run the classic experiments. MNIST is read "
        "from $FASTVAE_DATA/MNIST/raw (default ./data/MNIST/raw).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="train a VAE (MLP or conv; MNIST or Animal Faces) and write a run folder",
        description="Train a VAE (MLP or conv) on MNIST or Animal Faces. Writes config.json, "
        "metrics.csv (nats per image), checkpoint.pt (after every epoch), samples.png, "
        "reconstructions.png and loss_curve.png into --out; --resume RUN continues a run. A "
        "folder holding a run is never written over without --overwrite.",
        formatter_class=HelpFormatter,
    )
    t.add_argument("--epochs", type=positive_int, default=d.epochs, help="training epochs")
    t.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="training batch size")
    t.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    t.add_argument("--latent-dim", type=positive_int, default=d.latent_dim, help="size of z")
    t.add_argument(
        "--hidden-dims", type=positive_int, nargs="+", default=list(d.hidden_dims),
        help="encoder hidden widths (the decoder mirrors them)",
    )
    t.add_argument("--beta", type=float, default=d.beta, help="KL weight (1 = the ELBO)")
    t.add_argument("--likelihood", choices=LIKELIHOODS, default=d.likelihood,
                   help="decoder likelihood p(x|z)")
    t.add_argument(
        "--binarize", choices=BINARIZE, default=d.binarize,
        help="MNIST pixels: continuous in [0, 1], resampled Bernoulli every batch (dynamic), "
        "or binarized once with a fixed seed (static)",
    )
    t.add_argument("--seed", type=int, default=d.seed, help="seed of every random stream")
    t.add_argument("--device", type=device, default=d.device,
                   help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    t.add_argument("--backend", choices=BACKENDS, default=d.backend,
                   help="loss kernels: auto (Triton on CUDA), triton, torch")
    t.add_argument("--out", default=None, help="run folder (default: runs/DATASET)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run that --out holds (its files are deleted)")
    t.add_argument("--limit-train", type=optional_int, default=d.limit_train,
                   help="use only the first N training images (default: all)")
    t.add_argument("--limit-test", type=optional_int, default=d.limit_test,
                   help="use only the first N test images (default: all)")
    t.add_argument("--test-batch-size", type=positive_int, default=d.test_batch_size,
                   help="batch size of the test evaluation")
    t.add_argument("--grad-accum", type=positive_int, default=d.grad_accum,
                   help="micro-batches per process whose gradients are summed before each "
                   "step (--batch-size is the global batch: a multiple of processes x this)")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="learning rate: constant, or cosine decay to 0 over the epochs")
    t.add_argument("--nonfinite", choices=NONFINITE, default=d.nonfinite,
                   help="on a NaN/inf training loss: stop (keeping the last good checkpoint) "
                   "or skip the step")
    t.add_argument("--resume", metavar="RUN", default=None,
                   help="continue the run in folder RUN (or of its checkpoint.pt) with its "
                   "saved configuration (only --epochs, --device and --backend may be given "
                   "too; --epochs below the epochs trained is refused)")
    t.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help="MNIST, or Animal Faces (AFHQ; its val split is the test set)")
    t.add_argument("--model", choices=tuple(MODELS), default=d.model,
                   help="mlp (fully connected, --hidden-dims) or conv (convolutional)")
    t.add_argument("--image-size", type=positive_int, default=d.image_size,
                   help="animal-faces: side of the resized square images (default: 128)")
    t.add_argument("--classes", nargs="+", choices=CLASSES, default=d.classes,
                   help="animal-faces: keep only these classes, e.g. --classes cat")
    t.add_argument("--data-dir", default=d.data_dir,
                   help="animal-faces: the AFHQ folder with train/ and val/ "
                   "(default: $FASTVAE_DATA/afhq)")
    t.add_argument("--conv-channels", type=positive_int, nargs="+", default=d.conv_channels,
                   help="conv: encoder widths, one stride-2 layer each (default: from the "
                   "image size)")
    t.add_argument("--iwae-k", type=positive_int, default=d.iwae_k,
                   help="1: train on the ELBO; K > 1: on the IWAE bound with K samples")
    add_study_train_flags(t, d)

    s = sub.add_parser(
        "sample",
        help="decode samples z ~ N(0, I) of a checkpoint into a PNG grid",
        formatter_class=HelpFormatter,
    )
    s.add_argument("checkpoint", metavar="RUN",
                   help="a run folder of `fastvae train`, or its checkpoint.pt")
    s.add_argument("--n", type=positive_int, default=64, help="number of samples")
    s.add_argument("--nrow", type=positive_int, default=8, help="images per grid row")
    s.add_argument("--out", default="samples.png", help="PNG file to write")
    s.add_argument("--seed", type=int, default=0, help="seed of the latent draw")
    s.add_argument("--device", type=device, default="cpu", help="device to decode on")
    s.add_argument("--decoder-sample", action="store_true",
                   help="draw x ~ p(x|z) (Bernoulli pixels, or mean + std * noise for a "
                   "Gaussian decoder) instead of decoding the mean")

    sub.add_parser(
        "bench",
        help="run the benchmarks (python -m benchmarks.report; a source checkout only)",
        description="Benchmarks of fastvae against PyTorch eager and torch.compile; every "
        "argument goes to `python -m benchmarks.report` (see `fastvae bench --help`).",
        add_help=False,
    )
    add_study_commands(sub)
    return parser


def _explicit_train_flags(argv: list[str]) -> set[str]:
    """Destinations of the `train` flags that ``argv`` gives explicitly."""
    parser = build_parser()
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    for action in train_parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv))) - {"command"}


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if args.resume is None:
        train(TrainConfig(**{k: v for k, v in vars(args).items() if k in fields}),
              overwrite=args.overwrite)
        return 0
    given = _explicit_train_flags(argv) - {"resume"}
    refused = sorted(given - set(RESUME_OVERRIDES))
    if refused:
        raise ValueError(
            "--resume continues a run with its saved configuration; only "
            f"{', '.join('--' + f.replace('_', '-') for f in RESUME_OVERRIDES)} may be given "
            f"with it, got {', '.join('--' + f.replace('_', '-') for f in refused)}"
        )
    config = resume_config(args.resume, **{k: getattr(args, k) for k in given})
    train(config, resume=True)
    return 0


def _sample(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from fastvae.plots import save_samples

    device = resolve_device(args.device)
    model, _ = load_checkpoint(args.checkpoint, map_location=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    path = save_samples(model, args.out, n=args.n, nrow=args.nrow, generator=gen,
                        decoder_sample=args.decoder_sample)
    print(f"wrote {args.n} samples to {path}")
    return 0


def _bench(argv: list[str]) -> int:
    # benchmarks/ sits beside the fastvae package in a checkout (it is not installed).
    checkout = str(Path(__file__).resolve().parent.parent)
    if not (Path(checkout) / "benchmarks" / "report.py").is_file():
        raise FileNotFoundError(
            "fastvae bench needs a source checkout (benchmarks/ beside fastvae/); this fastvae "
            f"is installed from {checkout}. Clone the repository and pip install -e . there."
        )
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    from benchmarks import report

    return report.main(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    from fastvae.data import DataNotFoundError
    from fastvae.runlock import RunLockedError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # bench hands all its arguments (--help included) to benchmarks.report's own parser.
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "bench":
            return _bench(rest)
        handler = getattr(args, "handler", None)  # the study commands (fastvae.cli_studies)
        if handler is not None:
            return handler(args, argv)
        return {"train": _train, "sample": _sample}[args.command](args, argv)
    except (RunLockedError, RunExistsError, NonFiniteLossError) as exc:
        print(f"fastvae: error: {exc}", file=sys.stderr)
        return 1
    except DataNotFoundError as exc:
        print(f"fastvae: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"fastvae: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"fastvae: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("fastvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
