"""What every ``fastvae`` command shares in parsing its arguments: a parser whose errors are one
line, flags whose help states each default once (:func:`add`), and argument types that check
values and name the flag in their error (argparse prefixes ``argument --FLAG:``)."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``PROG: error: MESSAGE (see PROG
    --help)``, exit status 2) instead of the usage block and the message. Sub-command parsers
    made by ``add_subparsers`` inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def add(parser: argparse.ArgumentParser, *flags: str, shown=None, **kwargs) -> None:
    """``parser.add_argument(*flags, **kwargs)`` with `` (default: X)`` after the help text,
    X the default (``shown`` when given: the value a flag left out stands for), once: not when
    the help already says its default, and not for None, False or ``argparse.SUPPRESS`` (a
    flag that is off, or a value that is absent)."""
    default = shown if shown is not None else kwargs.get("default")
    text = kwargs.get("help") or ""
    absent = default is None or default is False or default is argparse.SUPPRESS
    if text and "default" not in text.lower() and not absent:
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        kwargs["help"] = f"{text} (default: {shown})"
    parser.add_argument(*flags, **kwargs)


def integer(text: str) -> int:
    """An int (whether it is allowed is the receiver's to say)."""
    return _int(text)


def number(text: str) -> float:
    """A float."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An int >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """An int >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def optional_int(text: str) -> int | None:
    """An int >= 1, or None for "none" / "all" (the --limit* flags)."""
    if text.lower() in ("none", "all"):
        return None
    value = _int(text, "an integer >= 1 or 'all'")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'all', got {text}")
    return value


def logvar_floor(text: str) -> float | str | None:
    """A number, None for "none", or "auto" (the --logvar-floor flag)."""
    low = text.lower()
    if low in ("none", "auto"):
        return None if low == "none" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number, 'auto' or 'none', got {text!r}") from None


def device(text: str) -> str:
    """A device name :func:`fastvae.train.config.resolve_device` accepts here ("auto", "cpu",
    "cuda", "cuda:1", ...; CUDA only where it is available)."""
    from fastvae.train.config import resolve_device

    try:
        resolve_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _int(text: str, what: str = "an integer") -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None

