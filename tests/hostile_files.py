"""Writers of small hostile files: each declares (or makes a library do) far more work than its
size, the classes a hostile-input review found. Written byte by byte from the formats'
specifications, without the readers under test."""
from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import numpy as np


def pcd(path: Path, fields: list[tuple[str, int, str, int]], points: int, data: str, body: bytes) -> Path:
    """A PCD file of ``fields`` (name, size, type, count) and ``points`` points."""
    names, sizes, types, counts = zip(*fields)
    head = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS {' '.join(names)}\nSIZE {' '.join(map(str, sizes))}\n"
            f"TYPE {' '.join(types)}\nCOUNT {' '.join(map(str, counts))}\nWIDTH {points}\nHEIGHT 1\n"
            f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n")
    path.write_bytes(head.encode() + body)
    return path


def pcd_compressed_bomb(path: Path, points: int = 5_000_000, descriptor: int = 200) -> Path:
    """1 KB declaring 5 M binary_compressed points of 812 bytes: 4 GB to allocate and decompress."""
    fields = [("x", 4, "F", 1), ("y", 4, "F", 1), ("z", 4, "F", 1), ("d", 4, "F", descriptor)]
    itemsize = 12 + 4 * descriptor
    return pcd(path, fields, points, "binary_compressed", struct.pack("<II", 1000, points * itemsize) + bytes(1000))


def pcd_many_values(path: Path, fields: int = 3000, count: int = 4096) -> Path:
    """A 44 KB header whose fields hold 12 M values a point: pypcd4 builds a dtype entry per value."""
    extra = [(f"f{i}", 1, "U", count) for i in range(fields)]
    return pcd(path, [("x", 4, "F", 1), ("y", 4, "F", 1), ("z", 4, "F", 1), *extra], 1, "ascii", b"1 2 3\n")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side: int = 8000) -> bytes:
    """An RGB PNG of side x side black pixels (192 MB decoded at 8000), compressed row by row so
    it is never held whole: about 190 KB."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * side)  # filter byte 0 and the pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))


TRIANGLE = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)


def glb(document: dict, binary: bytes) -> bytes:
    """A GLB container: header, JSON chunk, BIN chunk (each padded to 4 bytes)."""
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    binary += bytes(-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(text), b"JSON") + text
            + struct.pack("<I4s", len(binary), b"BIN\x00") + binary)


def glb_textured(path: Path, png: bytes, images: int = 4) -> Path:
    """One triangle with a material of four textures, each a different image of ``png`` in the
    BIN chunk: the geometry is 36 bytes, the images decode to ``images`` x 192 MB."""
    uv = np.array([[0, 0], [1, 0], [0, 1]], np.float32).tobytes()
    binary = TRIANGLE.tobytes() + uv
    views = [{"buffer": 0, "byteOffset": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 24}]
    for _ in range(images):
        binary += bytes(-len(binary) % 4)
        views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(png)})
        binary += png
    document = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0},
                                                "metallicRoughnessTexture": {"index": 1 % images}},
                       "normalTexture": {"index": 2 % images}, "occlusionTexture": {"index": 3 % images}}],
        "textures": [{"source": i} for i in range(images)],
        "images": [{"bufferView": 2 + i, "mimeType": "image/png"} for i in range(images)],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0],
                       "max": [1, 1, 0]}, {"bufferView": 1, "componentType": 5126, "count": 3, "type": "VEC2"}],
        "bufferViews": views, "buffers": [{"byteLength": len(binary) + (-len(binary) % 4)}]}
    path.write_bytes(glb(document, binary))
    return path


def gltf_triangle(extra_accessors=(), extra_views=(), buffers=None, images=()) -> dict:
    """A glTF document of one triangle (its buffer embedded as a data URI), with more accessors,
    buffer views, buffers or images appended."""
    data = TRIANGLE.tobytes()
    return {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0],
                       "max": [1, 1, 0]}, *extra_accessors],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": len(data)}, *extra_views],
        "buffers": buffers or [{"byteLength": len(data),
                                "uri": "data:application/octet-stream;base64," + base64.b64encode(data).decode()}],
        **({"images": list(images)} if images else {}),
    }


def ply_long_face(path: Path, indices: int) -> Path:
    """A binary PLY triangle whose one face lists ``indices`` vertex indices (4 bytes each)."""
    head = (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
            b"property float z\nelement face 1\nproperty list uint int vertex_indices\nend_header\n")
    ring = np.tile(np.array([0, 1, 2], "<i4"), indices // 3 + 1)[:indices]
    path.write_bytes(head + TRIANGLE.astype("<f4").tobytes() + struct.pack("<I", indices) + ring.tobytes())
    return path


def obj_long_face(path: Path, indices: int) -> Path:
    path.write_bytes(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf" + b" 1 2 3" * (indices // 3) + b"\n")
    return path


def off_long_face(path: Path, indices: int) -> Path:
    indices -= indices % 3
    path.write_bytes(b"OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n" + str(indices).encode() + b" 0 1 2" * (indices // 3) + b"\n")
    return path


def ply_empty_elements(path: Path, elements: int = 500, count: int = 5_000_000, fmt: str = "binary_little_endian"):
    """About 10 KB: a triangle and ``elements`` elements of ``count`` records with no property
    each (zero bytes a record, but plyfile still loops over every one)."""
    head = [f"ply\nformat {fmt} 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z"]
    head += [f"element e{i} {count}" for i in range(elements)]
    body = ("\n".join(head) + "\nend_header\n").encode()
    body += TRIANGLE.astype("<f4").tobytes() if fmt != "ascii" else b"0 0 0\n1 0 0\n0 1 0\n"
    path.write_bytes(body)
    return path


def obj_many_materials(path: Path, materials: int = 20_000) -> Path:
    """430 KB switching material before every face: trimesh makes a mesh per material, each
    pass over all the vertices."""
    body = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n" + b"".join(
        b"usemtl m%d\nf 1 2 %d\n" % (i, 3 + i % 2) for i in range(materials))
    path.write_bytes(body)
    return path


def las_header_field(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)
