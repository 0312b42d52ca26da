"""``barnraise``: one entry point, a subcommand per role. Heavy imports (torch, hivemind) happen
inside the handlers so ``barnraise --help`` is instant. Our errors become one line and an exit
code; only bugs print tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from barnraise.coordinator.errors import BarnraiseError

log = logging.getLogger(__name__)


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    if verbose < 2:
        for noisy in ("hivemind", "asyncio", "grpc"):
            logging.getLogger(noisy).setLevel(logging.ERROR if verbose < 1 else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    from barnraise.peer.cli import commands

    parser = argparse.ArgumentParser(prog="barnraise", description="Train one model together on pooled GPUs.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in commands.registry():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except BarnraiseError as e:
        print(f"barnraise {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"barnraise {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
