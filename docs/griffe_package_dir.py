"""Griffe extension for the API reference: load the folders that setup.cfg's ``package_dir``
maps into the ``any2point`` namespace (``any2point.backbones = backbones``, ...).

Griffe reads packages from disk and finds submodules by walking the package's own folder, so
``backbones/`` at the top of the repository is invisible under ``any2point``. Dynamic
inspection is no way out: it imports every module, ``__main__`` modules included, which run
their command. This extension reads the mapping from setup.cfg (one copy of it) and, when the
``any2point`` package has been loaded, visits each mapped folder statically as its submodule.
"""
from __future__ import annotations

import configparser
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(setup_cfg: Path = ROOT / "setup.cfg") -> dict[str, Path]:
    """``{dotted package: folder}`` of setup.cfg's ``[options] package_dir``, beyond the identity."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    mapping = {}
    for line in parser.get("options", "package_dir").splitlines():
        name, sep, folder = (part.strip() for part in line.partition("="))
        if sep and name != folder:
            mapping[name] = (setup_cfg.parent / folder).resolve()
    return mapping


class PackageDirs(griffe.Extension):
    """Attach every mapped folder to its parent package once that package is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        for dotted, folder in package_dirs().items():
            parent_path, _, name = dotted.rpartition(".")
            if parent_path == pkg.path and name not in pkg.members:
                module = self._visit_package(name, folder, pkg, loader)
                pkg.set_member(name, module)
                loader.expand_exports(module)
                loader.expand_wildcards(module, external=False)

    def on_package_loaded(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        """The same hook under its griffe 1 name (attaching twice is a no-op)."""
        self.on_package(pkg=pkg, loader=loader)

    def _visit_package(self, name: str, folder: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
        module = self._visit(name, folder / "__init__.py", parent, loader)
        for path in sorted(folder.iterdir()):
            if path.suffix == ".py" and path.stem not in ("__init__", "__main__"):
                module.set_member(path.stem, self._visit(path.stem, path, module, loader))
            elif path.is_dir() and (path / "__init__.py").is_file():
                module.set_member(path.name, self._visit_package(path.name, path, module, loader))
        return module

    @staticmethod
    def _visit(name: str, path: Path, parent: griffe.Module, loader: griffe.GriffeLoader) -> griffe.Module:
        return griffe.visit(name, path, path.read_text(encoding="utf-8-sig"), parent=parent,
                            extensions=loader.extensions, docstring_parser=loader.docstring_parser,
                            docstring_options=loader.docstring_options, lines_collection=loader.lines_collection,
                            modules_collection=loader.modules_collection)
