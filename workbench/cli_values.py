"""Command-line values: ``KEY=VALUE`` pairs as YAML 1.2 reads them, counts, and errors as one
``workbench:`` line (what every ``workbench`` subcommand's parser and ``main`` share)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import yaml

from workbench.options import MethodOptions


def overrides(pairs: list[str], flag: str = "--set") -> dict:
    """``--set KEY=VALUE`` pairs as RunConfig fields; ``method_options.KEY=VALUE`` sets one method option
    (``MethodOptions.gathered``). (``--trl`` pairs, GRPOConfig fields, are read the same way.)"""
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} learning_rate=1e-3")
        key, raw = pair.split("=", 1)
        values[key] = scalar(raw)
    return MethodOptions.gathered(values)


def scalar(raw: str):
    """A ``--set`` value as YAML 1.2 reads it: ``1e-3`` a number, ``010`` ten, ``{a: 1}`` a mapping."""
    from workbench import yaml12

    try:
        return yaml12.safe_load(raw)
    except yaml.YAMLError as error:
        raise UsageError(f"--set value {raw!r} is not valid YAML ({' '.join(str(error).split())})") from None


class UsageError(Exception):
    """A command-line value that is not allowed; printed as one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors as one ``workbench:`` line (``--help`` shows the usage)."""

    def error(self, message):
        command = self.prog.removeprefix("workbench").strip()  # "train", or "" for the top level
        help_command = f"workbench {command} --help" if command else "workbench --help"
        self.exit(2, f"workbench: {command or 'usage'}: {message} ({help_command})\n")


def integer_at_least(low: int, allowed: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``; ``allowed`` says what it is in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: {allowed}")
        return value

    return parse


at_least_one = integer_at_least(1, "an integer >= 1")


def one_line(error: BaseException) -> str:
    """An error as one line: the message of the errors the workbench raises for bad input, the
    type and message (and --debug) for anything else."""
    from workbench.config import ConfigError
    from workbench.integrations import MissingExtraError
    from workbench.models.policy import PolicyLoadError
    from workbench.run.store import CheckpointError, RunLockedError
    from workbench.tasks import DatasetError, RewardFunctionError

    message = " ".join(str(error).split())
    if isinstance(
        error,
        (
            ConfigError,
            PolicyLoadError,
            CheckpointError,
            RunLockedError,
            RewardFunctionError,
            DatasetError,
            UsageError,
            MissingExtraError,
        ),
    ):
        return message
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror or type(error).__name__}: {error.filename}"
    return f"{type(error).__name__}: {message} (run with --debug for the traceback)"
