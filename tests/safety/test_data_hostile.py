"""Hostile inputs: for every reader, random files and mutated copies of a genuine file
(bytes flipped, cut, inserted, repeated). ``read_points`` either returns a valid cloud or
raises DataError: never another exception, never a hang (each call is bounded by an alarm
and by hypothesis' deadline)."""
from __future__ import annotations

import functools
import os
import signal
import tempfile
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from any2point.data import SUPPORTED_EXTENSIONS, read_points
from any2point.errors import DataError
from ..data_files import write_sample_file

LIMIT = 5_000  # points per file in these tests: a mutated header may declare anything up to it
ALARM_SECONDS = 20

# 25 derandomised examples per reader and strategy keep the default run short and repeatable;
# ANY2POINT_FUZZ_EXAMPLES=500 ANY2POINT_FUZZ_RANDOM=1 searches deeper with fresh examples.
FUZZ = settings(max_examples=int(os.environ.get("ANY2POINT_FUZZ_EXAMPLES", 25)), deadline=timedelta(seconds=5),
                derandomize=not os.environ.get("ANY2POINT_FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@functools.lru_cache(maxsize=None)
def _seed(ext: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"seed{ext}"
        write_sample_file(ext, path)
        return path.read_bytes()


@contextmanager
def _alarm(seconds: int):
    def hang(*_):
        raise TimeoutError(f"a reader ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _valid_or_data_error(path: Path) -> None:
    with _alarm(ALARM_SECONDS):
        try:
            cloud = read_points(path, num_points=16, mesh_points=64, max_points=LIMIT)
        except DataError as exc:
            assert str(path) in str(exc)  # the error names the file
            return
    assert cloud.shape == (16, 3) and cloud.dtype == np.float32 and np.isfinite(cloud).all()


def _mutate(data, raw: bytes) -> bytes:
    """A few random edits of ``raw``: flip, cut, insert, repeat or overwrite with a big number."""
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        if not out:
            break
        at = data.draw(st.integers(0, len(out) - 1), label="at")
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "repeat", "digits"]), label="kind")
        if kind == "flip":
            out[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            out[at:at] = out[at:at + data.draw(st.integers(1, 64))]
        else:  # a plausible-looking huge count in a text header
            out[at:at] = str(data.draw(st.sampled_from([0, -1, 3, 4999, 5001, 2**31, 2**63, 10**30]))).encode()
    return bytes(out)


EXTENSIONS = sorted(SUPPORTED_EXTENSIONS)


@pytest.mark.parametrize("ext", EXTENSIONS)
def test_the_genuine_seed_file_reads(tmp_path, ext):
    path = tmp_path / f"seed{ext}"
    path.write_bytes(_seed(ext))
    cloud = read_points(path, num_points=16, mesh_points=64, max_points=LIMIT)
    assert cloud.shape == (16, 3) and np.isfinite(cloud).all()


@pytest.mark.parametrize("ext", EXTENSIONS)
@FUZZ
@given(data=st.data())
def test_mutated_files_give_a_cloud_or_a_data_error(tmp_path, ext, data):
    path = tmp_path / f"mutated{ext}"
    path.write_bytes(_mutate(data, _seed(ext)))
    _valid_or_data_error(path)


@pytest.mark.parametrize("ext", EXTENSIONS)
@FUZZ
@given(raw=st.binary(max_size=600))
def test_random_bytes_give_a_cloud_or_a_data_error(tmp_path, ext, raw):
    path = tmp_path / f"random{ext}"
    path.write_bytes(raw)
    _valid_or_data_error(path)


@pytest.mark.parametrize("ext", EXTENSIONS)
@FUZZ
@given(prefix=st.sampled_from([b"", b"OFF\n", b"ply\n", b"solid x\n", b"glTF", b"\x93NUMPY", b"PK\x03\x04",
                               b"\x89HDF\r\n\x1a\n", b"LASF", b"VERSION .7\n", b"# .PCD v0.7\n"]),
       body=st.binary(max_size=300))
def test_other_formats_magic_under_a_wrong_extension(tmp_path, ext, prefix, body):
    path = tmp_path / f"disguised{ext}"
    path.write_bytes(prefix + body)
    _valid_or_data_error(path)


# ----------------------------------------------------------------------------- named hostile cases

def _npy_header(header: dict) -> bytes:
    import io

    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue()  # magic, version and the header dict


def test_named_hostile_cases(tmp_path):
    cases = {
        "empty.off": b"",
        "negative.off": b"OFF\n-3 1 0\n0 0 0\n",
        "huge_index.off": b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 99999999999\n",
        "nan.obj": b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
        "overflow32.xyz": b"1e39 0 0\n0 1 0\n0 0 1\n1 1 1\n",
        "only_header.csv": b"x,y,z\n",
        "two_columns.txt": b"1 2\n3 4\n5 6\n7 8\n",
        "loop.gltf": b'{"asset":{"version":"2.0"},"nodes":[{"mesh":0,"children":[0]}],"meshes":[{"primitives":'
                     b'[{"attributes":{"POSITION":0}}]}],"accessors":[{"count":3,"componentType":5126,'
                     b'"type":"VEC3"}],"scenes":[{"nodes":[0]}],"scene":0}',
        "outside.gltf": b'{"asset":{"version":"2.0"},"buffers":[{"uri":"../../../etc/passwd","byteLength":9999}]}',
        "list_bomb.ply": b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                         b"property float z\nelement face 1\nproperty list uint int vertex_indices\nend_header\n"
                         b"0 0 0\n1 0 0\n0 1 0\n4000000000 0 1 2\n",
        "object.npy": _npy_header({"descr": "|O", "fortran_order": False, "shape": (30, 3)}) + b"\x80\x04K\x01.",
        "structured.npy": _npy_header({"descr": [("x", "<f4"), ("y", "<f4")], "fortran_order": False,
                                       "shape": (30,)}) + b"\x00" * 240,
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
        with _alarm(ALARM_SECONDS), pytest.raises(DataError) as info:
            read_points(tmp_path / name, num_points=16)
        assert name in str(info.value), name


def test_cases_the_fuzzing_found(tmp_path):
    """A LAS header whose VLR count reads as billions (laspy loops over it past the end of the
    file), a PCD COUNT in the quintillions (pypcd4 builds one dtype entry per value), and a LAZ
    file with one flipped byte (lazrs aborts the process: it is decoded in a child)."""
    las = bytearray(write_sample_file(".las", tmp_path / "seed.las").read_bytes())
    las[100:104] = (1_879_048_192).to_bytes(4, "little")
    (tmp_path / "vlrs.las").write_bytes(bytes(las))
    pcd = write_sample_file(".pcd", tmp_path / "seed.pcd").read_bytes().replace(b"COUNT 1 1 1",
                                                                              b"COUNT 1 92233720368547758081 1")
    (tmp_path / "count.pcd").write_bytes(pcd)
    laz = bytearray(write_sample_file(".laz", tmp_path / "seed.laz").read_bytes())
    laz[296] ^= 0xFF
    (tmp_path / "flipped.laz").write_bytes(bytes(laz))
    expected = {"vlrs.las": "1,879,048,192 variable-length records", "count.pcd": "expected counts of 1 to 4096",
                "flipped.laz": r"flipped\.laz"}
    for name, message in expected.items():
        with _alarm(ALARM_SECONDS), pytest.raises(DataError, match=message) as info:
            read_points(tmp_path / name, num_points=16)
        assert name in str(info.value)
