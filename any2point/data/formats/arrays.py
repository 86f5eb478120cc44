"""NumPy (.npy, .npz) and HDF5 arrays holding one cloud.

Shapes and dtypes are read from the headers (the .npy header, each .npz member's header,
the HDF5 dataset's metadata and chunk shape) and checked before any data is read or
decompressed. Nothing is unpickled (``allow_pickle=False``)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ...errors import DataError
from .limits import MAX_ARCHIVE_MEMBERS, NPY_HEADER_BYTES, check_decoded
from .meshes import mesh_from_faces
from .records import PointFile, check_declared, check_dtype, check_points, check_width, cloud_columns

__all__ = ["read_npy", "read_npz", "read_h5"]

_NPZ_KEYS = ("points", "xyz", "pos", "data", "vertices")


def _npy_header(stream, what: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = reader(stream, max_header_size=NPY_HEADER_BYTES)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise DataError(f"{what} is not a readable .npy array ({exc})", str(path)) from None
    return shape, dtype


def _cloud(path: Path, array: np.ndarray, what: str) -> PointFile:
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[0]
    extra = {"extra_columns": array[:, 3:]} if array.shape[1] > 3 else {}
    return PointFile(check_points(path, array[:, :3]), fields=extra)


def read_npy(path: Path, limit: int) -> PointFile:
    with open(path, "rb") as stream:
        shape, dtype = _npy_header(stream, "the file", path)
    cloud_columns(path, "the array", shape, dtype, limit)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read this .npy file ({exc}); expected an array of shape (num_points, 3)",
                        str(path)) from None
    return _cloud(path, array, "the array")


def _npz_headers(path: Path, limit: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".npy")]
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise DataError(f"the archive holds {len(members):,} .npy arrays; expected at most "
                                f"{MAX_ARCHIVE_MEMBERS}", str(path))
            for member in members:
                with archive.open(member) as stream:  # decompresses only the header bytes
                    headers[member.filename[:-4]] = _npy_header(stream, f"member {member.filename!r}", path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError) as exc:
        raise DataError(f"not a readable .npz archive ({type(exc).__name__}: {exc})", str(path)) from None
    if not headers:
        raise DataError("the archive holds no .npy arrays; expected an array of shape (num_points, 3)", str(path))
    return headers


def read_npz(path: Path, limit: int):
    headers = _npz_headers(path, limit)
    keys = list(headers)
    if "vertices" in keys and "faces" in keys:
        shape, dtype = headers["faces"]
        if len(shape) != 2 or shape[1] < 3 or np.dtype(dtype).kind not in "iu":
            raise DataError(f"'faces' has shape {shape} and dtype {dtype}; expected integer (F, 3+)", str(path))
        check_declared(path, "'faces'", shape[0], limit)
        check_width(path, "'faces'", shape[0], shape[1], limit)
        vshape, vdtype = headers["vertices"]
        check_dtype(path, "'vertices'", vdtype)
        if len(vshape) != 2 or vshape[1] != 3:
            raise DataError(f"'vertices' has shape {vshape}; expected (num_vertices, 3)", str(path))
        check_declared(path, "'vertices'", vshape[0], limit)
        with np.load(path, allow_pickle=False) as archive:
            return mesh_from_faces(path, archive["vertices"], archive["faces"][:, :3], limit)
    key = keys[0] if len(keys) == 1 else next((k for k in _NPZ_KEYS if k in keys), None)
    if key is None:
        raise DataError(f"holds arrays {keys}; expected one array, or one named one of {list(_NPZ_KEYS)}",
                        str(path))
    rows = cloud_columns(path, f"array {key!r}", *headers[key], limit)
    named = {}
    for extra in ("normals", "colors"):
        if extra in headers and extra != key:
            shape, dtype = headers[extra]
            check_dtype(path, f"array {extra!r}", dtype)
            if tuple(shape) not in ((rows, 3), (rows, 4)):
                raise DataError(f"array {extra!r} has shape {shape}; expected ({rows}, 3) to match {key!r}", str(path))
            named[extra] = extra
    try:
        with np.load(path, allow_pickle=False) as archive:
            cloud = _cloud(path, archive[key], f"array {key!r}")
            extras = {name: np.asarray(archive[name]) for name in named}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read array {key!r} ({type(exc).__name__}: {exc})", str(path)) from None
    return PointFile(cloud.points, extras.get("normals"), extras.get("colors"), cloud.fields)


def read_h5(path: Path, limit: int) -> PointFile:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            key = "data" if "data" in names else names[0] if len(names) == 1 else None
            if key is None:
                raise DataError(f"holds datasets {names}; expected a dataset named 'data' or exactly one dataset",
                                str(path))
            dataset = f[key]
            if dataset.ndim == 3 and dataset.shape[0] > 1:
                raise DataError(f"dataset {key!r} holds {dataset.shape[0]} clouds; a single file to predict on must "
                                "hold one (use a dataset config such as modelnet40 for HDF5 collections)", str(path))
            cloud_columns(path, f"dataset {key!r}", dataset.shape or (), dataset.dtype, limit)
            if dataset.chunks:  # HDF5 decompresses whole chunks, which may be far larger than the dataset
                check_decoded(path, f"a chunk of shape {dataset.chunks} of dataset {key!r}",
                              int(np.prod(dataset.chunks)) * dataset.dtype.itemsize, limit)
            array = dataset[..., :3]  # xyz only: the other columns are never read
    except OSError as exc:
        raise DataError(f"not a readable HDF5 file (truncated or corrupt?): {exc}", str(path)) from None
    return _cloud(path, array, f"dataset {key!r}")
