"""Archive members of any type but regular file and directory are refused, including the ones ``tarfile``
itself counts as regular (``isreg()`` is true for GNU sparse and contiguous files)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from forensics.bundle import load_bundle
from forensics.errors import BundleError
from tests.test_bundle_corruption import hostile_tar


def add_sparse(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A GNU sparse member (tar type 'S') carrying data."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tarfile_counts_a_sparse_member_as_regular() -> None:
    info = tarfile.TarInfo("evil")
    info.type = tarfile.GNUTYPE_SPARSE
    assert info.isreg()  # why extraction checks the type flag itself


@pytest.mark.parametrize("zstd", [False, True])
def test_gnu_sparse_member_with_data_is_refused(tmp_path: Path, zstd: bool) -> None:
    archive = hostile_tar(tmp_path, lambda t: add_sparse(t, "evil", b"sparse payload" * 64), zstd)
    with pytest.raises(BundleError) as info:
        load_bundle(archive)
    assert str(info.value) == (
        f"bundle evil: {archive.name}: member 'evil' is a GNU sparse file (tar type 'S');"
        " only regular files and directories are allowed"
    )


def test_regular_files_of_the_old_type_flag_still_load(tmp_path: Path) -> None:
    """A pre-POSIX archive marks regular files with a NUL type flag (``AREGTYPE``): still a regular file."""
    from tests.test_bundle_corruption import good_bundle

    bundle = good_bundle(tmp_path, "src")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(bundle.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(bundle)))
            if info.isreg():
                info.type = tarfile.AREGTYPE
            with path.open("rb") as f:
                tar.addfile(info, f)
    (tmp_path / "old.tar").write_bytes(buffer.getvalue())
    assert load_bundle(tmp_path / "old.tar").manifest["bundle_id"]
