"""Entry point of the ``liverseg`` command.

Each sub-command lives in its own module exposing ``add_parser(subparsers)``; the parser it adds sets
``func`` to a callable ``run(args) -> int``. Errors meant for the user (:class:`~LiverSegLib.errors.InputError`)
become one line on stderr and exit code 2; anything else is an internal error (exit code 1), printed as one
line unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from LiverSegLib.errors import InputError, RemoteError

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_INTERNAL", "EXIT_USAGE"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2

_COMMAND_MODULES = ("segment_cmd", "evaluate_cmd", "models_cmd", "train_cmd", "demo_cmd")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (exit code 2) instead of printing the usage block."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"liverseg: error: {message} (see 'liverseg {self.prog.split()[-1]} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available sub-command."""
    parser = _Parser(prog="liverseg", description="Liver and liver-lesion segmentation in CT.")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"LiverSegLib.cli.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not present is simply not offered
            if exc.name == f"LiverSegLib.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or EXIT_OK)
    except InputError as exc:
        print(f"liverseg: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteError as exc:  # a server down or failing: one line, not a traceback
        print(f"liverseg: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt as exc:
        print(f"liverseg: {getattr(exc, 'liverseg_message', 'interrupted; no output was written')}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence turns anything into one line
        if args.debug:
            traceback.print_exc()
        print(f"liverseg: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for details)",
              file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
