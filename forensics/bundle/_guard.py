"""Turn every failure met while reading a bundle into one ``BundleError``.

A ``Site`` names the bundle; ``site.guard(file, action)`` wraps a block so that whatever goes
wrong inside (OSError, ArrowInvalid, JSON or Unicode errors, tar errors, ...) surfaces as
``BundleError("bundle <name>: <file>: <action>: <what happened>")``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from forensics.errors import BundleError

__all__ = ["Site", "short_hex"]

_MAX_DETAIL = 300


@dataclass(frozen=True)
class Site:
    """Where a problem happened: the bundle's name (its directory or archive stem)."""

    bundle: str

    def error(self, file: str, problem: str) -> BundleError:
        """Build the one error shape: ``bundle <name>: <file>: <problem>``."""
        return BundleError(f"bundle {self.bundle}: {file}: {problem}")

    @contextmanager
    def guard(
        self,
        file: str,
        action: str,
        catch: tuple[type[BaseException], ...] = (Exception,),
    ) -> Iterator[None]:
        """Re-raise anything in ``catch`` (except ``BundleError``) as a ``BundleError``.

        Broad on purpose: a hostile bundle can provoke errors of many types deep inside
        pyarrow, json or tarfile, and callers must only ever see ``BundleError``.
        """
        try:
            yield
        except BundleError:
            raise
        except catch as exc:
            raise self.error(file, f"{action}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def short_hex(digest: str) -> str:
    """First 12 hex digits, enough to tell two digests apart in a message."""
    return digest[:12] + "…" if len(digest) > 12 else digest
