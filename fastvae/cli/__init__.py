"""The ``fastvae`` command line (also ``python -m fastvae``).

    fastvae train [--epochs 10] [--batch-size 128] ... [--out runs/DATASET] [--overwrite]
    fastvae train --resume runs/mnist [--epochs 20]
    fastvae sample runs/mnist [--n 64] [--seed 0]        (writes runs/mnist/samples.png)
    fastvae evaluate runs/mnist [--k 5000] [--fid mnist-classifier]
    fastvae experiment {latent-sweep,beta-sweep,reconstructions,...} [--epochs N] [--quick]
    fastvae train-classifier
    fastvae bench [--smoke] [...]     (python -m benchmarks.report, from a source checkout)

``train`` has one flag per :class:`fastvae.train.TrainConfig` field (:mod:`fastvae.cli.train`).
Every command that takes a checkpoint takes its run folder too. Errors are one line on stderr,
naming the flag (exit status 2 for bad arguments or data, 1 for a refused or failed training,
130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from fastvae.cli.args import Parser, add, device, positive_int
from fastvae.cli.studies import add_commands as add_study_commands
from fastvae.cli.train import add_train_flags, config_from_args, flag


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (``bench`` passes its arguments on unparsed)."""
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
    )
    add(t, "--resume", metavar="RUN", default=None,
                   help="continue the run in folder RUN (or of its checkpoint.pt) with its "
                   "saved configuration (only --epochs, --device and --backend may be given "
                   "too; --epochs below the epochs trained is refused)")
    add(t, "--overwrite", action="store_true",
                   help="replace the run that --out holds (its files are deleted)")
    add_train_flags(t)
    s = sub.add_parser("sample",
                       help="decode samples z ~ N(0, I) of a checkpoint into a titled PNG grid")
    add(s, "checkpoint", metavar="RUN",
                   help="a run folder of `fastvae train`, or its checkpoint.pt")
    add(s, "--n", type=positive_int, default=64, help="number of samples")
    add(s, "--nrow", type=positive_int, default=8, help="images per grid row")
    add(s, "--out", default=None, help="PNG file to write (default: RUN/samples.png)")
    add(s, "--seed", type=int, default=0, help="seed of the latent draw")
    add(s, "--device", type=device, default="cpu", help="device to decode on")
    add(s, "--decoder-sample", action="store_true",
                   help="draw x ~ p(x|z) (Bernoulli pixels, or mean + std * noise for a "
                   "Gaussian decoder) instead of decoding the mean")
    sub.add_parser("bench", add_help=False,
                   help="run the benchmarks (python -m benchmarks.report; a source checkout only)")
    add_study_commands(sub)
    return parser


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    from fastvae.train.loop import train

    train(config_from_args(args), resume=args.resume is not None, overwrite=args.overwrite)
    return 0


def _sample(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from fastvae.train.checkpoint import load_checkpoint, run_folder
    from fastvae.train.config import resolve_device
    from fastvae.train.figures import save_samples

    dev = resolve_device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, map_location=dev)
    out = Path(args.out) if args.out else run_folder(args.checkpoint) / "samples.png"
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    what = "x ~ p(x|z)" if args.decoder_sample else "decoder means"
    title = (f"{type(model).__name__} {model.likelihood}, latent {model.latent_dim}, epoch "
             f"{ckpt['epoch']}: {args.n} samples ({what}), z ~ N(0, I), seed {args.seed}")
    path = save_samples(model, out, n=args.n, nrow=args.nrow, generator=gen,
                        decoder_sample=args.decoder_sample, title=title)
    print(f"wrote {args.n} samples to {path}")
    return 0


def _bench(argv: list[str]) -> int:
    """``python -m benchmarks.report ARGV`` in a child process that finds benchmarks/ beside
    this fastvae package (a source checkout; benchmarks/ is not installed)."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / "benchmarks" / "report.py").is_file():
        raise FileNotFoundError(
            "fastvae bench needs a source checkout (benchmarks/ beside fastvae/); this fastvae "
            f"is installed from {checkout}. Clone the repository and run it there.")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}
    return subprocess.call([sys.executable, "-m", "benchmarks.report", *argv], env=env)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # all its arguments (--help too) go to benchmarks.report
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        handler = getattr(args, "handler", None) or {"train": _train, "sample": _sample}[
            args.command]
        return handler(args, argv)
    except Exception as exc:  # noqa: BLE001 -- one line for the errors users meet; others raise
        status = _exit_status(exc)
        if status is None:
            raise
        print(f"fastvae: error: {_message(exc)}", file=sys.stderr)
        return status
    except KeyboardInterrupt as exc:
        print(f"fastvae: {exc}" if str(exc) else "fastvae: interrupted", file=sys.stderr)
        return 130


def _exit_status(exc: Exception) -> int | None:
    """1 for a refused or failed training, 2 for bad arguments, data or checkpoints, None for
    anything else (a bug: its traceback is shown)."""
    from fastvae.train.lock import RunLockedError
    from fastvae.train.loop import NonFiniteLossError
    from fastvae.train.runfolder import RunExistsError

    if isinstance(exc, (RunLockedError, RunExistsError, NonFiniteLossError)):
        return 1
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return 2
    return None


def _message(exc: Exception) -> str:
    """The message, with a ConfigError's fields named as the flags the user typed."""
    from fastvae.train.config import ConfigError

    return exc.render(flag) if isinstance(exc, ConfigError) else str(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
