"""`model-forensics` command line: thin over the library; errors become one line and an exit code.

    model-forensics record --model smollm2-135m --prompt "The capital of Australia is" \
        --expected " Canberra" --out bundles/australia
    model-forensics replay bundles/australia --intervene '[{"module": "model.layers.10", "kind": "zero"}]'

Exit status: 0 done; 1 done, with a finding the command exists to report (``batch``: a bundle failed
and has its ``.error.json``; ``triage``: a bundle has an ERROR row; ``replay``: the replay is not
faithful; ``validate-fix``: the fix no longer fixes); 2 an error, as one line on stderr (a bad bundle,
config or model, a full disk naming the file); 3 a bug of model-forensics (one line; ``--debug`` shows
the traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

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
        with _audited(args):
            return int(args.run(args))
    except ForensicsError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command was told to read or write: one line naming it
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: one line, the traceback with --debug
        if args.debug:
            raise
        print(
            f"error: internal error in {args.command} ({type(exc).__name__}: {str(exc)[:200]}); this is a bug "
            "of model-forensics, rerun with --debug for the traceback",
            file=sys.stderr,
        )
        return 3


# Commands that read a bundle or run an analysis, and the argument naming what they read.
AUDITED = {
    "record": "out",
    "replay": "bundle",
    "analyze": "bundle",
    "triage": "directory",
    "batch": "directory",
    "validate-fix": "report",
    "export-fix": "report",
    "build-baseline": "directory",
    "compress-bundles": "directory",
}


@contextmanager
def _audited(args: argparse.Namespace) -> Iterator[None]:
    """One audit line per audited command (``MODEL_FORENSICS_AUDIT_LOG`` or config ``audit_log``): the
    OS user as principal, role ``cli``, the command, the bundle or directory, ok/error."""
    if args.command not in AUDITED:
        yield
        return
    from forensics.ops.audit import AuditLog
    from forensics.ops.env import config_from_env, env_value

    path = env_value(os.environ, "audit_log")
    if path is None:
        try:
            path = config_from_env(getattr(args, "config", None), os.environ).audit_log
        except ForensicsError:
            path = None  # the command itself reports the bad config
    if path is not None:
        _check_audit_log(path)  # before the action: an action that cannot be audited does not run
    target = getattr(args, AUDITED[args.command], None)
    if isinstance(target, list):  # `analyze B1 B2 …`: a family
        target = ", ".join(map(str, target)) or getattr(args, "family", None)
    with AuditLog.from_path(path).action(getpass.getuser(), "cli", args.command, str(target) if target else None):
        yield


def _check_audit_log(path: str) -> None:
    from forensics.errors import ConfigError
    from forensics.ops.env import env_var

    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as exc:
        raise ConfigError(
            f"audit log {path}: cannot append ({exc.strerror}); fix {env_var('audit_log')} / "
            "audit_log or the directory's permissions"
        ) from None


def _quiet_libraries(debug: bool) -> None:
    if debug:
        return
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
