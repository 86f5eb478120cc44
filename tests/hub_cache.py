"""A Hugging Face hub cache written by hand, laid out as huggingface_hub writes it: files under
``snapshots/<commit>/`` are links to ``blobs/<name>``, where ``<name>`` is the SHA-256 of the
content (Git LFS files: weights) or its git blob SHA-1 (small files such as config.json)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def plant_hub_file(cache: Path, repo_id: str, filename: str, data: bytes, *, lfs: bool = True,
                   blob_name: str | None = None, commit: str = COMMIT) -> Path:
    """Write ``data`` as ``filename`` of ``repo_id`` in the hub cache ``cache``; ``blob_name``
    overrides the blob's name (a file that does not match its name). Returns the snapshot link."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    name = blob_name or (hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data))
    blob = repo / "blobs" / name
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    link = repo / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(blob, link.parent))
    return link
