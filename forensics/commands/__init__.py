"""CLI subcommands, one module each; ``register_all`` wires them into the parser."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register_all"]


def register_all(sub: Any) -> None:
    from forensics.commands import record_cmd, replay_cmd

    for module in (record_cmd, replay_cmd):
        parser: argparse.ArgumentParser = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.configure(parser)
        parser.set_defaults(run=module.run)
