"""A training run's directory: which splits it uses (:mod:`.splits`), its one writer
(:mod:`.lock`), its per-epoch history (:mod:`.history`) and its resumable state
(:mod:`.resume`)."""
