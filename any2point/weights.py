"""Where pretrained weights come from, in one order for every source:

1. an explicit local file or folder given in config (``source.weights=PATH``);
2. an installed package that ships the weights (works offline);
3. the model hub or the official URL, through the library's own cache.

With no network and no local copy, the error names the file to download, the URL and the
config key to point at a local copy.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import WeightsUnavailableError

__all__ = ["cache_dir", "package_dir", "local_weights", "unavailable", "hub_offline", "hf_hub_cached"]


def cache_dir() -> Path:
    """any2point's own cache (derived weights such as the ImageBind audio part)."""
    root = os.environ.get("ANY2POINT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "any2point")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ANY2POINT_OFFLINE"))


def hf_hub_cached(repo_id: str, filenames=("model.safetensors", "pytorch_model.bin")) -> bool:
    """Whether the Hugging Face cache already holds weights of ``repo_id`` (no network)."""
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


def local_weights(path: str | os.PathLike | None, source: str, config_key: str = "source.weights") -> Path | None:
    """The explicit local copy from config, checked to exist; None when none was given."""
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise WeightsUnavailableError(
            f"{source}: the local weights given by {config_key}={path} do not exist (looked at {p.resolve()})")
    return p


def unavailable(source: str, *, what: str, url: str, config_key: str = "source.weights",
                extra: str = "", cause: BaseException | None = None) -> WeightsUnavailableError:
    """The error for weights that could not be found locally nor fetched."""
    msg = (f"{source}: pretrained weights are not available on this machine and could not be downloaded. "
           f"Download {what} from {url} and point {config_key}=/path/to/it at the local copy"
           + (f"; {extra}" if extra else "") + ". Use pretrained=False (source.pretrained=false) for random weights.")
    if cause is not None:
        msg += f" (download failed: {type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''})"
    return WeightsUnavailableError(msg)
