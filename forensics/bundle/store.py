"""The tensor store: ``activations.arrow``, an Arrow IPC file with one record batch per module.

Each batch has one row: ``module``, numpy ``dtype`` name, ``shape`` and the raw little-endian,
C-order bytes in ``data``. Batches are written as they arrive and read one at a time.

    >>> batch = encode_batch(Site("b"), "layer.0", np.zeros((2, 3), np.float32))
    >>> decode_batch(Site("b"), 0, batch, "layer.0")[1].shape
    (2, 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from forensics.bundle._guard import Site
from forensics.bundle.manifest import ACTIVATIONS

__all__ = [
    "ACTIVATION_SCHEMA",
    "ALLOWED_DTYPES",
    "MAX_ELEMENTS",
    "MAX_NDIM",
    "decode_batch",
    "encode_batch",
    "open_reader",
    "write_activations",
]

ACTIVATION_SCHEMA = pa.schema(
    [
        pa.field("module", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("data", pa.large_binary(), nullable=False),
    ]
)
ALLOWED_DTYPES = ("float16", "float32", "float64", "int32", "int64")
MAX_ELEMENTS = 2**34
MAX_NDIM = 64

Array = npt.NDArray[Any]


def encode_batch(site: Site, module: str, array: Array) -> Any:
    """One module's tensor as a one-row record batch; the data buffer is not copied if it can be."""
    arr = np.asarray(array)
    if not isinstance(module, str) or not module:
        raise site.error(ACTIVATIONS, f"module name must be a non-empty string, got {module!r}")
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise site.error(ACTIVATIONS, f"module {module!r}: dtype {arr.dtype} not in allowed {ALLOWED_DTYPES}")
    arr = arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)
    raw = arr.reshape(-1).view(np.uint8)
    offsets = pa.py_buffer(np.array([0, raw.size], dtype="<i8"))
    data = pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(raw)])
    columns = [
        pa.array([module], pa.string()),
        pa.array([arr.dtype.name], pa.string()),
        pa.array([list(arr.shape)], pa.list_(pa.int64())),
        data,
    ]
    return pa.RecordBatch.from_arrays(columns, schema=ACTIVATION_SCHEMA)


def write_activations(
    site: Site,
    path: str | Any,
    items: Iterable[tuple[str, Array]],
    compression: Literal["zstd"] | None,
) -> list[str]:
    """Stream ``items`` into an Arrow IPC file at ``path`` (or into a pyarrow sink); return module names."""
    if compression not in (None, "zstd"):
        raise site.error(ACTIVATIONS, f"compression must be 'zstd' or None, got {compression!r}")
    options = pa.ipc.IpcWriteOptions(compression=compression)
    modules: list[str] = []
    seen: set[str] = set()
    opened = pa.OSFile(path, "wb") if isinstance(path, str) else path
    with opened as sink, pa.ipc.new_file(sink, ACTIVATION_SCHEMA, options=options) as writer:
        for module, array in items:
            if module in seen:
                raise site.error(ACTIVATIONS, f"module {module!r} given twice")
            writer.write_batch(encode_batch(site, module, array))
            seen.add(module)
            modules.append(module)
    return modules


def open_reader(site: Site, source: Any, file: str = ACTIVATIONS) -> Any:
    """Open an Arrow IPC file reader and insist on exactly the bundle@1 schema."""
    with site.guard(file, "not a valid Arrow IPC file"):
        reader = pa.ipc.open_file(source)
        schema = reader.schema
    if not schema.equals(ACTIVATION_SCHEMA):
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        want = ", ".join(f"{f.name}: {f.type}" for f in ACTIVATION_SCHEMA)
        raise site.error(file, f"schema ({found}) is not the bundle schema ({want})")
    return reader


def decode_batch(
    site: Site, index: int, batch: Any, expected: str | None, file: str = ACTIVATIONS
) -> tuple[str, Array]:
    """Validate one batch and view its data as a read-only array (zero-copy when mapped).

    Shape, element bound and byte length are checked before any array is made, so a hostile
    shape cannot make us allocate.
    """
    where = f"batch {index}"
    with site.guard(file, f"{where}: unreadable"):
        batch.validate(full=True)  # offsets/lengths checked before any value is read: no C++ abort
        if batch.num_rows != 1:
            raise site.error(file, f"{where}: has {batch.num_rows} rows, expected exactly 1")
        if any(column.null_count for column in batch.columns):
            raise site.error(file, f"{where}: has null values")
        module = batch.column(0)[0].as_py()
        dtype_name = batch.column(1)[0].as_py()
        shape = _shape(site, file, f"{where} ({module!r})", batch.column(2)[0].values)
        buffer = batch.column(3)[0].as_buffer()
    where = f"{where} ({module!r})"
    if expected is not None and module != expected:
        raise site.error(file, f"{where}: manifest lists module {expected!r} at this position")
    if dtype_name not in ALLOWED_DTYPES:
        raise site.error(file, f"{where}: dtype {dtype_name!r} not in allowed {ALLOWED_DTYPES}")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    return module, _view(site, file, where, buffer, dtype, shape)


def _shape(site: Site, file: str, where: str, values: Any) -> tuple[int, ...]:
    if len(values) > MAX_NDIM:
        raise site.error(file, f"{where}: shape has {len(values)} dims, limit {MAX_NDIM}")
    if values.null_count:
        raise site.error(file, f"{where}: shape has null dims")
    shape = tuple(int(v) for v in values.to_pylist())
    if any(dim < 0 for dim in shape):
        raise site.error(file, f"{where}: shape {list(shape)} has a negative dimension")
    return shape


def _view(site: Site, file: str, where: str, buffer: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise site.error(file, f"{where}: shape {list(shape)} has {count} elements, limit {MAX_ELEMENTS}")
    span = math.prod(max(dim, 1) for dim in shape)  # numpy refuses [0, 2**62, 2**62] although it is empty
    if span > MAX_ELEMENTS:
        raise site.error(
            file,
            f"{where}: shape {list(shape)} spans {span} elements once its zero dimensions"
            f" are ignored, limit {MAX_ELEMENTS}",
        )
    have = 0 if buffer is None else int(buffer.size)
    if count * dtype.itemsize != have:
        raise site.error(
            file,
            f"{where}: shape {list(shape)} x {dtype.name} needs {count * dtype.itemsize} bytes, data has {have}",
        )
    if count == 0:
        array = np.empty(shape, dtype=dtype)
    else:
        array = np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)
    array.flags.writeable = False
    return array
