"""CLI subcommands, one module each; ``register_all`` wires them into the parser."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register_all"]


def register_all(sub: Any) -> None:
    from forensics.commands import (
        analyze_cmd,
        baseline_cmd,
        batch_cmd,
        compress_cmd,
        demo_cmd,
        eval_cmd,
        export_fix_cmd,
        import_trace_cmd,
        info_cmd,
        migrate_cmd,
        model_cache_cmd,
        record_cmd,
        replay_cmd,
        selftest_cmd,
        serve_cmd,
        stats_cmd,
        tokens_cmd,
        triage_cmd,
        validate_cmd,
    )

    modules = (
        record_cmd,
        replay_cmd,
        analyze_cmd,
        triage_cmd,
        batch_cmd,
        validate_cmd,
        export_fix_cmd,
        baseline_cmd,
        demo_cmd,
        eval_cmd,
        serve_cmd,
        tokens_cmd,
        info_cmd,
        stats_cmd,
        migrate_cmd,
        selftest_cmd,
        compress_cmd,
        model_cache_cmd,
        import_trace_cmd,
    )
    from forensics.commands.examples import epilog

    for module in modules:
        parser: argparse.ArgumentParser = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            epilog=epilog(module.NAME),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # keeps the example's line as written
        module.configure(parser)
        parser.set_defaults(run=module.run)
