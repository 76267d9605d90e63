"""``rlstack``: the one entry point. Each sub-command lives in its own module and is imported lazily
so that ``rlstack --help`` is instant and the library works without rclpy installed.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Commands configured by
Hydra take trailing ``key=value`` overrides (``rlstack train policy=bc train.steps=200``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

# name -> (module, one-line help). Order follows the data flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("sim.cli", "run the PyBullet sim: scripted experts, demo generation, benchmarks"),
    "collect": ("ros_nodes.collect", "start the ROS 2 collection graph (robot, teleop, recorder)"),
    "data": ("robot_learning.data.cli", "inspect and maintain episode stores (info, validate, repair, ...)"),
    "train": ("robot_learning.train.cli", "train a base policy (diffusion, BC) from a store"),
    "eval": ("robot_learning.eval.cli", "evaluate a checkpoint in sim (parallel, seeds, randomization)"),
    "serve": ("robot_learning.serve.cli", "serve a checkpoint over websocket (msgpack, no pickle)"),
    "deploy": ("ros_nodes.deploy", "run a policy as a real-time ROS 2 control node against a robot"),
    "arena": ("robot_learning.arena.cli", "double-blind pairwise A/B policy arena: serve, evaluate, leaderboard"),
    "finetune": ("robot_learning.rl.finetune", "refine a frozen base policy with residual off-policy RL in sim (ResFiT)"),
    "collect-mixed": ("robot_learning.rl.mixed_data", "collect a mixed-quality dataset for a steering critic (experts at chosen qualities, a base's rollouts)"),
    "train-critic": ("robot_learning.rl.train_critic", "train an offline critic (Cal-QL/IQL) and write a value-guided steering policy (V-GPS)"),
    "demo": ("robot_learning.demo", "the whole loop in sim: collect, train, deploy, evaluate"),
}


def build_parser() -> argparse.ArgumentParser:
    """Top-level parser; sub-command arguments are added lazily in ``main``."""
    parser = argparse.ArgumentParser(
        prog="rlstack",
        description="Real-robot learning stack: collect -> store -> train -> refine -> deploy -> evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one sub-command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"rlstack: unknown command '{argv[0]}' (choose from {', '.join(COMMANDS)})", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"rlstack {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OmegaConfBaseException, HydraException) as exc:
        # bad input (config, paths, mismatched data): the message says what and where; the
        # traceback only helps when debugging the stack itself (RLSTACK_TRACEBACK=1)
        if os.environ.get("RLSTACK_TRACEBACK"):
            raise
        print(f"rlstack {name}: error: {_message(exc)}", file=sys.stderr)
        return 2


def _message(exc: BaseException) -> str:
    """One readable line for a user error (OmegaConf's own text carries a multi-line key dump)."""
    text = str(exc).strip()
    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        text = text.splitlines()[0] + (f" (config key {key})" if key else "")
    if isinstance(exc, HydraException):
        text = " ".join(text.splitlines())
        if exc.__cause__ is not None:
            text += f" ({str(exc.__cause__).strip().splitlines()[0]})"
    return text


if __name__ == "__main__":
    sys.exit(main())
