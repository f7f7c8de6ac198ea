"""Symbols and code lengths for CF: fixed-step quantisation, byte planes, compressors, and the code
length of an adaptive arithmetic coder.

    >>> x = np.random.default_rng(0).normal(size=(12, 64))
    >>> r = compression_ratios(x, step=1 / 16, methods=["zlib", "arithmetic"], window=256)
    >>> r["arithmetic"] > compression_ratios(10 * x, 1 / 16, ["arithmetic"], 256)["arithmetic"]
    True

**Symbols.** Values are divided by a fixed step, rounded, clipped to int16 and zigzag-mapped
(0, -1, 1, -2, … -> 0, 1, 2, 3, …) so small magnitudes of either sign are small unsigned numbers.
Each 16-bit symbol is split into a high and a low byte *plane* (the "shuffle" filter of Blosc and
HDF5): for well-scaled activations the high plane is almost all zeros, and a change of magnitude
shows at once as new high bytes and a wider spread of low bytes. int16 rather than int8 so that a
x10 activation is not clipped back into a few saturated symbols that compress *better*.

**Arithmetic coding.** An arithmetic coder driven by a probability model spends, for the whole
sequence, at most 2 bits more than the model's ideal code length sum(-log2 p(s_i | s_<i)). So the
size it would produce is computed without running a coder symbol by symbol. The model is adaptive
order-0 with Laplace-smoothed counts, one count table per byte plane:
p(s_i) = (count of s_i in s_<i + 1) / (i + 256). Its product over a sequence does not depend on the
order of the symbols: with final counts c_s over an alphabet of K symbols and length n,
prod p = (K-1)! prod_s c_s! / (n+K-1)!, so the code length is a sum of log-factorials of counts --
one ``bincount`` for all windows at once, no per-symbol loop.
"""

from __future__ import annotations

import gzip
import lzma
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from forensics.errors import BundleError
from forensics.vocab import COMPRESSION_METHODS, CompressionMethod

__all__ = [
    "ALPHABET",
    "INT16_MAX",
    "METHODS",
    "adaptive_code_bits",
    "code_lengths",
    "compression_ratios",
    "quantise_planes",
    "zigzag_symbols",
]

ALPHABET = 256  # byte symbols
INT16_MAX = 32767
COMPRESSION_LEVEL = 9
# Raw LZMA2 with the smallest dictionary: no .xz container (60+ bytes that would swamp a 512-byte
# window) and ~25x faster to set up than the default preset.
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 4096}]

_COMPRESSORS: dict[CompressionMethod, Callable[[bytes], bytes]] = {
    "zlib": lambda b: zlib.compress(b, COMPRESSION_LEVEL),
    "gzip": lambda b: gzip.compress(b, COMPRESSION_LEVEL, mtime=0),  # mtime=0: deterministic bytes
    "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS),
}
METHODS = COMPRESSION_METHODS  # the byte compressors above plus "arithmetic" (a code length, no bytes)

U8 = npt.NDArray[np.uint8]


def zigzag_symbols(values: npt.ArrayLike, step: float) -> npt.NDArray[np.uint16]:
    """``values`` (any shape) / ``step``, rounded, clipped to ±32767, zigzag-mapped; flattened.

    NaN counts as 0 and ±inf as the clip limits, so a broken activation still yields symbols (and,
    being unlike benign runs, a large |z|)."""
    flat = np.asarray(values, dtype=np.float64).ravel() / step
    flat = np.nan_to_num(flat, nan=0.0, posinf=INT16_MAX, neginf=-INT16_MAX)
    q = np.clip(np.rint(flat), -INT16_MAX, INT16_MAX).astype(np.int32)
    return ((q << 1) ^ (q >> 31)).astype(np.uint16)


def quantise_planes(values: npt.ArrayLike, step: float, window: int) -> U8:
    """Symbols of ``values`` in windows of ``window`` values, as byte planes: [W, 2 (high, low), window].

    A short tail is dropped (positions vary between bundles; a partial window would compress
    differently for that reason alone) unless it is all there is."""
    sym = zigzag_symbols(values, step)
    n = sym.size // window
    rows = sym[None, :] if n == 0 else sym[: n * window].reshape(n, window)
    planes = np.stack([(rows >> 8).astype(np.uint8), (rows & 0xFF).astype(np.uint8)], axis=1)
    return planes


def _log2_factorials(upto: int) -> npt.NDArray[np.float64]:
    """log2(k!) for k = 0..upto."""
    out = np.zeros(upto + 1, dtype=np.float64)
    np.cumsum(np.log2(np.arange(1, upto + 1, dtype=np.float64)), out=out[1:])
    return out


def adaptive_code_bits(rows: U8) -> npt.NDArray[np.float64]:
    """Ideal code length in bits of each row of ``rows`` [R, n] (uint8, one adaptive model per row):
    sum over the row of -log2((count of s_i so far + 1) / (i + 256)), via the closed form above."""
    r, n = rows.shape
    keys = np.arange(r, dtype=np.int64)[:, None] * ALPHABET + rows.astype(np.int64)
    counts = np.bincount(keys.ravel(), minlength=r * ALPHABET).reshape(r, ALPHABET)
    lf = _log2_factorials(n + ALPHABET - 1)
    bits = lf[n + ALPHABET - 1] - lf[ALPHABET - 1] - lf[counts].sum(axis=1)
    return bits  # type: ignore[no-any-return]


def code_lengths(rows: U8, method: CompressionMethod, *, planes: int = 1) -> npt.NDArray[np.float64]:
    """Compressed size in bytes of each row of ``rows`` [W, planes * n] (uint8).

    For ``arithmetic`` each of the ``planes`` consecutive segments of a row has its own count table
    (one coder, the plane as context); the size is ceil((bits + 2) / 8), the coder's bound."""
    if method == "arithmetic":
        w = rows.shape[0]
        bits = adaptive_code_bits(rows.reshape(w * planes, -1)).reshape(w, planes).sum(axis=1)
        return np.ceil((bits + 2.0) / 8.0)  # type: ignore[no-any-return]
    compress = _COMPRESSORS[method]
    return np.array([len(compress(row.tobytes())) for row in rows], dtype=np.float64)


def compression_ratios(
    values: npt.ArrayLike, step: float, methods: Sequence[CompressionMethod], window: int
) -> dict[str, float]:
    """Mean over windows of (raw bytes / compressed bytes) per method; raw = 2 bytes per value (int16).

    Deterministic: the same values, step and window always give the same ratios."""
    planes = quantise_planes(values, step, window)
    if planes.shape[2] == 0:
        raise BundleError("activation has no values: no compression ratio")
    rows = planes.reshape(planes.shape[0], -1)
    raw = float(rows.shape[1])
    return {m: float(np.mean(raw / code_lengths(rows, m, planes=2))) for m in methods}
