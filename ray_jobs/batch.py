"""Batch analysis as a Ray job: shards bundles over an actor pool of warm replayers.

    ray job submit --working-dir . -- python -m ray_jobs.batch \
        --bundles /data/incidents/ --baseline /data/benign/ --output /data/results/batch/

Bundles may live in a local directory or behind any pyarrow.fs URI (s3://, gs://, hdfs://, file://).
Each result is written atomically; a re-run skips bundles already done; a bad bundle is recorded as
failed (``<name>.error.json``) and the batch goes on. Then incidents sharing a ``failure_family`` label
(else an identical failure spec) are analysed as families on the same actors, each into
``family-<name>.json`` (``--no-families``: not). Exit code 1 if any bundle or family failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from forensics.errors import ForensicsError
from forensics.ops.env import config_from_env


def list_bundles(location: str) -> list[str]:
    """Bundle directories/archives directly under a local path or a pyarrow.fs URI."""
    if "://" not in location:
        from forensics.population import list_bundle_paths

        return [str(p) for p in list_bundle_paths(location)]
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(location)
    scheme = location.split("://", 1)[0]
    out = []
    for info in sorted(filesystem.get_file_info(fs.FileSelector(root)), key=lambda i: i.path):
        is_archive = info.path.endswith((".tar", ".tar.zst"))
        manifest = filesystem.get_file_info(f"{info.path}/manifest.json")
        if is_archive or (info.type == fs.FileType.Directory and manifest.type == fs.FileType.File):
            out.append(f"{scheme}://{info.path}")
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.batch", description=__doc__.splitlines()[0])
    p.add_argument("--bundles", required=True, help="directory or pyarrow.fs URI holding incident bundles")
    p.add_argument("--output", required=True, help="local (or mounted) directory for results")
    p.add_argument("--baseline", help="benign bundles directory or build-baseline .json")
    p.add_argument("--model", help="model reference overriding each bundle's")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--actors", type=int, default=2, help="replayer actors (default 2)")
    p.add_argument("--address", help="Ray address (default: the job's cluster, or a new local one)")
    p.add_argument(
        "--no-families",
        dest="families",
        action="store_false",
        help="skip the family analyses (incidents sharing a failure-family label or failure spec)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from forensics.batch import plan_batch, plan_families, run_batch
    from forensics.commands.batch_cmd import print_families
    from forensics.exec.ray_executor import RayExecutor

    args = parse_args(argv)
    try:
        config = config_from_env(args.config, os.environ)
        paths = list_bundles(args.bundles)
        tasks = plan_batch(paths, output_dir=args.output, baseline=args.baseline, model=args.model, config=config)
        families = (
            plan_families(paths, output_dir=args.output, baseline=args.baseline, model=args.model, config=config)
            if args.families
            else []
        )
    except ForensicsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"ray_jobs.batch: {len(tasks)} bundles, {len(families)} families from {args.bundles} -> {args.output}",
        flush=True,
    )
    done, total = [0], len(tasks) + len(families)

    def progress(n: int) -> None:
        done[0] += n
        print(f"  progress: {done[0]}/{total}", flush=True)

    with RayExecutor(address=args.address, num_actors=args.actors) as executor:
        summary = run_batch(tasks, executor=executor, output_dir=args.output, progress=progress, families=families)
    print(
        f"done: {len(summary.done)} analysed, {len(summary.skipped)} skipped, {len(summary.failed)} failed, "
        f"{summary.fixed} fixed, {summary.seconds:.1f}s",
        flush=True,
    )
    for name, error in summary.failed:
        print(f"  FAILED {name}: {error}", flush=True)
    print_families(summary.families)
    return 1 if summary.failed or summary.families_failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
