"""LAS / LAZ lidar through laspy (the ``any2point[lidar]`` extra, with the lazrs backend for
LAZ). The header is checked before laspy reads the points: the point count against the limit,
for LAS the count against the bytes the file holds (laspy reads what is there without a word,
fewer points than declared or only the first of more), for LAZ the bytes it decodes to.

LAZ is decoded in a child process: lazrs aborts the whole process on some corrupt files
(found by the fuzz tests), which would end a prediction over many files. The child sends
plain arrays back (an .npz stream loaded without pickle)."""
from __future__ import annotations

import io
import multiprocessing
import struct
from pathlib import Path

import numpy as np

from ...errors import DataError
from .limits import LAZ_SECONDS, check_decoded, max_decoded_bytes
from .records import PointFile, check_declared, check_points

__all__ = ["read_las"]

_EXTRA = "pip install 'any2point[lidar]'"
_COLOR = ("red", "green", "blue")


def _check_record_counts(path: Path) -> None:
    """laspy loops over the VLR / EVLR counts of the header even past the end of the file (a
    flipped byte there reads as billions of records and never ends): check that they fit."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(247)
    if len(head) < 104 or head[:4] != b"LASF":
        return  # laspy says what is wrong
    (vlrs,) = struct.unpack_from("<I", head, 100)
    if vlrs * 54 > size:  # a VLR header alone is 54 bytes
        raise DataError(f"the header declares {vlrs:,} variable-length records, more than a {size:,}-byte file "
                        "holds", str(path))
    if head[25] >= 4 and len(head) >= 247:
        (evlrs,) = struct.unpack_from("<I", head, 243)
        if evlrs * 60 > size:  # an extended VLR header is 60 bytes
            raise DataError(f"the header declares {evlrs:,} extended variable-length records, more than a "
                            f"{size:,}-byte file holds", str(path))


def _check_point_data(path: Path, count: int, laz: bool, limit: int) -> None:
    """The declared points against the file: a LAS file's point records run from the offset
    the header gives to the first extended VLR or waveform packet (LAS 1.3-1.4) or the end of
    the file, and must be exactly the declared count, give or take less than one record; a
    LAZ file's decoded records within the decoded-size limit."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(255)
    (offset,) = struct.unpack_from("<I", head, 96)
    (length,) = struct.unpack_from("<H", head, 105)
    if laz:
        check_decoded(path, f"{count:,} LAZ points of {length} bytes", count * length, limit)
        return
    if length == 0:
        raise DataError("the header declares point records of 0 bytes", str(path))
    ends = [size]
    if head[25] >= 3 and len(head) >= 235:  # start of waveform data packets
        ends.append(struct.unpack_from("<Q", head, 227)[0])
    if head[25] >= 4 and len(head) >= 247 and struct.unpack_from("<I", head, 243)[0]:  # start of the first EVLR
        ends.append(struct.unpack_from("<Q", head, 235)[0])
    end = min([e for e in ends[1:] if offset <= e < size] + [size])
    held = (end - offset) // length if end >= offset else 0
    if held != count:
        raise DataError(f"the header declares {count:,} points of {length} bytes from byte {offset:,}, the file holds "
                        f"{held:,} ({max(end - offset, 0):,} bytes of point records); expected the count to match the "
                        "size (truncated or corrupt file?)", str(path))


def _arrays(path: str) -> dict[str, np.ndarray]:
    import laspy

    with laspy.open(path) as reader:
        las = reader.read()
    out = {"xyz": np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1)}
    for name in las.point_format.dimension_names:
        if name not in ("X", "Y", "Z"):
            out[f"field_{name}"] = np.asarray(las[name])
    return out


def _cap_memory(limit: int) -> None:
    """Bound the child's address space: a corrupt LAZ chunk table can make lazrs allocate
    without limit (the kernel then kills whatever is largest on a shared machine)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
        budget = max(512 << 20, 4 * max_decoded_bytes(limit))  # the decoded points and a few copies
        resource.setrlimit(resource.RLIMIT_AS, (mapped + budget, mapped + budget))
    except (ImportError, OSError, ValueError):  # not Linux: no cap
        pass


def _child(path: str, limit: int, conn) -> None:
    import faulthandler
    import os

    faulthandler.disable()  # a crash is reported once, by the parent, as a DataError naming the file
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # and lazrs' panic backtrace is not the user's business
    _cap_memory(limit)
    try:
        stream = io.BytesIO()
        np.savez(stream, **_arrays(path))
        conn.send_bytes(b"A" + stream.getvalue())
    except Exception as exc:
        conn.send_bytes(b"E" + f"{type(exc).__name__}: {exc}".encode("utf-8", "replace"))
    finally:
        conn.close()


def _arrays_in_child(path: Path, limit: int) -> dict[str, np.ndarray]:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(str(path), limit, send), daemon=True)
    child.start()
    send.close()
    try:
        message = receive.recv_bytes() if receive.poll(LAZ_SECONDS) else b"T"
    except EOFError:
        message = None
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join()
    if message == b"T":
        raise DataError(f"decoding did not finish in {LAZ_SECONDS} s; the file is corrupt or far larger than "
                        "its header says", str(path))
    if message is None:
        raise DataError(f"the LAZ decoder (lazrs) crashed on this file (exit code {child.exitcode}): the file is "
                        "corrupt", str(path))
    if message[:1] == b"E":
        raise ValueError(message[1:].decode("utf-8", "replace"))
    with np.load(io.BytesIO(message[1:]), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def read_las(path: Path, limit: int) -> PointFile:
    try:
        import laspy
    except ImportError:
        raise DataError(f"reading {path.suffix} files needs laspy: {_EXTRA}", str(path)) from None
    _check_record_counts(path)
    try:
        with laspy.open(str(path)) as reader:
            count, compressed = int(reader.header.point_count), bool(reader.header.are_points_compressed)
        check_declared(path, "LAS points", count, limit)
        _check_point_data(path, count, compressed, limit)
        if compressed and not laspy.LazBackend.detect_available():
            raise DataError(f"reading compressed (LAZ) points needs a LAZ backend: {_EXTRA}", str(path))
        arrays = _arrays_in_child(path, limit) if compressed else _arrays(str(path))
    except DataError:
        raise
    except Exception as exc:  # laspy.LaspyException, struct / numpy errors on short files
        raise DataError(f"cannot read this {path.suffix} file (laspy: {type(exc).__name__}: {exc}); expected a valid "
                        "LAS 1.0-1.4 or LAZ file", str(path)) from None
    points = check_points(path, arrays.pop("xyz"))
    fields = {name[len("field_"):]: values for name, values in arrays.items()}
    colors = None
    if all(k in fields for k in _COLOR):  # 16-bit colour, or 8-bit values in 16-bit fields
        rgb = np.stack([fields.pop(k) for k in _COLOR], axis=1)
        colors = (rgb >> 8 if rgb.size and rgb.max() > 255 else rgb).astype(np.uint8)
    return PointFile(points, None, colors, fields)
