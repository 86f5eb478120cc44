"""Formats read through their libraries, on files the libraries write themselves (trimesh
exports STL / GLB / glTF, plyfile writes PLY, pypcd4 writes PCD, laspy writes LAS / LAZ),
the size limits checked before reading, ambiguous arrays refused, and the folder skip report."""
from __future__ import annotations

import os
import sys
import zipfile

import h5py
import numpy as np
import pytest
import trimesh

from any2point.data import PointFile, build_dataset, file_points, read_file, read_points
from any2point.data.formats import DEFAULT_MAX_POINTS_PER_FILE
from any2point.data.h5sets import DEFAULT_MAX_POINTS_PER_COLLECTION, read_labelled_h5
from any2point.errors import DataError
from ..data_files import box_mesh, compose_data, random_clouds, write_off, write_ply


def _two_node_scene() -> tuple[trimesh.Scene, np.ndarray]:
    """A box placed twice (shifted and rotated) and a sphere, and the vertices every instance
    should have once placed, computed here with plain matrix products."""
    box, ball = trimesh.creation.box(extents=(1, 2, 3)), trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    shift = trimesh.transformations.translation_matrix([5.0, 0, 0])
    turn = trimesh.transformations.rotation_matrix(np.pi / 2, [0, 0, 1]) @ trimesh.transformations.translation_matrix(
        [0, 4.0, 0])
    scene = trimesh.Scene()
    scene.add_geometry(box, node_name="box_a", geom_name="box", transform=shift)
    scene.add_geometry(box, node_name="box_b", geom_name="box", transform=turn)
    scene.add_geometry(ball, node_name="ball", geom_name="ball")
    placed = [(np.c_[box.vertices, np.ones(len(box.vertices))] @ m.T)[:, :3] for m in (shift, turn)]
    return scene, np.concatenate([*placed, ball.vertices])


def _rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(np.round(a, 5).T[::-1])]


# ----------------------------------------------------------------------------- meshes (trimesh)

@pytest.mark.parametrize("encoding", ["binary", "ascii"])
def test_stl_written_by_trimesh(tmp_path, encoding):
    box = trimesh.creation.box(extents=(1, 2, 3))
    path = tmp_path / "part.stl"
    path.write_bytes(trimesh.exchange.stl.export_stl(box) if encoding == "binary"
                     else trimesh.exchange.stl.export_stl_ascii(box).encode())
    mesh = read_file(path)
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) == 12
    assert mesh.area == pytest.approx(22.0, rel=1e-5)
    points = read_points(path, num_points=256, seed=1)
    assert points.shape == (256, 3) and np.isfinite(points).all()


@pytest.mark.parametrize("suffix", [".glb", ".gltf"])
def test_gltf_scene_is_flattened_with_its_transforms(tmp_path, suffix):
    scene, expected = _two_node_scene()
    path = tmp_path / f"scene{suffix}"
    if suffix == ".glb":
        path.write_bytes(scene.export(file_type="glb"))
    else:
        for name, data in scene.export(file_type="gltf").items():  # the .gltf and its buffer files
            (tmp_path / name).write_bytes(data)
        (tmp_path / "model.gltf").rename(path)
    mesh = read_file(path)
    assert isinstance(mesh, trimesh.Trimesh)
    np.testing.assert_allclose(_rows(np.asarray(mesh.vertices)), _rows(expected), atol=1e-5)
    assert len(mesh.faces) == 2 * 12 + 80
    sampled = file_points(path, mesh_points=4000, seed=0)
    assert sampled.points.min(axis=0)[0] < -1 and sampled.points.max(axis=0)[0] > 5  # both boxes sampled
    np.testing.assert_allclose(np.linalg.norm(sampled.normals, axis=1), 1.0, atol=1e-5)


def test_obj_with_groups_and_objects_keeps_every_face(tmp_path):
    path = tmp_path / "parts.obj"
    path.write_text("o first\nv 0 0 0\nv 1 0 0\nv 0 1 0\ng lid\nf 1 2 3\n"
                    "o second\nv 0 0 5\nv 2 0 5\nv 0 2 5\nv 2 2 5\ng base\nf 4 5 6\ng side\nf 5 7 6\n")
    mesh = read_file(path)
    assert len(mesh.faces) == 3 and mesh.area == pytest.approx(0.5 + 2 + 2)
    assert set(np.round(mesh.vertices[:, 2], 6)) == {0.0, 5.0}


def test_mesh_sampling_is_seeded_and_keeps_vertex_colours(tmp_path):
    box = trimesh.creation.box()
    box.visual.vertex_colors = np.tile([200, 10, 10, 255], (len(box.vertices), 1))
    path = tmp_path / "red.ply"
    path.write_bytes(box.export(file_type="ply"))
    a, b = file_points(path, 500, seed=4), file_points(path, 500, seed=4)
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.array_equal(a.points, file_points(path, 500, seed=5).points)
    np.testing.assert_array_equal(a.colors[:, :3], np.tile([200, 10, 10], (500, 1)))


# ----------------------------------------------------------------------------- point files

def test_ply_cloud_written_by_plyfile_keeps_its_properties(tmp_path):
    import plyfile

    rng = np.random.default_rng(0)
    n = 50
    table = np.zeros(n, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
                               ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("intensity", "f4")])
    for k in table.dtype.names:
        table[k] = rng.integers(0, 255, n) if table.dtype[k] == np.uint8 else rng.normal(size=n)
    for text in (True, False):
        path = tmp_path / f"cloud{int(text)}.ply"
        plyfile.PlyData([plyfile.PlyElement.describe(table, "vertex")], text=text).write(str(path))
        cloud = read_file(path)
        assert isinstance(cloud, PointFile)
        np.testing.assert_allclose(cloud.points, np.c_[table["x"], table["y"], table["z"]], atol=1e-6)
        np.testing.assert_allclose(cloud.normals, np.c_[table["nx"], table["ny"], table["nz"]], atol=1e-6)
        np.testing.assert_array_equal(cloud.colors, np.c_[table["red"], table["green"], table["blue"]])
        np.testing.assert_allclose(cloud.fields["intensity"], table["intensity"], atol=1e-6)


@pytest.mark.parametrize("encoding", ["ascii", "binary", "binary_compressed"])
def test_pcd_written_by_pypcd4(tmp_path, encoding):
    import pypcd4

    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(40, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(40, 3))
    packed = pypcd4.PointCloud.encode_rgb(rgb.astype(np.uint8))
    intensity = rng.random(40).astype(np.float32)
    cloud = pypcd4.PointCloud.from_points([xyz[:, 0], xyz[:, 1], xyz[:, 2], packed, intensity],
                                          ("x", "y", "z", "rgb", "intensity"),
                                          (np.float32, np.float32, np.float32, np.float32, np.float32))
    path = tmp_path / "scan.pcd"
    cloud.save(str(path), encoding=pypcd4.Encoding(encoding))
    read = read_file(path)
    np.testing.assert_allclose(read.points, xyz, atol=1e-6)
    if encoding != "ascii":  # pypcd4 writes the packed colour float as "%.10f" in ascii: 0.0000000000
        np.testing.assert_array_equal(read.colors, rgb)
    np.testing.assert_allclose(read.fields["intensity"], intensity, atol=1e-6)


def _las(tmp_path, name: str, n: int = 60):
    import laspy

    rng = np.random.default_rng(2)
    xyz = rng.uniform(-50, 50, size=(n, 3))
    header = laspy.LasHeader(point_format=3, version="1.2")
    header.scales, header.offsets = np.array([0.001] * 3), np.zeros(3)
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz.T
    las.red, las.green, las.blue = (rng.integers(0, 65536, n) for _ in range(3))
    las.intensity = rng.integers(0, 1000, n)
    path = tmp_path / name
    las.write(str(path))
    return path, xyz, las


@pytest.mark.parametrize("name", ["survey.las", "survey.laz"])
def test_las_and_laz_written_by_laspy(tmp_path, name):
    path, xyz, las = _las(tmp_path, name)
    read = read_file(path)
    np.testing.assert_allclose(read.points, xyz, atol=0.001)
    np.testing.assert_array_equal(read.colors[:, 0], np.asarray(las.red) >> 8)
    np.testing.assert_array_equal(read.fields["intensity"], np.asarray(las.intensity))


def test_lidar_without_its_extra_names_the_extra(tmp_path, monkeypatch):
    import laspy

    path, _, _ = _las(tmp_path, "survey.laz")
    monkeypatch.setattr(laspy.LazBackend, "detect_available", staticmethod(lambda: ()))
    with pytest.raises(DataError, match=r"survey\.laz.*LAZ backend.*any2point\[lidar\]"):
        read_file(path)
    monkeypatch.setitem(sys.modules, "laspy", None)  # laspy not installed
    with pytest.raises(DataError, match=r"survey\.laz.*needs laspy.*any2point\[lidar\]"):
        read_file(path)


def test_text_header_names_normals_and_colours(tmp_path):
    xyz = random_clouds(1, 30)[0].astype(np.float64)
    rows = ["x,y,z,nx,ny,nz,r,g,b,label"] + [",".join(f"{c:.9g}" for c in (*p, 0, 0, 1, 10, 20, 30, 7)) for p in xyz]
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    cloud = read_file(tmp_path / "c.csv")
    np.testing.assert_allclose(cloud.points, xyz, atol=1e-8)
    np.testing.assert_array_equal(cloud.normals, np.tile([0, 0, 1], (30, 1)))
    np.testing.assert_array_equal(cloud.colors, np.tile([10, 20, 30], (30, 1)))
    np.testing.assert_array_equal(cloud.fields["label"], 7)


# ----------------------------------------------------------------------------- ambiguous arrays

def test_transposed_complex_and_boolean_arrays_are_refused(tmp_path):
    cloud = random_clouds(1, 100)[0]
    np.save(tmp_path / "t.npy", cloud.T)
    with pytest.raises(DataError, match=r"t\.npy.*shape \(3, 100\).*ambiguous.*transposed.*\(num_points, 3\+\)"):
        read_file(tmp_path / "t.npy")
    np.save(tmp_path / "c.npy", cloud.astype(np.complex64))
    with pytest.raises(DataError, match=r"c\.npy.*complex values \(complex64\).*real numbers"):
        read_file(tmp_path / "c.npy")
    np.save(tmp_path / "b.npy", cloud > 0)
    with pytest.raises(DataError, match=r"b\.npy.*bool.*real numbers"):
        read_file(tmp_path / "b.npy")
    np.savez(tmp_path / "t.npz", points=cloud.T)
    with pytest.raises(DataError, match=r"t\.npz.*'points' has shape \(3, 100\).*ambiguous"):
        read_file(tmp_path / "t.npz")
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["data"] = cloud.T[None]
    with pytest.raises(DataError, match=r"t\.h5.*shape \(1, 3, 100\).*ambiguous"):
        read_file(tmp_path / "t.h5")
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["data"] = cloud.astype(np.complex128)
    with pytest.raises(DataError, match=r"c\.h5.*complex"):
        read_file(tmp_path / "c.h5")
    np.save(tmp_path / "ok.npy", cloud)  # the same values the right way round
    np.testing.assert_allclose(read_file(tmp_path / "ok.npy").points, cloud)


def test_labelled_h5_refuses_complex_clouds(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f["data"] = random_clouds(2, 16).astype(np.complex64)
        f["label"] = [0, 1]
    with pytest.raises(DataError, match=r"c\.h5.*'data' holds complex"):
        read_labelled_h5(path)


# ----------------------------------------------------------------------------- size limits

def _over_the_limit_files(tmp_path) -> dict[str, object]:
    """One small genuine file of 20 points (or 20+ faces) per reader."""
    cloud = random_clouds(1, 20, seed=3)[0]
    files = {}
    sphere = trimesh.creation.icosphere(subdivisions=1)  # 42 vertices, 80 faces
    for suffix in (".off", ".obj", ".stl", ".glb"):
        files[suffix] = tmp_path / f"m{suffix}"
        data = sphere.export(file_type=suffix[1:])
        files[suffix].write_bytes(data.encode() if isinstance(data, str) else data)
    files[".ply"] = write_ply(tmp_path / "p.ply", cloud)
    np.save(tmp_path / "a.npy", cloud)
    np.savez(tmp_path / "a.npz", points=cloud)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = cloud
    np.savetxt(tmp_path / "a.xyz", cloud)
    files.update({".npy": tmp_path / "a.npy", ".npz": tmp_path / "a.npz", ".h5": tmp_path / "a.h5",
                  ".xyz": tmp_path / "a.xyz"})
    import pypcd4

    files[".pcd"] = tmp_path / "a.pcd"
    pypcd4.PointCloud.from_xyz_points(cloud.astype(np.float32)).save(str(files[".pcd"]))
    files[".las"], _, _ = _las(tmp_path, "a.las", n=20)
    return files


def test_every_reader_checks_the_declared_size_against_the_limit(tmp_path):
    for suffix, path in _over_the_limit_files(tmp_path).items():
        assert len(read_points(path, 8, max_points=1000)) == 8, suffix  # under the limit: read
        with pytest.raises(DataError, match=r"declared, above data\.max_points_per_file=10 ") as info:
            read_file(path, max_points=10)
        assert str(path) in str(info.value), suffix


def test_tiny_files_declaring_millions_of_points_are_refused_before_reading(tmp_path):
    # a .npz of a few hundred bytes whose member declares 20 M points (a zip bomb would decompress it)
    header = {"descr": "<f4", "fortran_order": False, "shape": (20_000_000, 3)}
    member = tmp_path / "bomb.npy"
    with open(member, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 64)
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(member, "points.npy")
    assert (tmp_path / "bomb.npz").stat().st_size < 1000
    with pytest.raises(DataError, match=r"bomb\.npz.*20,000,000 declared, above data\.max_points_per_file=5,000,000"):
        read_file(tmp_path / "bomb.npz")
    with pytest.raises(DataError, match=r"bomb\.npy.*20,000,000 declared"):
        read_file(member)
    # a gzip HDF5 dataset of 20 M points that was never written: a few KB on disk
    with h5py.File(tmp_path / "bomb.h5", "w") as f:
        f.create_dataset("data", shape=(20_000_000, 3), dtype="f4", chunks=(65536, 3), compression="gzip")
    assert (tmp_path / "bomb.h5").stat().st_size < 100_000
    with pytest.raises(DataError, match=r"bomb\.h5.*20,000,000 declared"):
        read_file(tmp_path / "bomb.h5")
    with h5py.File(tmp_path / "set.h5", "w") as f:
        f.create_dataset("data", shape=(20_000, 4_000, 3), dtype="f4", chunks=(1, 4000, 3), compression="gzip")
        f["label"] = np.zeros(20_000, dtype=np.int64)
    with pytest.raises(DataError, match=r"set\.h5.*20,000 clouds x 4,000 points, above data\.max_points_per_coll"):
        read_labelled_h5(tmp_path / "set.h5")
    with pytest.raises(DataError, match=r"set\.h5.*points per cloud: 4,000 declared, above .*=1,000"):
        read_labelled_h5(tmp_path / "set.h5", max_points=1000)
    # headers that promise more than the file holds
    (tmp_path / "big.off").write_text("OFF\n20000000 0 0\n0 0 0\n")
    with pytest.raises(DataError, match=r"big\.off.*vertices: 20,000,000 declared"):
        read_file(tmp_path / "big.off")
    (tmp_path / "big.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 90000000\n"
                                       b"property float x\nproperty float y\nproperty float z\nend_header\n")
    with pytest.raises(DataError, match=r"big\.ply.*element 'vertex': 90,000,000 declared"):
        read_file(tmp_path / "big.ply")
    (tmp_path / "big.pcd").write_text("VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
                                      "WIDTH 9000000\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 9000000\n"
                                      "DATA binary_compressed\n")
    with pytest.raises(DataError, match=r"big\.pcd.*PCD points: 9,000,000 declared"):
        read_file(tmp_path / "big.pcd")
    (tmp_path / "lying.pcd").write_bytes(b"VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
                                         b"WIDTH 10\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 10\n"
                                         b"DATA binary_compressed\n" + np.array([8, 2**31], "<u4").tobytes())
    with pytest.raises(DataError, match=r"lying\.pcd.*2,147,483,648 uncompressed bytes.*exactly 120"):
        read_file(tmp_path / "lying.pcd")
    stl = bytearray(trimesh.exchange.stl.export_stl(trimesh.creation.box()))
    stl[80:84] = np.array([3_000_000], "<u4").tobytes()
    (tmp_path / "big.stl").write_bytes(bytes(stl))
    with pytest.raises(DataError, match=r"big\.stl.*3,000,000 triangles .* but the file has 684 bytes"):
        read_file(tmp_path / "big.stl")


def test_the_yaml_limits_are_the_code_fallbacks():
    for name in ("folder", "modelnet40", "modelnet40_resampled", "scanobjectnn_obj_bg", "scanobjectnn_obj_only",
                 "scanobjectnn_pb_t50_rs"):
        data = compose_data(name)
        assert data.max_points_per_file == DEFAULT_MAX_POINTS_PER_FILE, name
        if name not in ("folder", "modelnet40_resampled"):  # the HDF5 collections
            assert data.max_points_per_collection == DEFAULT_MAX_POINTS_PER_COLLECTION, name


# ----------------------------------------------------------------------------- folder skip report

def test_folder_lists_every_entry_that_is_not_a_sample(tmp_path):
    root = tmp_path / "mine"
    v, quads = box_mesh()
    for cls in ("box", "blob"):
        (root / cls / "train").mkdir(parents=True)
    (root / "empty_class").mkdir()  # no train/ folder
    for k in range(2):
        write_off(root / "box" / "train" / f"b{k}.off", v * (k + 1), quads)
        np.save(root / "blob" / "train" / f"c{k}.npy", random_clouds(1, 300, seed=k)[0])
    train = root / "blob" / "train"
    os.symlink(train / "loop_b.ply", train / "loop_a.ply")  # a symlink loop
    os.symlink(train / "loop_a.ply", train / "loop_b.ply")
    os.symlink(tmp_path / "gone.npy", train / "broken.npy")  # a dangling link
    (train / "looks_like.ply").mkdir()  # a directory named like a file
    (train / "extras").mkdir()  # a nested folder
    (train / ".hidden.npy").write_bytes(b"")
    (root / "README.txt").write_text("my data")  # a file where class folders belong
    cfg = compose_data("folder", root=root, num_points=32, protocol={"train_fps": 48}, mesh_points=512,
                       cache_dir=str(tmp_path / "cache"), val_fraction=0.0)

    with pytest.raises(DataError, match=r"broken\.npy: cannot be opened: No such file"):
        build_dataset(cfg, "train")
    cfg.on_error = "skip"
    dataset = build_dataset(cfg, "train")
    assert len(dataset) == 4
    reasons = {os.path.relpath(path, root): reason for path, reason in dataset.skipped}
    assert set(reasons) == {"blob/train/loop_a.ply", "blob/train/loop_b.ply", "blob/train/broken.npy",
                            "blob/train/looks_like.ply", "blob/train/extras", "blob/train/.hidden.npy",
                            "README.txt", "empty_class/train"}
    assert "symbolic links" in reasons["blob/train/loop_a.ply"]
    assert "directory named like a data file" in reasons["blob/train/looks_like.ply"]
    assert "no train/ subfolder" in reasons["empty_class/train"]
    assert "not a class folder" in reasons["README.txt"]


def test_folder_passes_its_size_limit_to_the_readers(tmp_path):
    root = tmp_path / "mine"
    (root / "blob" / "train").mkdir(parents=True)
    np.save(root / "blob" / "train" / "big.npy", random_clouds(1, 300)[0])
    np.save(root / "blob" / "train" / "small.npy", random_clouds(1, 50)[0])
    cfg = compose_data("folder", root=root, num_points=32, protocol={"train_fps": 48}, cache=False,
                       val_fraction=0.0, max_points_per_file=100, on_error="skip")
    dataset = build_dataset(cfg, "train")
    assert len(dataset) == 1 and len(dataset.skipped) == 1
    assert "300 declared, above data.max_points_per_file=100" in dataset.skipped[0][1]
