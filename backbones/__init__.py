"""The sources: one file per model family, the source registry (:mod:`.registry`: names ->
factories, and the preset rule of a name) and where pretrained weights come from
(:mod:`.weights`, with the checks of :mod:`.tensor_files` and the converted-weights cache of
:mod:`.derived_cache`). The family files register when the registry first lists or builds a
source (the library prefixes timm:, hf:, open_clip:, in that order, then the named sources)."""
