"""Source-model families, one file each; importing this package registers them all (the
library prefixes timm:, hf:, open_clip:, in that order, and the named presets)."""
from . import vit, hf, clip_visual, imagebind_audio, tiny, dinov2_small, e5_small  # noqa: F401  (registration side effects)
