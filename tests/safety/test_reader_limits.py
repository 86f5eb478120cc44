"""Every reader is bounded in memory and time before it allocates (docs/file-formats.md).

Each hostile file is read in a forked child capped at 1 GB more address space than it started
with and 10 s (``bounded_call``): a reader that would allocate gigabytes fails there, not on
the machine. The named cases are the classes a hostile-input review found (a 1 KB PCD that
costs 4 GB, a GLB whose textures cost 3 GB, a 10 KB PLY that takes 3 minutes, ...); the
property-based tests build random headers for every reader and assert a cloud or a one-line
DataError, within the same bounds.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import re
import struct
import tempfile
from pathlib import Path

import h5py  # noqa: F401 - the readers' libraries, imported once here rather than in every forked child
import laspy  # noqa: F401
import numpy as np
import plyfile  # noqa: F401
import pypcd4  # noqa: F401
import pytest
import trimesh  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from any2point.data import read_file, read_points
from any2point.data.formats import DEFAULT_MAX_POINTS_PER_FILE
from any2point.errors import DataError
from .. import hostile_files as H
from ..bounded_call import GIB, bounded
from ..data_files import write_obj, write_off, write_sample_file

SECONDS = 10


def _read_checked(path: Path, max_points: int) -> str:
    """What the child runs: a cloud of 16 finite points, or a DataError."""
    cloud = read_points(path, num_points=16, mesh_points=64, max_points=max_points)
    assert cloud.shape == (16, 3) and cloud.dtype == np.float32 and np.isfinite(cloud).all(), cloud
    return "cloud"


def _bounded_read(path: Path, max_points: int = DEFAULT_MAX_POINTS_PER_FILE):
    outcome = bounded(functools.partial(_read_checked, path, max_points), seconds=SECONDS, extra_bytes=GIB)
    assert outcome.kind in ("ok", "DataError"), f"{path.name}: {outcome}"
    assert outcome.seconds < SECONDS and outcome.extra_bytes < GIB, f"{path.name}: {outcome}"
    if outcome.kind == "DataError":
        assert outcome.message.startswith(f"{path}: ") and "\n" not in outcome.message, outcome.message
    return outcome


def _refused(path: Path, match: str, max_points: int = DEFAULT_MAX_POINTS_PER_FILE):
    outcome = _bounded_read(path, max_points)
    assert outcome.kind == "DataError", f"{path.name} was read: {outcome}"
    assert re.search(match, outcome.message), outcome.message
    return outcome


# ----------------------------------------------------------------------------- the review's classes

def test_pcd_binary_compressed_sizes_are_refused_before_decompressing(tmp_path):
    _refused(H.pcd_compressed_bomb(tmp_path / "bomb.pcd"),
             r"5,000,000 PCD points of 812 bytes would decode to 4,060,000,000 bytes, above the 320,000,000-byte limit")
    # within the limit, but more than LZF can expand 100 compressed bytes to
    fields = [("x", 4, "F", 1), ("y", 4, "F", 1), ("z", 4, "F", 1)]
    body = struct.pack("<II", 100, 120_000) + bytes(100)
    _refused(H.pcd(tmp_path / "ratio.pcd", fields, 10_000, "binary_compressed", body), r"LZF expands at most 88-fold")


def test_pcd_header_with_millions_of_values_is_refused_before_building_records(tmp_path):
    path = H.pcd_many_values(tmp_path / "fields.pcd")
    assert path.stat().st_size < 50_000
    _refused(path, r"PCD COUNT declares 12,288,003 values per point; expected at most 4096")
    many = [(f"f{i}", 4, "F", 1) for i in range(5000)]
    _refused(H.pcd(tmp_path / "names.pcd", many, 1, "ascii", b"1\n"), r"FIELDS line lists more than 4096 fields")


def test_glb_textures_are_never_decoded(tmp_path):
    path = H.glb_textured(tmp_path / "textured.glb", H.png_bomb(8000))
    assert path.stat().st_size < 1_000_000  # four images of 192 MB each once decoded
    outcome = _bounded_read(path)
    assert outcome.kind == "ok" and outcome.extra_bytes < 200 << 20, outcome
    mesh = read_file(path)
    np.testing.assert_array_equal(mesh.vertices, H.TRIANGLE)


def test_gltf_image_uris_are_never_opened(tmp_path):
    (tmp_path / "fifo.png").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "fifo.png")  # opening it would block for ever
    document = H.gltf_triangle(images=[{"uri": "fifo.png"}, {"uri": "/etc/passwd"}])
    document.update(textures=[{"source": 0}, {"source": 1}],
                    materials=[{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}])
    document["meshes"][0]["primitives"][0]["material"] = 0
    path = tmp_path / "images.gltf"
    path.write_text(json.dumps(document))
    assert _bounded_read(path).kind == "ok"


def test_gltf_accessors_and_views_are_sized_before_trimesh_allocates(tmp_path):
    cases = {  # a bufferless accessor is a zero array of its count: 64 GB here
        "zeros.gltf": (H.gltf_triangle(extra_accessors=[{"componentType": 5126, "count": 10**9, "type": "MAT4"}]),
                       r"the glTF accessors would decode to 64,000,000,036 bytes"),
        # a thousand views of the same 36 bytes: trimesh copies each
        "views.gltf": (H.gltf_triangle(extra_views=[{"buffer": 0, "byteLength": 36}] * 1000),
                       r"bufferViews span 36,036 bytes, more than the 36 bytes of the buffers"),
        "count.gltf": (H.gltf_triangle(extra_accessors=[{"componentType": 5126, "count": -5, "type": "VEC3"}]),
                       r"glTF accessor 1: count -5"),
    }
    for name, (document, match) in cases.items():
        (tmp_path / name).write_text(json.dumps(document))
        _refused(tmp_path / name, match)


def test_external_gltf_buffers_count_towards_the_file_size_limit(tmp_path):
    (tmp_path / "big.bin").write_bytes(H.TRIANGLE.tobytes() + bytes((1 << 20) + 1000))
    document = H.gltf_triangle(buffers=[{"byteLength": 36, "uri": "big.bin"}])
    (tmp_path / "outside.gltf").write_text(json.dumps(document))
    _refused(tmp_path / "outside.gltf", r"glTF URI 'big.bin'.*above the 1,048,576-byte limit of one file",
             max_points=1000)
    assert _bounded_read(tmp_path / "outside.gltf", max_points=10_000).kind == "ok"  # 1.28 MB allowed


@pytest.mark.parametrize("writer", [H.ply_long_face, H.obj_long_face, H.off_long_face], ids=["ply", "obj", "off"])
def test_a_polygon_is_counted_before_it_is_triangulated(tmp_path, writer):
    suffix = {"ply_long_face": ".ply", "obj_long_face": ".obj", "off_long_face": ".off"}[writer.__name__]
    path = writer(tmp_path / f"long{suffix}", 5_200_001)  # one face of 5.2 M indices: 5.2 M triangles
    outcome = _refused(path, r"triangles \(polygons fan-triangulated\): 5,19\d,\d{3} declared, above "
                             r"data\.max_points_per_file=5,000,000")
    assert outcome.extra_bytes < 8 * path.stat().st_size + (64 << 20), outcome  # no triangle was made
    assert _bounded_read(writer(tmp_path / f"small{suffix}", 30)).kind == "ok"  # 28 triangles: read


def test_ply_work_grows_with_the_data_not_with_declared_empty_records(tmp_path):
    for fmt in ("binary_little_endian", "ascii"):
        path = H.ply_empty_elements(tmp_path / f"empty_{fmt}.ply", fmt=fmt)
        assert path.stat().st_size < 12_000
        _refused(path, r"PLY element 'e0' declares 5,000,000 records with no properties")
    # records with a property: the header's counts need more bytes than follow
    head = (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
            b"property float z\n" + b"".join(b"element e%d 4000000\nproperty uchar a\n" % i for i in range(200))
            + b"end_header\n")
    (tmp_path / "short.ply").write_bytes(head + H.TRIANGLE.tobytes())
    _refused(tmp_path / "short.ply", r"file is truncated: the header's elements need at least 800,000,036 bytes")


def test_obj_material_switches_cost_what_the_geometry_costs(tmp_path):
    path = H.obj_many_materials(tmp_path / "materials.obj")
    outcome = _bounded_read(path)
    assert outcome.kind == "ok" and outcome.seconds < 3, outcome
    mesh = read_file(path)
    assert len(mesh.faces) == 20_000  # every face kept, in one mesh


def test_las_point_count_must_match_the_size(tmp_path):
    import laspy

    las = laspy.LasData(laspy.LasHeader(point_format=2, version="1.2"))
    las.x, las.y, las.z = np.random.default_rng(0).normal(size=(100, 3)).T
    las.write(str(tmp_path / "ok.las"))
    raw = (tmp_path / "ok.las").read_bytes()
    assert len(read_file(tmp_path / "ok.las")) == 100
    (tmp_path / "short.las").write_bytes(raw[:-26 * 40])  # 60 records follow a header declaring 100
    (tmp_path / "fewer.las").write_bytes(H.las_header_field(raw, 107, "<I", 50))  # 100 records, 50 declared
    _refused(tmp_path / "short.las", r"declares 100 points of 26 bytes from byte 227, the file holds 60 ")
    _refused(tmp_path / "fewer.las", r"declares 50 points of 26 bytes from byte 227, the file holds 100 ")


def test_hdf5_chunks_are_sized_before_decompressing(tmp_path):
    import h5py

    path = tmp_path / "chunk.h5"
    with h5py.File(path, "w") as f:  # 100 points in one gzip chunk of 200,000 rows (4.8 MB once decompressed)
        f.create_dataset("data", shape=(100, 3), maxshape=(None, 3), chunks=(200_000, 3), dtype="f8",
                         compression="gzip")[:] = np.random.default_rng(0).random((100, 3))
    assert path.stat().st_size < 100_000  # a chunk of 20 M rows costs 480 MB the same way
    _refused(path, r"a chunk of shape \(200000, 3\) of dataset 'data' would decode to 4,800,000 bytes, above the "
                   r"1,048,576-byte limit", max_points=10_000)
    assert _bounded_read(path).kind == "ok"  # at the default limit: read


def test_a_text_row_of_millions_of_values_is_refused_without_splitting_it(tmp_path):
    path = tmp_path / "row.xyz"
    path.write_bytes(b"1 2 3\n4 5 6\n" + b"7 " * 12_000_000 + b"\n")  # 24 MB
    outcome = _bounded_read(path)  # the short rows are read, the long row's values beyond them never split
    assert outcome.kind == "ok" and outcome.extra_bytes < 5 * path.stat().st_size, outcome  # split: 7 x
    path.write_bytes((b"7 " * 3_000_000 + b"\n") * 3)
    _refused(path, r"65 values per row; expected at most 64")


@pytest.mark.parametrize("suffix", [".off", ".ply", ".pcd", ".npy", ".xyz", ".glb"])
def test_files_above_the_size_limit_are_refused_before_reading(tmp_path, suffix):
    path = write_sample_file(suffix, tmp_path / f"big{suffix}")
    with open(path, "ab") as f:
        f.truncate((1 << 20) + 1)  # padded past the 1 MiB floor of the limit
    _refused(path, r"1,048,577 bytes, above the 1,048,576-byte limit for one file", max_points=1000)
    assert read_points(write_sample_file(suffix, tmp_path / f"ok{suffix}"), 8, max_points=1000).shape == (8, 3)


def test_a_vertex_beyond_float32_is_out_of_range_not_zero_area(tmp_path):
    path = tmp_path / "far.off"
    path.write_bytes(b"OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n1e300 1 1\n3 0 1 2\n3 1 2 3\n")
    _refused(path, r"vertex 3 has out of range coordinates \(1e\+300\); expected \|coordinate\| <= 3.4e\+38")


# ----------------------------------------------------------------------------- text encodings

def _latin1_twin(ascii_text: str) -> bytes:
    """The same file with a Latin-1 byte in a comment and in a name (é = 0xE9, not UTF-8)."""
    return ascii_text.replace("# cafe", "# caf\xe9").replace("name_e", "name_\xe9").encode("latin-1")


def _stl_ascii(vertices, faces) -> str:
    """STL has no comments: the text after 'endsolid' stands for one (every reader skips it)."""
    rows = ["solid name_e"]
    for face in faces:
        rows += ["facet normal 0 0 0", "outer loop", *(f"vertex {' '.join(map(str, vertices[i]))}" for i in face),
                 "endloop", "endfacet"]
    return "\n".join(rows + ["endsolid name_e", "# cafe", ""])


@pytest.mark.parametrize("suffix", [".obj", ".off", ".stl"])
def test_non_utf8_bytes_in_comments_and_names_are_read(tmp_path, suffix):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    faces = [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]
    if suffix == ".obj":
        text = write_obj(tmp_path / "w.obj", vertices, faces).read_text().replace("o shape", "# cafe\no name_e")
        text = text.replace("f ", "g name_e\nf ", 1)
    elif suffix == ".off":
        text = write_off(tmp_path / "w.off", vertices, faces).read_text().replace("OFF\n", "OFF\n# cafe\n", 1)
        text += "# name_e\n"
    else:
        text = _stl_ascii(vertices, faces)
    (tmp_path / f"ascii{suffix}").write_text(text)
    raw = _latin1_twin(text)
    assert b"\xe9" in raw and raw.count(b"\xe9") >= 2
    (tmp_path / f"latin1{suffix}").write_bytes(raw)
    plain, latin = read_file(tmp_path / f"ascii{suffix}"), read_file(tmp_path / f"latin1{suffix}")
    np.testing.assert_array_equal(plain.vertices, latin.vertices)
    np.testing.assert_array_equal(plain.faces, latin.faces)
    assert len(latin.faces) == 4
    np.testing.assert_array_equal(read_points(tmp_path / f"ascii{suffix}", 64),
                                  read_points(tmp_path / f"latin1{suffix}", 64))
    if suffix != ".stl":  # a byte-order mark, UTF-8 or UTF-16, is read too
        (tmp_path / f"bom{suffix}").write_bytes(b"\xef\xbb\xbf" + text.encode())
        (tmp_path / f"utf16{suffix}").write_bytes(text.encode("utf-16"))
        for name in (f"bom{suffix}", f"utf16{suffix}"):
            np.testing.assert_array_equal(read_file(tmp_path / name).vertices, plain.vertices)


def test_binary_stl_header_that_is_not_utf8_is_read(tmp_path):
    import trimesh

    mesh = trimesh.creation.box()
    raw = bytearray(mesh.export(file_type="stl"))
    raw[:80] = b"COLOR=\xff\xfe\x80\x01 solid-works header \xe9".ljust(80, b"\x00")
    (tmp_path / "header.stl").write_bytes(bytes(raw))
    assert len(read_file(tmp_path / "header.stl").faces) == 12


# ----------------------------------------------------------------------------- random headers

# 25 derandomised examples per reader keep this file under a minute (each example forks a
# child); ANY2POINT_FUZZ_EXAMPLES=300 ANY2POINT_FUZZ_RANDOM=1 searches deeper with fresh ones.
FUZZ = settings(max_examples=int(os.environ.get("ANY2POINT_FUZZ_EXAMPLES", 25)), deadline=None,
                derandomize=not os.environ.get("ANY2POINT_FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

LIMIT = DEFAULT_MAX_POINTS_PER_FILE  # the real limit: a header may declare anything up to it and past it
counts = st.sampled_from([0, 1, 2, 3, 4, 8, 100, LIMIT - 1, LIMIT, LIMIT + 1, 2**31, 2**32 + 3, 10**15]) | \
    st.integers(0, 12)
numbers = st.sampled_from(["0", "1", "-1", "0.5", "2", "1e300", "-1e39", "nan", "inf", "x", "1,5", "", "\xe9"]) | \
    st.floats(-10, 10).map(lambda v: f"{v:.6g}")
names = st.sampled_from(["x", "y", "z", "nx", "ny", "nz", "red", "green", "blue", "rgb", "a", "_", "vertex", "face",
                         "vertex_indices", "normal_x", "caf\xe9", ""])


encodings = st.sampled_from(["utf-8", "latin-1", "utf-16"])


def _write(tmp_path: Path, suffix: str, content, encoding: str = "utf-8") -> Path:
    path = tmp_path / f"random{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


@st.composite
def off_files(draw) -> str:
    vertices, faces = draw(counts), draw(counts)
    glued = draw(st.booleans())
    lines = [f"OFF{vertices} {faces} 0"] if glued else [draw(st.sampled_from(["OFF", "COFF", "off", "NOFF"])),
                                                       f"{vertices} {faces} {draw(counts)}"]
    for _ in range(draw(st.integers(0, 10))):
        lines.append(" ".join(draw(st.lists(numbers, min_size=0, max_size=4))))
    for _ in range(draw(st.integers(0, 8))):
        indices = draw(st.lists(st.integers(-2, 12).map(str) | numbers, max_size=8))
        lines.append(" ".join([str(draw(counts | st.integers(-3, 6)))] + indices))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), "# caf\xe9")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


@st.composite
def ply_files(draw) -> bytes:
    fmt = draw(st.sampled_from(["ascii", "binary_little_endian", "binary_big_endian", "binary", "ascii 2.0"]))
    head = ["ply", f"format {fmt} 1.0", "comment random"]
    for _ in range(draw(st.integers(0, 4))):
        head.append(f"element {draw(names)} {draw(counts | st.sampled_from(['-1', '1e3', '+5']))}")
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(st.sampled_from(["float", "double", "uchar", "int", "uint", "short", "f4", "u1", "junk"]))
            if draw(st.booleans()):
                count_type = draw(st.sampled_from(["uchar", "uint", "int", "char", "float", "junk"]))
                head.append(f"property list {count_type} {kind} {draw(names)}")
            else:
                head.append(f"property {kind} {draw(names)}")
    body = ("\n".join(head) + "\nend_header\n").encode()
    if fmt.startswith("ascii"):
        rows = draw(st.lists(st.lists(numbers, max_size=6), max_size=12))
        return body + "\n".join(" ".join(r) for r in rows).encode("utf-8") + b"\n"
    return body + draw(st.binary(max_size=300))


@st.composite
def pcd_files(draw) -> bytes:
    fields = draw(st.lists(st.tuples(names, st.sampled_from([1, 2, 4, 8, 3, 0]), st.sampled_from("FUIX"),
                                     st.sampled_from([1, 1, 1, 3, 33, 4096, 4097, 10**6]) | counts),
                           min_size=0, max_size=6))
    points = draw(counts)
    width = draw(st.just(points) | counts)
    data = draw(st.sampled_from(["ascii", "binary", "binary_compressed", "junk"]))
    lists = [list(column) for column in zip(*fields)] or [[], [], [], []]
    for column in lists:  # sometimes one entry short or long
        if column and draw(st.integers(0, 9)) == 0:
            column.pop()
    head = (f"VERSION 0.7\nFIELDS {' '.join(map(str, lists[0]))}\nSIZE {' '.join(map(str, lists[1]))}\n"
            f"TYPE {' '.join(map(str, lists[2]))}\nCOUNT {' '.join(map(str, lists[3]))}\nWIDTH {width}\n"
            f"HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n").encode()
    if data == "binary_compressed":
        sizes = st.sampled_from([0, 1, 12, 100, 2**20, 2**31, 2**32 - 1]) | st.integers(0, 400)
        body = struct.pack("<II", draw(sizes), draw(sizes)) + draw(st.binary(max_size=300))
    elif data == "ascii":
        body = "\n".join(" ".join(draw(st.lists(numbers, max_size=6))) for _ in range(draw(st.integers(0, 8))))
        body = body.encode("utf-8")
    else:
        body = draw(st.binary(max_size=300))
    return head + body


@st.composite
def stl_files(draw) -> bytes:
    if draw(st.booleans()):  # binary: an 80-byte header, a count, records
        header = draw(st.binary(min_size=80, max_size=80))
        triangles = draw(counts)
        records = draw(st.integers(0, 6))
        body = np.random.default_rng(draw(st.integers(0, 9))).normal(size=(records, 12)).astype("<f4")
        data = b"".join(row.tobytes() + b"\0\0" for row in body)
        return header + struct.pack("<I", min(triangles, 2**32 - 1)) + data + draw(st.binary(max_size=40))
    rows = [f"solid {draw(names)}"]
    for _ in range(draw(st.integers(0, 6))):
        rows += ["facet normal 0 0 1", "outer loop"]
        rows += [f"vertex {' '.join(draw(st.lists(numbers, min_size=3, max_size=3)))}"
                 for _ in range(draw(st.integers(0, 4)))]
        rows += draw(st.sampled_from([["endloop", "endfacet"], [], ["endfacet"]]))
    rows.append(draw(st.sampled_from(["endsolid", "", "endsolid caf\xe9"])))
    return "\n".join(rows).encode("utf-8") + draw(st.sampled_from([b"", b"\xe9", b"\n"]))


@st.composite
def obj_files(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 20))):
        kind = draw(st.sampled_from(["v", "v", "vn", "vt", "f", "f", "usemtl", "mtllib", "o", "g", "s", "#", "l"]))
        if kind in ("v", "vn", "vt"):
            lines.append(f"{kind} {' '.join(draw(st.lists(numbers, min_size=0, max_size=7)))}")
        elif kind == "f":
            ref = st.integers(-6, 12).map(str) | st.tuples(st.integers(-6, 12), st.integers(-2, 3)).map(
                lambda t: f"{t[0]}/{t[1]}") | st.integers(1, 9).map(lambda i: f"{i}//{i}") | numbers
            tokens = " ".join(draw(st.lists(ref, max_size=9)))
            lines.append(f"f {tokens}" + draw(st.sampled_from(["", " \\", "\\"])))
        else:
            lines.append(f"{kind} {draw(names)}")
    return "\n".join(lines) + "\n"


def _accessor(draw) -> dict:
    accessor = {"componentType": draw(st.sampled_from([5126, 5125, 5123, 5121, 5120, 5130, "x"])),
                "type": draw(st.sampled_from(["VEC3", "SCALAR", "VEC2", "MAT4", "VEC5"])),
                "count": draw(counts | st.sampled_from([-1, 2.5, "3", None]))}
    if draw(st.booleans()):
        accessor["bufferView"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            accessor["byteOffset"] = draw(st.integers(0, 64))
    return accessor


@st.composite
def gltf_documents(draw) -> dict:
    buffer = draw(st.binary(max_size=200))
    document = {"asset": {"version": draw(st.sampled_from(["2.0", "1.0", "2.1", 2]))}}
    document["buffers"] = [{"byteLength": draw(counts | st.just(len(buffer))),
                            "uri": "data:application/octet-stream;base64," + base64.b64encode(buffer).decode()}]
    document["bufferViews"] = [{"buffer": draw(st.integers(0, 1)), "byteOffset": draw(st.integers(0, 64)),
                                "byteLength": draw(counts | st.integers(0, 200)),
                                **({"byteStride": draw(st.sampled_from([0, 1, 4, 12, 252]))}
                                   if draw(st.booleans()) else {})}
                               for _ in range(draw(st.integers(0, 3)))]
    document["accessors"] = [_accessor(draw) for _ in range(draw(st.integers(0, 4)))]
    document["meshes"] = [{"primitives": [{"attributes": {"POSITION": draw(st.integers(0, 4))},
                                           **({"indices": draw(st.integers(0, 4))} if draw(st.booleans()) else {}),
                                           **({"mode": draw(st.integers(0, 7))} if draw(st.booleans()) else {})}]}
                          for _ in range(draw(st.integers(0, 2)))]
    document["nodes"] = [{"mesh": draw(st.integers(0, 2)),
                          **({"children": draw(st.lists(st.integers(0, 3), max_size=3))}
                             if draw(st.booleans()) else {}),
                          **({"scale": [draw(st.sampled_from([1, 0, 1e300, -2]))] * 3} if draw(st.booleans()) else {})}
                         for _ in range(draw(st.integers(0, 3)))]
    document["scenes"] = [{"nodes": draw(st.lists(st.integers(0, 3), max_size=3))}]
    document["scene"] = 0
    return document


@functools.lru_cache(maxsize=None)
def _genuine(suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return write_sample_file(suffix, Path(folder) / f"genuine{suffix}").read_bytes()


# (offset, format) of the LAS header fields a reader sizes things by (LAS 1.4 specification, table 3)
LAS_FIELDS = [(24, "<B"), (25, "<B"), (94, "<H"), (96, "<I"), (100, "<I"), (104, "<B"), (105, "<H"), (107, "<I"),
              (227, "<Q"), (235, "<Q"), (243, "<I"), (247, "<Q")]


@st.composite
def las_files(draw, suffix: str) -> bytes:
    raw = _genuine(suffix)
    for _ in range(draw(st.integers(1, 4))):
        offset, fmt = draw(st.sampled_from(LAS_FIELDS))
        bits = 8 * struct.calcsize(fmt)
        value = draw(st.sampled_from([0, 1, 2, 3, 4, 20, 26, 227, 375, 2**64 - 1]) | st.integers(0, 2**bits - 1))
        value %= 2**bits
        if offset + struct.calcsize(fmt) <= len(raw):
            raw = H.las_header_field(raw, offset, fmt, value)
    cut = draw(st.sampled_from([None, None, 230, 300, len(raw) - 26, len(raw) - 1]))
    return raw[:cut] + draw(st.sampled_from([b"", bytes(26), bytes(1000)]))


@st.composite
def text_clouds(draw) -> str:
    separator = draw(st.sampled_from([" ", ",", "\t", ", "]))
    lines = []
    if draw(st.booleans()):
        lines.append(separator.join(draw(st.lists(names, min_size=1, max_size=8))))
    elif draw(st.booleans()):
        lines.append(str(draw(counts)))
    for _ in range(draw(st.integers(0, 12))):
        lines.append(separator.join(draw(st.lists(numbers, max_size=draw(st.sampled_from([4, 8, 70]))))))
        if draw(st.integers(0, 5)) == 0:
            lines.append(draw(st.sampled_from(["# c", "// c", "", "   "])))
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=off_files(), encoding=encodings)
def test_random_off_headers(tmp_path, text, encoding):
    _bounded_read(_write(tmp_path, ".off", text, encoding))


@FUZZ
@given(raw=ply_files())
def test_random_ply_headers(tmp_path, raw):
    _bounded_read(_write(tmp_path, ".ply", raw))


@FUZZ
@given(raw=pcd_files())
def test_random_pcd_headers(tmp_path, raw):
    _bounded_read(_write(tmp_path, ".pcd", raw))


@FUZZ
@given(raw=stl_files())
def test_random_stl_headers(tmp_path, raw):
    _bounded_read(_write(tmp_path, ".stl", raw))


@FUZZ
@given(text=obj_files(), encoding=encodings)
def test_random_obj_lines(tmp_path, text, encoding):
    _bounded_read(_write(tmp_path, ".obj", text, encoding))


@FUZZ
@given(document=gltf_documents(), binary=st.booleans(), chunk=st.binary(max_size=200))
def test_random_gltf_and_glb_documents(tmp_path, document, binary, chunk):
    if binary:
        document.pop("buffers")
        document["buffers"] = [{"byteLength": len(chunk)}]
        _bounded_read(_write(tmp_path, ".glb", H.glb(document, chunk)))
    else:
        _bounded_read(_write(tmp_path, ".gltf", json.dumps(document)))


@pytest.mark.parametrize("suffix", [".las", ".laz"])
@FUZZ
@given(data=st.data())
def test_random_las_headers(tmp_path, suffix, data):
    _bounded_read(_write(tmp_path, suffix, data.draw(las_files(suffix))))


@FUZZ
@given(text=text_clouds(), suffix=st.sampled_from([".xyz", ".csv", ".txt", ".pts"]), encoding=encodings)
def test_random_text_clouds(tmp_path, text, suffix, encoding):
    _bounded_read(_write(tmp_path, suffix, text, encoding))
