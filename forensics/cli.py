"""`model-forensics` command line: thin over the library; errors become one line and an exit code.

    model-forensics record --model smollm2-135m --prompt "The capital of Australia is" \
        --expected " Canberra" --out bundles/australia
    model-forensics replay bundles/australia --intervene '[{"module": "model.layers.10", "kind": "zero"}]'
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from forensics.errors import ForensicsError

__all__ = ["build_parser", "main"]

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {}


def build_parser() -> argparse.ArgumentParser:
    from forensics.commands import register_all

    parser = argparse.ArgumentParser(prog="model-forensics", description="Root-cause analysis of model failures.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    _quiet_libraries(args.debug)
    try:
        return int(args.run(args))
    except ForensicsError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_libraries(debug: bool) -> None:
    if debug:
        return
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a dependency; this only guards odd installs
        pass


if __name__ == "__main__":
    raise SystemExit(main())
