"""Source-model families, one file each; importing this package registers them all."""
from . import bert, tiny, vit  # noqa: F401  (registration side effects)
