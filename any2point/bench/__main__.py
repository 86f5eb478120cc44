"""``python -m any2point.bench <subcommand>``: one argparse subcommand per benchmark module."""
from __future__ import annotations

import argparse
import json
import sys

from . import load_subcommand, subcommand_names
from .common import add_common_arguments, apply_common_arguments


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="python -m any2point.bench",
                                     description="Time any2point's building blocks on this machine.")
    subparsers = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    modules, broken = {}, {}
    for name in subcommand_names():
        try:
            modules[name] = load_subcommand(name)
        except Exception as exc:  # one broken benchmark must not hide the others
            broken[name] = f"{type(exc).__name__}: {exc}"
            subparsers.add_parser(name, help=f"(unavailable: {broken[name]})")
            continue
        sub = subparsers.add_parser(name, help=modules[name].HELP, description=modules[name].HELP)
        add_common_arguments(sub)
        modules[name].add_arguments(sub)
    return parser, {"modules": modules, "broken": broken}


def main(argv: list[str] | None = None) -> int:
    parser, found = build_parser()
    args = parser.parse_args(argv)
    if args.subcommand in found["broken"]:
        parser.error(f"benchmark {args.subcommand!r} cannot run: {found['broken'][args.subcommand]}")
    module = found["modules"][args.subcommand]
    try:
        apply_common_arguments(args)
    except ValueError as exc:  # --threads / --device the machine cannot honour
        parser.error(str(exc))
    result = module.run(args)
    if args.json:
        print(json.dumps(result))
    else:
        report = getattr(module, "report", None)
        print(report(result) if report else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
