"""`mfpg-robot export RUN_DIR|CHECKPOINT [--out FILE]`: the policy as ONNX for deployment.

A run folder exports its checkpoints/final.pt (else its newest checkpoint) to
RUN_DIR/policy.onnx; a checkpoint file exports next to its run folder, or next to itself.
The graph and metadata are described in `mfpg_robot.export`. Exit 2 for a checkpoint that
cannot be exported (missing, truncated, corrupt, not of a robot task), 1 when the export
fails its own checks.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained policy to ONNX (normalisation, mean action, clipping inside)",
        description="Write the deterministic policy of a run folder or checkpoint as ONNX: "
        "raw observation in, normalised action in [-1, 1] and physical command out, with the "
        "robot, joints, limits and control rate as metadata.",
    )
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT",
                   help="a run folder (exports checkpoints/final.pt) or a checkpoint file")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="ONNX file to write (default: RUN_DIR/policy.onnx)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mfpg_robot.export import (
        ExportCheckError,
        ExportError,
        PolicyMismatchError,
        export_policy,
        read_metadata,
    )

    try:
        out = export_policy(args.source, args.out)
    except (ExportError, PolicyMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ExportCheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    meta = read_metadata(out)
    obs, act = meta["observation"], meta["action"]
    print(f"exported {meta['checkpoint']}")
    print(f"  robot:       {meta['robot']} (model id {meta['robot_model_id']}), "
          f"{meta['control_rate_hz']:g} Hz")
    print(f"  input:       observation float32 (batch, {obs['shape'][1]}) of {obs['task']}")
    print(f"  outputs:     action (batch, {act['shape'][1]}) in [-1, 1]; command in "
          f"{', '.join(act['command_units'])} for {', '.join(act['joints'])}")
    print(f"  trained on:  {meta['hf_samples']} HF samples ({meta['algo']})")
    print(f"  written:     {out}")
    return 0
