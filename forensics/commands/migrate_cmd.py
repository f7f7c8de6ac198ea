"""`migrate-config`: rewrite a config file from an older version (values and comments kept).

model-forensics migrate-config --from v1.0 --to v1.1 /etc/model-forensics/config.yaml
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from forensics.errors import ConfigError

NAME = "migrate-config"
HELP = "rewrite a config file from an older version (v1.0 -> v1.1); validates the result"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="config file (default: $MODEL_FORENSICS_CONFIG)")
    p.add_argument("--from", dest="from_version", required=True, help="version of the file, e.g. v1.0")
    p.add_argument("--to", dest="to_version", required=True, help="version to write, e.g. v1.1")
    p.add_argument("--out", help="write here instead of in place ('-' for stdout); in place keeps FILE.v1.0.bak")


def run(args: argparse.Namespace) -> int:
    from forensics.ops.migrate import migrate_file, migrate_text

    path = args.file or os.environ.get("MODEL_FORENSICS_CONFIG", "").strip()
    if not path:
        raise ConfigError("migrate-config: no config file; pass FILE or set MODEL_FORENSICS_CONFIG")
    if args.out == "-":
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot be read ({exc})") from exc
        sys.stdout.write(migrate_text(text, args.from_version, args.to_version, where=f"config file {path}"))
        return 0
    target = migrate_file(path, args.from_version, args.to_version, out=args.out)
    backup = "" if args.out else f" (original kept as {path}.{_v(args.from_version)}.bak)"
    print(f"migrated {path} {_v(args.from_version)} -> {_v(args.to_version)}: {target}{backup}")
    return 0


def _v(version: str) -> str:
    return version if version.startswith("v") else f"v{version}"
