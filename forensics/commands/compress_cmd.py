"""`compress-bundles DIR --older-than 90d [--dry-run]`: recompress old bundles losslessly with zstd."""

from __future__ import annotations

import argparse

NAME = "compress-bundles"
HELP = "recompress the activations of bundles older than a given age (Arrow zstd, lossless, crash-safe)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="directory holding bundle directories (one level deep)")
    p.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="only bundles whose manifest created_at is older than this, e.g. 90d, 12h, 2w",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be compressed; change nothing")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from forensics.commands.common import print_json
    from forensics.ops.maintenance import compress_bundles, parse_age

    report = compress_bundles(args.directory, parse_age(args.older_than), dry_run=args.dry_run)
    if args.format == "json":
        print_json(
            {
                "dry_run": report.dry_run,
                "bundles": [asdict(r) for r in report.results],
                "total": {"before": report.before, "after": report.after, "errors": len(report.errors)},
            }
        )
    else:
        print(report.format_table())
    return 1 if report.errors else 0
