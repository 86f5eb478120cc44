"""The test suite as a package, so its helpers import the same way under any pytest import mode.

Fixtures shared by several files live in ``conftest.py`` (pytest finds them without an import).
Plain helpers that tests call with arguments (the file writers of ``data_files.py``, the
settings and app launchers of ``tiny_run.py``) stay ordinary modules, imported relatively
(``from .data_files import write_off``): that resolves through this package, not through the
``tests/`` folder that pytest's default "prepend" mode happens to put on ``sys.path``, so it
also works with ``--import-mode=importlib`` and never picks up another project's ``tiny_run``.
"""
