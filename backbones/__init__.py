"""Source-model families, one file each; importing this package registers them all."""
from . import bert, clip_text, imagebind_audio, tiny, vit  # noqa: F401  (registration side effects)
