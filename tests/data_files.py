"""Writers of small data files in the official formats and layouts, for the data tests.

Each writer follows the format's specification independently of the readers under test.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

SHARED = Path(os.environ.get("ANY2POINT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
MODELNET40_SHARED = SHARED / "data" / "modelnet40_1024_h5"
MESHES_SHARED = SHARED / "data" / "modelnet10_meshes"


def need_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set ANY2POINT_SHARED to the shared/ folder)")
    return path


def box_mesh(size=(1.0, 2.0, 3.0)) -> tuple[np.ndarray, list[list[int]]]:
    """A box as 8 vertices and 6 quads (outward order)."""
    sx, sy, sz = size
    v = np.array([[x, y, z] for x in (0, sx) for y in (0, sy) for z in (0, sz)], dtype=np.float64)
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    return v, quads


def triangles_of(polygons: list[list[int]]) -> set[frozenset]:
    """Polygons fan-triangulated, as a set of vertex triples (order free), for comparisons."""
    return {frozenset((p[0], p[j], p[j + 1])) for p in polygons for j in range(1, len(p) - 1)}


def write_off(path: Path, vertices, faces, glued: bool = False) -> Path:
    counts = f"{len(vertices)} {len(faces)} 0"
    lines = [f"OFF{counts}" if glued else "OFF"] + ([] if glued else [counts])
    lines += [" ".join(f"{c:.9g}" for c in v) for v in vertices]
    lines += [" ".join(map(str, [len(f), *f])) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_ply(path: Path, vertices, faces=None, fmt: str = "ascii") -> Path:
    vertices = np.asarray(vertices)
    header = ["ply", f"format {fmt} 1.0", "comment written by the any2point tests",
              f"element vertex {len(vertices)}", "property float x", "property float y", "property float z",
              "property uchar red"]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    body = ("\n".join(header) + "\n").encode("ascii")
    if fmt == "ascii":
        rows = [f"{x:.9g} {y:.9g} {z:.9g} 7" for x, y, z in vertices]
        rows += [" ".join(map(str, [len(f), *f])) for f in (faces or [])]
        body += ("\n".join(rows) + "\n").encode("ascii")
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        table = np.zeros(len(vertices), dtype=[("x", order + "f4"), ("y", order + "f4"), ("z", order + "f4"),
                                               ("red", "u1")])
        table["x"], table["y"], table["z"], table["red"] = vertices[:, 0], vertices[:, 1], vertices[:, 2], 7
        body += table.tobytes()
        for f in faces or []:
            body += np.array([len(f)], dtype="u1").tobytes() + np.asarray(f, dtype=order + "i4").tobytes()
    path.write_bytes(body)
    return path


def write_obj(path: Path, vertices, faces, negative: bool = False) -> Path:
    """Faces alternate the v, v/vt, v/vt/vn and v//vn forms (one form per face, as OBJ
    writers do); ``negative`` uses relative indices."""
    lines = ["# any2point test", "o shape"] + [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in vertices]
    lines += ["vt 0 0", "vn 0 0 1"]
    forms = ["{i}", "{i}/1", "{i}/1/1", "{i}//1"]
    for k, f in enumerate(faces):
        refs = [(i - len(vertices)) if negative else i + 1 for i in f]
        lines.append("f " + " ".join(forms[k % 4].format(i=r) for r in refs))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_text_cloud(path: Path, points, sep: str = " ", normals: bool = True, header: str | None = None) -> Path:
    rows = [header] if header else []
    for p in points:
        values = list(p) + ([0.0, 0.0, 1.0] if normals else [])
        rows.append(sep.join(f"{c:.9g}" for c in values))
    path.write_text("\n".join(rows) + "\n")
    return path


def write_labelled_h5(path: Path, data, labels, label_shape: str = "n1", compression: str | None = "gzip") -> Path:
    labels = np.asarray(labels)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.asarray(data, dtype=np.float32), compression=compression)
        f.create_dataset("label", data=labels.reshape(-1, 1) if label_shape == "n1" else labels.reshape(-1))
    return path


def random_clouds(n: int, points: int, seed: int = 0) -> np.ndarray:
    """Clouds in the unit sphere, distinct per cloud."""
    rng = np.random.default_rng(seed)
    clouds = rng.normal(size=(n, points, 3)).astype(np.float32)
    return clouds / np.linalg.norm(clouds, axis=-1).max(axis=-1)[:, None, None]


def compose_data(name: str, root: str | Path | None = None, **values):
    """The ``data`` node of config ``conf/data/<name>.yaml``, composed with Hydra's compose API."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()  # in case another test left Hydra initialised

    overrides = [f"+data={name}"] + ([f"data.root='{root}'"] if root is not None else [])
    with initialize_config_module(config_module="any2point.conf", version_base=None):
        cfg = compose(config_name=None, overrides=overrides)
    for key, value in values.items():
        cfg.data[key] = value
    return cfg.data


def write_modelnet40_release(root: Path, split: str, clouds, labels, class_names, files: int = 2,
                             listing: bool = True, prefix: str = "data/modelnet40_ply_hdf5_2048/") -> list[Path]:
    """``ply_data_<split>N.h5`` files, ``shape_names.txt`` and (optionally) ``<split>_files.txt``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(class_names) + "\n")
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(labels)), files)):
        paths.append(write_labelled_h5(root / f"ply_data_{split}{i}.h5", clouds[part], np.asarray(labels)[part]))
    if listing:
        (root / f"{split}_files.txt").write_text("".join(f"{prefix}{p.name}\n" for p in paths))
    return paths


def write_sample_file(ext: str, path: Path, cloud=None) -> Path:
    """A small genuine file of type ``ext``, written by the format's own library where there is
    one: a sphere mesh (OFF, OBJ, STL, GLB, glTF), a PLY mesh with a quad, otherwise ``cloud``
    ((n, 3), 40 random points by default) as a point file."""
    import trimesh

    cloud = random_clouds(1, 40, seed=1)[0] if cloud is None else np.asarray(cloud, dtype=np.float32)
    mesh = trimesh.creation.icosphere(subdivisions=1)
    if ext in (".off", ".obj", ".stl", ".glb"):
        data = mesh.export(file_type=ext[1:])
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    elif ext == ".gltf":  # one self-contained file: the buffer embedded as a data URI
        path.write_bytes(trimesh.exchange.gltf.export_gltf(mesh.scene(), embed_buffers=True)["model.gltf"])
    elif ext == ".ply":
        write_ply(path, cloud, [[0, 1, 2], [2, 3, 4, 5]], "binary_little_endian")
    elif ext == ".pcd":
        import pypcd4

        pypcd4.PointCloud.from_xyz_points(cloud).save(str(path), encoding=pypcd4.Encoding.BINARY_COMPRESSED)
    elif ext in (".las", ".laz"):
        import laspy

        las = laspy.LasData(laspy.LasHeader(point_format=2, version="1.2"))
        las.x, las.y, las.z = cloud.T.astype(np.float64)
        las.write(str(path))
    elif ext == ".npy":
        np.save(path, cloud)
    elif ext == ".npz":
        np.savez_compressed(path, points=cloud, normals=cloud)
    elif ext in (".h5", ".hdf5"):
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=cloud, compression="gzip")
    else:
        write_text_cloud(path, cloud, sep="," if ext == ".csv" else " ", header="x,y,z,nx,ny,nz")
    return path
