"""Single-file readers, surface sampling and normalisation (any2point.data.formats / read_points)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import trimesh

from any2point.data import SUPPORTED_EXTENSIONS, PointFile, read_file, read_points
from any2point.data.file_to_cloud import sample_mesh
from any2point.errors import DataError
from ..data_files import (MESHES_SHARED, box_mesh, need_shared, triangles_of, write_obj, write_off, write_ply,
                         write_text_cloud)


def _faces_as_set(mesh) -> set[frozenset]:
    return {frozenset(map(int, f)) for f in mesh.faces}


def _xyz(loaded) -> np.ndarray:
    return loaded.points if isinstance(loaded, PointFile) else loaded.vertices


def _assert_unit_sphere(points: np.ndarray) -> None:
    assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 3
    assert abs(float(np.linalg.norm(points, axis=1).max()) - 1.0) < 1e-5
    assert np.abs(points.mean(axis=0)).max() < 1e-5


# ----------------------------------------------------------------------------- real meshes

def test_shared_off_meshes_sample_to_unit_sphere_clouds():
    files = sorted(need_shared(MESHES_SHARED).glob("*.off"))
    assert len(files) == 19
    for path in files:
        mesh = read_file(path)
        assert isinstance(mesh, trimesh.Trimesh) and mesh.faces.max() < len(mesh.vertices)
        points = read_points(path, num_points=1024, seed=3)
        assert points.shape == (1024, 3)
        _assert_unit_sphere(points)
    np.testing.assert_array_equal(read_points(files[0], 1024, seed=3), read_points(files[0], 1024, seed=3))
    assert not np.array_equal(read_points(files[0], 512, seed=0), read_points(files[0], 512, seed=1))


def test_glued_off_header_parses_like_its_clean_twin(tmp_path):
    v, quads = box_mesh()
    clean = read_file(write_off(tmp_path / "clean.off", v, quads))
    glued = read_file(write_off(tmp_path / "glued.off", v, quads, glued=True))
    assert (tmp_path / "glued.off").read_text().startswith("OFF8 6 0\n")
    np.testing.assert_array_equal(clean.vertices, glued.vertices)
    np.testing.assert_array_equal(clean.faces, glued.faces)
    assert _faces_as_set(clean) == triangles_of(quads)
    np.testing.assert_array_equal(read_points(tmp_path / "clean.off", 256), read_points(tmp_path / "glued.off", 256))


def test_real_off_file_with_glued_header(tmp_path):
    source = next(iter(sorted(need_shared(MESHES_SHARED).glob("*.off"))))
    text = source.read_text()
    assert text.startswith("OFF\n")
    glued = tmp_path / "glued.off"
    glued.write_text("OFF" + text[4:])  # "OFF\n1008 504 0" -> "OFF1008 504 0"
    a, b = read_file(source), read_file(glued)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("with_faces", [True, False])
def test_ply_round_trip(tmp_path, fmt, with_faces):
    v, quads = box_mesh()
    polygons = [quads[0], *[[q[0], q[1], q[2]] for q in quads[1:]], *[[q[0], q[2], q[3]] for q in quads[1:]]]
    path = write_ply(tmp_path / "shape.ply", v, polygons if with_faces else None, fmt)
    loaded = read_file(path)
    np.testing.assert_allclose(_xyz(loaded), v, atol=1e-6)
    if with_faces:
        assert _faces_as_set(loaded) == triangles_of(polygons)  # one quad + triangles: mixed list lengths
    else:
        assert isinstance(loaded, PointFile)
        np.testing.assert_array_equal(loaded.fields["red"], 7)  # properties beyond xyz are kept
    _assert_unit_sphere(read_points(path, 100))


@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian"])
def test_binary_ply_triangles_keep_their_order(tmp_path, fmt):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(50, 3))
    tris = [list(rng.choice(50, 3, replace=False)) for _ in range(40)]
    mesh = read_file(write_ply(tmp_path / "t.ply", v, tris, fmt))
    np.testing.assert_array_equal(mesh.faces, np.asarray(tris))
    np.testing.assert_allclose(mesh.vertices, v.astype(np.float32), atol=0)


@pytest.mark.parametrize("negative", [False, True])
def test_obj_round_trip(tmp_path, negative):
    v, quads = box_mesh()
    path = write_obj(tmp_path / "box.obj", v, quads, negative=negative)
    mesh = read_file(path)
    np.testing.assert_allclose(mesh.vertices, v, atol=1e-9)
    assert _faces_as_set(mesh) == triangles_of(quads)


def test_off_round_trip(tmp_path):
    v, quads = box_mesh((2.0, 1.0, 0.5))
    mesh = read_file(write_off(tmp_path / "b.off", v, quads))
    np.testing.assert_allclose(mesh.vertices, v)
    assert _faces_as_set(mesh) == triangles_of(quads)


def _cloud(n=200, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3))


def test_npy_and_npz_round_trip(tmp_path):
    points = _cloud()
    np.save(tmp_path / "a.npy", points.astype(np.float32))
    np.savez(tmp_path / "b.npz", points=points)
    np.savez(tmp_path / "c.npz", arr_0=np.c_[points, points])  # a single array with normals
    for name in ("a.npy", "b.npz", "c.npz"):
        np.testing.assert_allclose(read_file(tmp_path / name).points, points, atol=1e-6)
    np.testing.assert_allclose(read_file(tmp_path / "c.npz").fields["extra_columns"], points)
    v, quads = box_mesh()
    np.savez(tmp_path / "mesh.npz", vertices=v, faces=np.asarray([q[:3] for q in quads]))
    assert isinstance(read_file(tmp_path / "mesh.npz"), trimesh.Trimesh)


@pytest.mark.parametrize("ext,sep,header", [("txt", " ", None), ("xyz", "\t", None), ("pts", " ", "200"),
                                            ("csv", ",", "x,y,z,nx,ny,nz"), ("txt", ",", None)])
def test_text_clouds_round_trip(tmp_path, ext, sep, header):
    points = _cloud()
    path = write_text_cloud(tmp_path / f"c.{ext}", points, sep=sep, header=header)
    np.testing.assert_allclose(read_file(path).points, points, atol=1e-8)
    _assert_unit_sphere(read_points(path))


def test_h5_round_trip(tmp_path):
    points = _cloud()
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = points
        f["label"] = [3]
    with h5py.File(tmp_path / "b.hdf5", "w") as f:
        f.create_group("g")["cloud"] = points[None]  # the only dataset, one cloud with a batch axis
    for name in ("a.h5", "b.hdf5"):
        np.testing.assert_allclose(read_file(tmp_path / name).points, points)


def test_read_points_pads_a_small_cloud_and_fps_reduces_a_large_one(tmp_path):
    np.save(tmp_path / "small.npy", _cloud(10))
    np.save(tmp_path / "large.npy", _cloud(3000))
    small = read_points(tmp_path / "small.npy", num_points=64)
    assert small.shape == (64, 3) and len(np.unique(small, axis=0)) == 10
    large = read_points(tmp_path / "large.npy", num_points=64)
    assert large.shape == (64, 3) and len(np.unique(large, axis=0)) == 64
    assert read_points(tmp_path / "large.npy").shape == (3000, 3)


def test_surface_sampling_is_area_weighted():
    # two triangles, the second with 3x the area of the first
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 1, 0]], dtype=float)
    mesh = trimesh.Trimesh(v, np.array([[0, 1, 2], [3, 4, 5]]), process=False)
    sampled = sample_mesh(mesh, 40000, seed=0)
    points = sampled.points
    np.testing.assert_allclose(np.abs(sampled.normals), np.tile([0, 0, 1], (40000, 1)))  # both face +z or -z
    share = float((points[:, 0] >= 10).mean())
    assert abs(share - 0.75) < 0.01
    first = points[points[:, 0] < 10]
    assert (first[:, 0] >= -1e-6).all() and (first[:, 0] + first[:, 1] <= 1 + 1e-6).all()


def test_supported_extensions_listed():
    assert {".off", ".ply", ".obj", ".npy", ".npz", ".txt", ".xyz", ".pts", ".csv", ".h5"} <= set(SUPPORTED_EXTENSIONS)


# ----------------------------------------------------------------------------- bad input

def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "cloud.wrl"
    path.write_text("#VRML V2.0 utf8")
    with pytest.raises(DataError, match=r"cloud\.wrl.*unsupported file type '\.wrl'.*\.off, \.obj"):
        read_points(path)


def test_nan_and_infinite_coordinates_name_the_point(tmp_path):
    points = _cloud(20)
    points[7, 1] = np.nan
    write_text_cloud(tmp_path / "nan.txt", points)
    with pytest.raises(DataError, match=r"nan\.txt.*point 7 has a NaN or infinite"):
        read_points(tmp_path / "nan.txt")
    points[7, 1], points[12, 0] = 0.0, np.inf
    np.save(tmp_path / "inf.npy", points)
    with pytest.raises(DataError, match=r"inf\.npy.*point 12"):
        read_file(tmp_path / "inf.npy")


def test_empty_mesh_and_zero_area_mesh(tmp_path):
    write_off(tmp_path / "empty.off", np.zeros((0, 3)), [])
    with pytest.raises(DataError, match=r"empty\.off.*empty"):
        read_points(tmp_path / "empty.off")
    flat = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]], dtype=float)  # collinear: zero area
    write_off(tmp_path / "flat.off", flat, [[0, 1, 2], [1, 2, 3]])
    with pytest.raises(DataError, match=r"flat\.off.*zero area"):
        read_points(tmp_path / "flat.off")
    write_ply(tmp_path / "flat.ply", flat, [[0, 1, 2], [3, 3, 3]], "binary_little_endian")
    with pytest.raises(DataError, match=r"flat\.ply.*zero area"):
        read_points(tmp_path / "flat.ply")


def test_truncated_and_corrupt_files(tmp_path):
    v, quads = box_mesh()
    text = write_off(tmp_path / "t.off", v, quads).read_text().splitlines()
    (tmp_path / "t.off").write_text("\n".join(text[:-3]))
    with pytest.raises(DataError, match=r"t\.off.*truncated"):
        read_file(tmp_path / "t.off")
    raw = write_ply(tmp_path / "t.ply", v, quads, "binary_big_endian").read_bytes()
    (tmp_path / "t.ply").write_bytes(raw[:-30])
    with pytest.raises(DataError, match=r"t\.ply.*truncated or corrupt"):
        read_file(tmp_path / "t.ply")
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match=r"junk\.ply.*not a PLY file"):
        read_file(tmp_path / "junk.ply")
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["data"] = _cloud(500)
    raw = (tmp_path / "c.h5").read_bytes()
    (tmp_path / "c.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"c\.h5.*not a readable HDF5 file"):
        read_file(tmp_path / "c.h5")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"bad\.npy.*not a readable \.npy array"):
        read_file(tmp_path / "bad.npy")


def test_wrong_shapes_and_bad_indices(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((10, 2)))
    with pytest.raises(DataError, match=r"flat\.npy.*shape \(10, 2\).*\(num_points, 3\)"):
        read_file(tmp_path / "flat.npy")
    with h5py.File(tmp_path / "many.h5", "w") as f:
        f["data"] = np.zeros((4, 10, 3))
    with pytest.raises(DataError, match=r"many\.h5.*holds 4 clouds"):
        read_file(tmp_path / "many.h5")
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 3)), b=np.zeros((3, 3)))
    with pytest.raises(DataError, match=r"two\.npz.*expected one array"):
        read_file(tmp_path / "two.npz")
    v, _ = box_mesh()
    write_off(tmp_path / "idx.off", v, [[0, 1, 8]])
    with pytest.raises(DataError, match=r"idx\.off.*face index outside the range of its vertices"):
        read_file(tmp_path / "idx.off")
    write_text_cloud(tmp_path / "two_cols.csv", np.zeros((5, 2)), sep=",", normals=False)
    with pytest.raises(DataError, match=r"two_cols\.csv.*at least 3 values"):
        read_file(tmp_path / "two_cols.csv")
    np.save(tmp_path / "dot.npy", np.ones((5, 3)))
    with pytest.raises(DataError, match=r"dot\.npy.*all 5 points coincide"):
        read_points(tmp_path / "dot.npy")
    with pytest.raises(DataError, match=r"missing\.ply.*does not exist"):
        read_file(tmp_path / "missing.ply")
