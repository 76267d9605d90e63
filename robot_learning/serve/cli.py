"""``rlstack serve``: serve a policy checkpoint (or a built-in scripted policy) over websocket."""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``rlstack serve``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="policy checkpoint file (written by `rlstack train`)")
    src.add_argument("--scripted", help="built-in scripted policy for sim, e.g. expert:lift")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0 picks a free one)")
    parser.add_argument("--device", default="cpu", help="torch device for checkpoints: cpu, cuda, auto")
    parser.add_argument("--control-hz", type=float, default=10.0, help="rate of a --scripted policy")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="diffusion: denoising steps")


def run(args: argparse.Namespace) -> int:
    """Load the policy and serve until Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from robot_learning.serve.server import PolicyServer

    try:
        if args.scripted:
            from robot_learning.deploy.scripted import make_scripted

            policy = make_scripted(args.scripted, control_hz=args.control_hz)
            name = args.scripted
        else:
            from robot_learning.policies.checkpoint import load_policy

            policy = load_policy(args.checkpoint, device=args.device, num_inference_steps=args.num_inference_steps)
            name = str(args.checkpoint)
    except (OSError, ValueError) as exc:
        print(f"rlstack serve: cannot load the policy: {exc}", file=sys.stderr)
        return 2
    from robot_learning.policies.base import warm_up

    warm_up(policy)  # build lazily compiled inference graphs now, not inside the first client's timeout
    server = PolicyServer(policy, host=args.host, port=args.port, name=name)
    print(f"serving {name} on ws://{args.host}:{args.port} spec={policy.spec.to_dict()}", flush=True)
    try:
        server.serve_forever()
    except OSError as exc:  # port in use, address not available
        print(f"rlstack serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
