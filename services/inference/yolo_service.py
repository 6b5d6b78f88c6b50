"""``cnet-inference-yolo``: the YOLO object-detection service (ONNX Runtime workers behind the shim)."""
from __future__ import annotations

import argparse
import os
import sys

from services.inference.options import add_common_arguments, add_onnxruntime_arguments, config_from_args
from services.inference.pool import WorkerSpec
from services.inference.shim import run
from services.inference.yolo import LAYOUTS

PROGRAM = "cnet-inference-yolo"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    parser.add_argument("--model", required=True, help="path of the ONNX model")
    parser.add_argument("--layout", choices=LAYOUTS, default=None,
                        help="output layout (default: detected from the model)")
    add_common_arguments(parser)
    add_onnxruntime_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = os.path.abspath(args.model)
    if not os.path.isfile(model):
        print(f"{PROGRAM}: error: model file not found: {args.model}", file=sys.stderr)
        return 2
    config = config_from_args(PROGRAM, "yolo", args.model, args)
    options = {"model": model, "threads": config.threads, "layout": args.layout, "spin": args.spin}
    env = {}
    if args.device != "cpu":
        # The workers see exactly these GPUs; their CUDA device 0 is the first.
        env["CUDA_VISIBLE_DEVICES"] = args.device
        options.update(device="cuda", gpu_fallback=args.gpu_fallback)
    spec = WorkerSpec("yolo", options, env)
    return run(config, spec)


if __name__ == "__main__":
    sys.exit(main())
