"""``rlstack train``: compose ``configs/train.yaml`` with overrides and run the one training loop.

Examples::

    rlstack train policy=diffusion task=lift data.store=data/lift.zarr out_dir=runs/lift_dp
    rlstack train policy=bc policy.params.head=gmm train.steps=5000
    torchrun --nproc_per_node 2 -m robot_learning.train.cli policy=bc train.device=cpu   # DDP
"""

from __future__ import annotations

import argparse
import sys

from robot_learning.config import compose


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Hydra overrides plus a flag to print the composed config."""
    parser.description = (
        "Train a base policy (diffusion or BC) from an episode store. Config: configs/train.yaml with groups "
        "policy/ (diffusion, bc, bc_gmm), task/ and train/ (default, toy); every key can be overridden, e.g. "
        "'train.steps=2000 policy.params.num_inference_steps=16'. Re-running with the same out_dir resumes "
        "from out_dir/checkpoints/latest.pt. Outputs: out_dir/policy.pt (deployable EMA checkpoint), "
        "config.yaml, metrics.csv, tb/ (TensorBoard). Multi-process: torchrun --nproc_per_node N -m "
        "robot_learning.train.cli ..."
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides key=value (e.g. policy=bc train.steps=200)")
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")


def run(args: argparse.Namespace) -> int:
    """Compose, validate and train."""
    from omegaconf import OmegaConf

    cfg = compose("train", args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from robot_learning.train.loop import train

    path = train(cfg)
    print(f"policy checkpoint: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m robot_learning.train.cli`` (used under torchrun)."""
    parser = argparse.ArgumentParser(prog="robot_learning.train.cli")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
