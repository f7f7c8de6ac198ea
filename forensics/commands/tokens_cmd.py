"""`tokens add|list|revoke`: manage the API tokens of the server (stored hashed)."""

from __future__ import annotations

import argparse
import os
import time

NAME = "tokens"
HELP = "manage API tokens (add prints the token once; only its hash is stored)"
TOKENS_FILE_KEY = "authentication.tokens_file"  # the config key; its variable (ENV_VARS) sets it here too


def default_tokens_file() -> str:
    """The tokens file of ``MODEL_FORENSICS_TOKENS_FILE``, else ``DEFAULT_TOKENS_FILE`` (where ``serve`` looks)."""
    from forensics.ops.auth import DEFAULT_TOKENS_FILE
    from forensics.ops.env import env_value

    from_env: str | None = env_value(os.environ, TOKENS_FILE_KEY)
    return from_env or os.path.expanduser(DEFAULT_TOKENS_FILE)


def configure(p: argparse.ArgumentParser) -> None:
    from forensics.ops.auth import DEFAULT_TOKENS_FILE
    from forensics.ops.env import env_var
    from forensics.vocab import ACCESS_ROLES

    p.add_argument(
        "action",
        choices=("add", "list", "revoke"),
        help="add: create a token and print it once; list: names, roles, dates; revoke: delete by name",
    )
    p.add_argument("name", nargs="?", help="token name (add, revoke)")
    p.add_argument(
        "--role",
        choices=tuple(ACCESS_ROLES),
        default="viewer",
        help="role of a new token: viewer (results), analyst (+ bundles, analyses), admin (all); default viewer",
    )
    p.add_argument(
        "--tokens-file",
        default=None,
        help=f"default: ${env_var(TOKENS_FILE_KEY)} or {DEFAULT_TOKENS_FILE}",
    )


def run(args: argparse.Namespace) -> int:
    from forensics.errors import ConfigError
    from forensics.ops.auth import TokenStore

    store = TokenStore(args.tokens_file or default_tokens_file())
    if args.action == "list":
        for t in store.list():
            print(
                f"{t['name']:<24} {t['role']:<8} created {time.strftime('%Y-%m-%d %H:%M', time.gmtime(t['created_at']))}"
            )
        return 0
    if not args.name:
        raise ConfigError(f"tokens {args.action} needs a NAME")
    if args.action == "add":
        token = store.add(args.name, args.role)
        print(token)
        print(f"# token {args.name!r} ({args.role}) added to {store.path}; it is shown only now", flush=True)
        return 0
    if not store.revoke(args.name):
        print(f"no token named {args.name!r}")
        return 1
    print(f"revoked {args.name!r}")
    return 0
