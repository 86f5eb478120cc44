"""Where pretrained weights come from, and the checks every weights file passes before it is read.

The order, for every source:

1. an explicit local file or folder given in config (``source.weights=PATH``);
2. an installed package that ships the weights (works offline);
3. the Hugging Face hub, through its cache.

With no network and no local copy, the error names the file to download, the URL and the
config key to point at a local copy.

The rules (docs/security.md says them for users):

- a weights path must be a regular file, or a folder where a folder is expected (transformers
  folders); a FIFO, a device or a socket is refused before anything opens it, and the size is
  checked before anything reads it (:func:`regular_file`, :func:`local_weights`);
- a file found in a cache is used only when its content hashes to the digest expected of it.
  A Hugging Face hub cache file is a link to ``blobs/<name>`` where ``<name>`` is the SHA-256 of
  the content (files stored with Git LFS, i.e. every weights file) or the git blob SHA-1 (small
  files such as ``config.json``): the content is hashed and compared with the name
  (:func:`hub_file`). Files any2point derives itself have their own rule (imagebind_audio);
- the SHA-256 of the weights a source loaded (:func:`file_sha256`; :func:`manifest_sha256` for
  a folder of several files) is its *weights identity*: checkpoints record it, never a path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import stat
from pathlib import Path
from typing import Iterable

from any2point.errors import WeightsUnavailableError

__all__ = ["cache_dir", "package_dir", "local_weights", "unavailable", "hub_offline", "hf_hub_cached",
           "regular_file", "read_regular_file", "file_sha256", "manifest_sha256", "hub_file", "verified_hub_blob",
           "MAX_WEIGHTS_BYTES"]

MAX_WEIGHTS_BYTES = 64 << 30  # 64 GiB: more than any source's weights (ImageBind-Huge: 4.5 GB)
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def cache_dir() -> Path:
    """any2point's own cache (derived weights such as the ImageBind audio part)."""
    root = os.environ.get("ANY2POINT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "any2point")
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file (or a link to one) where the folder should be, no permission, ...
        raise WeightsUnavailableError(f"any2point's cache folder {path} cannot be used: "
                                      f"{exc.strerror or exc}; set ANY2POINT_CACHE to a folder you can write") from None
    if not path.is_dir():
        raise WeightsUnavailableError(f"any2point's cache folder {path} is not a folder; set ANY2POINT_CACHE to a "
                                      f"folder you can write")
    return path


def hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ANY2POINT_OFFLINE"))


def hf_hub_cached(repo_id: str, filenames=("model.safetensors", "pytorch_model.bin")) -> bool:
    """Whether the Hugging Face cache already holds weights of ``repo_id`` (no network, no hashing:
    :func:`hub_file` verifies them when they are used)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in filenames)


def package_dir(package: str, *parts: str) -> Path | None:
    """Folder ``parts`` inside an installed package, or None when the package is absent."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_regular(st: os.stat_result, path: Path, source: str, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise WeightsUnavailableError(f"{source}: {path} is {_kind(st.st_mode)}, not a regular file; the {what} "
                                      f"must be a file")
    if st.st_size == 0:
        raise WeightsUnavailableError(f"{source}: {path} is empty; the {what} holds the weights' tensors")
    if st.st_size > MAX_WEIGHTS_BYTES:
        raise WeightsUnavailableError(f"{source}: {path} is {st.st_size} bytes, more than the {MAX_WEIGHTS_BYTES} "
                                      f"a weights file may have")


def regular_file(path: str | os.PathLike, source: str, what: str = "weights file") -> Path:
    """``path`` when it (or what its links point to) is a regular, non-empty file of at most
    :data:`MAX_WEIGHTS_BYTES`; anything else is refused without opening it."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise WeightsUnavailableError(f"{source}: the {what} {p} does not exist") from None
    except OSError as exc:
        raise WeightsUnavailableError(f"{source}: cannot read the {what} {p}: {exc.strerror or exc}") from None
    _check_regular(st, p, source, what)
    return p


def _open_checked(p: Path, source: str, what: str):
    """``p`` opened for reading without blocking, after checking what was opened (not its name):
    a regular, non-empty file of at most :data:`MAX_WEIGHTS_BYTES`. Returns (file, stat)."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise WeightsUnavailableError(f"{source}: the {what} {p} does not exist") from None
    except OSError as exc:
        raise WeightsUnavailableError(f"{source}: cannot read the {what} {p}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _check_regular(st, p, source, what)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb"), st


def read_regular_file(path: str | os.PathLike, source: str, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. The size is checked on the open
    descriptor (opened without blocking, so a FIFO or a file swapped for one is refused, not
    waited on) before anything is allocated."""
    p = Path(path)
    f, st = _open_checked(p, source, what)
    with f:
        if st.st_size > limit:
            raise WeightsUnavailableError(f"{source}: {p} is {st.st_size} bytes, more than the {limit} a {what} "
                                          f"may have")
        # the size fstat gave, plus one byte to notice a file that grew (read(n) reserves n bytes at once)
        data = f.read(st.st_size + 1)
    if len(data) != st.st_size:
        raise WeightsUnavailableError(f"{source}: {p} changed size while it was read ({st.st_size} bytes, then "
                                      f"{len(data)}); read it again when nothing writes it")
    return data


def local_weights(path: str | os.PathLike | None, source: str, config_key: str = "source.weights",
                  folder: bool = False) -> Path | None:
    """The explicit local copy from config, checked before anything reads it: a regular file
    that is not a TorchScript archive, or a folder when ``folder`` (transformers folders); None
    when none was given."""
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    try:
        st = p.stat()
    except OSError:
        raise WeightsUnavailableError(f"{source}: the local weights given by {config_key}={path} do not exist "
                                      f"(looked at {p.absolute()})") from None
    if folder:
        if not stat.S_ISDIR(st.st_mode):
            raise WeightsUnavailableError(f"{source}: {config_key}={path} is {_kind(st.st_mode)}; a folder is "
                                          f"expected (a transformers folder with config.json and the weights)")
        return p
    if stat.S_ISDIR(st.st_mode):
        raise WeightsUnavailableError(f"{source}: {config_key}={path} is a directory; a weights file is expected "
                                      f"(.safetensors, or a state dict saved with torch.save)")
    _check_regular(st, p, source, f"weights file given by {config_key}")
    from .tensor_files import refuse_torchscript  # here: listing sources does not import torch

    refuse_torchscript(p, source)  # before any source builds anything
    return p


def file_sha256(path: str | os.PathLike, source: str) -> str:
    """SHA-256 (hex) of a weights file, read in 1 MiB chunks. The file is opened without
    blocking and checked again on the open descriptor, so a FIFO swapped in is refused too."""
    p = Path(path)
    f, _ = _open_checked(p, source, "weights file")
    with f:
        digest = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_sha256(digests: dict[str, str]) -> str:
    """One identity for weights spread over several files (a transformers folder, sharded
    weights): the SHA-256 of ``sha256sum``-style lines ``<digest>  <name>``, sorted by name."""
    lines = "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def _git_blob_sha1(path: Path, source: str) -> str:
    f, st = _open_checked(path, source, "hub cache file")  # checked on what was opened, not on the name
    with f:
        digest = hashlib.sha1(f"blob {st.st_size}\0".encode())
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verified_hub_blob(path: str | os.PathLike, source: str) -> str:
    """SHA-256 of a Hugging Face hub cache file, after checking its content against the name of
    the blob it links to; a blob that is not named by a digest, or whose content hashes to
    something else, is refused (the error says to delete it and download again)."""
    link = Path(path)
    blob = link.resolve()
    regular_file(blob, source, "hub cache file")
    name = blob.name
    if _SHA256.fullmatch(name):
        actual = file_sha256(blob, source)
        if actual == name:
            return actual
        found = f"hashes to SHA-256 {actual}"
    elif _SHA1.fullmatch(name):
        actual = _git_blob_sha1(blob, source)
        if actual == name:
            return file_sha256(blob, source)
        found = f"hashes to git blob SHA-1 {actual}"
    else:
        raise WeightsUnavailableError(
            f"{source}: the hub cache file {link} cannot be verified: it is not a link to a blob named by its digest "
            f"(found {blob}); delete it and download again, or pass a local copy with source.weights=")
    raise WeightsUnavailableError(f"{source}: the hub cache file {link} (blob {name}) {found}: it is damaged or was "
                                  f"replaced; delete {blob} and download again")


def hub_file(repo_id: str, filenames: Iterable[str], source: str, revision: str | None = None) -> tuple[Path, str]:
    """The first of ``filenames`` that the hub repository ``repo_id`` has, from the cache (or
    downloaded when online), verified by :func:`verified_hub_blob`: (path, SHA-256).

    Raises :class:`WeightsUnavailableError` for a damaged cache file; other exceptions
    (offline without a copy, no network, none of the files) are the caller's to word."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    names = list(filenames)
    for name in names:
        cached = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(cached, str):
            return Path(cached), verified_hub_blob(cached, source)
    if hub_offline():
        raise ConnectionError(f"offline (HF_HUB_OFFLINE) and the hub cache holds none of {', '.join(names)}")
    for name in names:
        try:
            path = hf_hub_download(repo_id, name, revision=revision)
        except EntryNotFoundError:
            continue
        return Path(path), verified_hub_blob(path, source)
    raise FileNotFoundError(f"{repo_id} has none of {', '.join(names)}")


def unavailable(source: str, *, what: str, url: str, config_key: str = "source.weights",
                extra: str = "", cause: BaseException | None = None) -> WeightsUnavailableError:
    """The error for weights that could not be found locally nor fetched."""
    msg = (f"{source}: pretrained weights are not available on this machine and could not be downloaded. "
           f"Download {what} from {url} and point {config_key}=/path/to/it at the local copy"
           + (f"; {extra}" if extra else "") + ". Use pretrained=False (source.pretrained=false) for random weights.")
    if cause is not None:
        msg += f" (download failed: {type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''})"
    return WeightsUnavailableError(msg)

