"""``cnet-inference-opencv``: the OpenCV Haar-cascade detection service (face, eye, smile).

``--cascade-file`` runs a custom cascade file instead of the bundled one; ``--cascade`` then
gives its detection settings and the class name of its detections."""
from __future__ import annotations

import argparse
import sys

from services.inference.haar import CASCADES, cascade_path, check_cascade_file
from services.inference.options import add_common_arguments, config_from_args
from services.inference.pool import WorkerSpec
from services.inference.shim import run

PROGRAM = "cnet-inference-opencv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__)
    parser.add_argument("--cascade", required=True, choices=sorted(CASCADES),
                        help="which bundled Haar cascade to run")
    parser.add_argument("--cascade-file", default=None,
                        help="a custom Haar cascade XML file to run instead of the bundled one")
    parser.add_argument("--within-faces", action="store_true",
                        help="eye/smile: search only inside detected faces")
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = (check_cascade_file(args.cascade_file) if args.cascade_file is not None
                else cascade_path(args.cascade))
    except ValueError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 2
    config = config_from_args(PROGRAM, "opencv", path, args)
    spec = WorkerSpec("haar", {"cascade": args.cascade, "within_faces": args.within_faces,
                               "threads": config.threads, "cascade_file": args.cascade_file})
    return run(config, spec)


if __name__ == "__main__":
    sys.exit(main())
