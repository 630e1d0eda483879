"""``fastvae train``: one flag per :class:`fastvae.train.TrainConfig` field, generated from the
fields (the flag ``--batch-size`` for the field ``batch_size``, its help text the field's
``metadata["help"]``, its choices ``metadata["choices"]``), parsed once.

A flag's value is converted here (an integer, a number, a list); whether it is allowed is
:class:`TrainConfig`'s to say, and its :class:`~fastvae.train.config.ConfigError` names the
flag when the command line prints it (:func:`flag`). Flags left out keep the field's default;
``--resume RUN`` accepts only the flags of ``RESUME_OVERRIDES`` besides
(:func:`fastvae.train.checkpoint.resume_config` says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from fastvae.cli.args import add, integer, logvar_floor, number, optional_int
from fastvae.train.config import TrainConfig

# How the text of a flag becomes a value, by the field's type annotation.
_CONVERT = {int: integer, float: number, str: str, int | None: optional_int,
            str | None: str, float | str | None: logvar_floor}


def flag(field: str) -> str:
    """The command-line flag of a TrainConfig field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field on ``parser``; a flag not given is absent from the
    parsed namespace (``argparse.SUPPRESS``), so the explicit flags are known after one parse."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kind = hints[field.name]
        kwargs = {"default": argparse.SUPPRESS, "help": field.metadata["help"],
                  "shown": field.default}
        if kind is bool:
            add(parser, flag(field.name), action="store_true", **kwargs)
            continue
        seq = next((a for a in (kind, *typing.get_args(kind)) if typing.get_origin(a) is tuple),
                   None)
        if seq is not None:  # tuple[int, ...] and the like: one value or more
            kwargs.update(nargs="+", type=_CONVERT[typing.get_args(seq)[0]])
        else:
            kwargs["type"] = _CONVERT[kind]
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        add(parser, flag(field.name), **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of the parsed ``train`` flags: a new run's, or with ``--resume RUN``
    the run's saved one with ``RESUME_OVERRIDES`` applied.

    Raises:
        fastvae.train.config.ConfigError: a bad value, or a flag ``--resume`` does not take.
    """
    from fastvae.train.checkpoint import resume_config

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    if args.resume is None:
        return TrainConfig(**given)
    return resume_config(args.resume, **given)
