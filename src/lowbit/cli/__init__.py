"""The ``lowbit`` command line: a thin layer over the Python API.

Problems with the user's input end with one line on stderr and exit status 2. Ctrl-C exits with 130 and
SIGTERM with 143; like every write in lowbit, neither leaves a partial output file behind, and the message
names the output files that had been completely written before the interrupt.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from lowbit import __version__
from lowbit.errors import LowbitError
from lowbit.io.atomic import Terminated, recording_writes, sigterm_as_exception


def build_parser() -> argparse.ArgumentParser:
    from lowbit.cli import codec, demo, deploy, files, finetune, quantize, synth, train

    parser = argparse.ArgumentParser(prog="lowbit", description="Post-training quantization for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    quantize.add_parsers(sub)
    demo.add_parsers(sub)
    synth.add_parsers(sub)
    files.add_parsers(sub)
    deploy.add_parsers(sub)
    train.add_parsers(sub)
    finetune.add_parsers(sub)
    codec.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    warnings.simplefilter("once")
    if args.command is None:
        args = parser.parse_args(["demo", *(argv or [])])
    with recording_writes() as written, sigterm_as_exception():
        try:
            return args.func(args)
        except LowbitError as exc:
            print(f"lowbit: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"lowbit: {interrupted('interrupted', written)}", file=sys.stderr)
            return 130
        except Terminated as exc:
            print(f"lowbit: {interrupted('terminated', written)}", file=sys.stderr)
            return exc.code


def interrupted(what: str, written: list[Path]) -> str:
    """``what``, and which output files were already complete, so that the message is true either way."""
    done = list(dict.fromkeys(str(p) for p in written if p.exists()))
    if not done:
        return f"{what}; no output file was written"
    return f"{what} after writing {', '.join(done)}; no other output was written"


if __name__ == "__main__":
    sys.exit(main())
