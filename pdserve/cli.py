"""`pdserve` command line: one subcommand per room, each imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module with `add_arguments(parser)` and `main(args) -> int`
_COMMANDS = {
    "generate": ("pdserve.engine.cli", "generate text with the in-process engine (streams)"),
    "serve": ("pdserve.server.cli", "OpenAI-compatible HTTP server over one worker"),
    "bench": (
        "pdserve.bench.cli",
        "benchmarks: `bench serve` (any OpenAI server), `bench offline`",
    ),
    "up": ("pdserve.cluster.cli", "a fleet of instances behind one controller"),
    "sim": ("pdserve.sim.cli", "simulate a fleet on a workload"),
    "plan": ("pdserve.sim.plan_cli", "search fleets for the best goodput per dollar"),
    "profile": ("pdserve.sim.profile_cli", "measure step times on this device"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in _COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_text)
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _available()
    parser = argparse.ArgumentParser(prog="pdserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # With no subcommand, `pdserve` runs the main job: generate on the embedded default model.
    if not argv or argv[0] not in commands and argv[0] not in ("-h", "--help"):
        argv = ["generate", *argv]
    module = importlib.import_module(commands[argv[0]][0]) if argv[0] in commands else None
    for name, (_, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if module is not None and name == argv[0]:
            module.add_arguments(p)
    args = parser.parse_args(argv)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
