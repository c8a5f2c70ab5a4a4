"""Erasure Studio: erase concepts from Stable Diffusion models.

With no arguments, opens the studio window on the built-in ShapesWorld model.
Subcommands run the same engine headless, for scripts and batch work.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# Each subcommand lives in cli/<name>.py and provides register(subparsers).
SUBCOMMANDS = ("generate", "erase", "export", "eval", "bench", "info", "screenshot")


class StudioArgumentParser(argparse.ArgumentParser):
    """argparse with the studio's error style: one line on stderr, exit status 2.

    argparse's own style prints the whole usage block first; a wrong value should read like every
    other CLI error (``error: <one sentence>``), with a pointer to --help instead of the usage.
    Subparsers inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message.rstrip('.')}; see '{self.prog} --help'.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = StudioArgumentParser(prog="main.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"cli.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        from app.main_window import run_app

        return run_app()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from cli.common import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
