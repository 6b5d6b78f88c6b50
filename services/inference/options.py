"""The command line every inference program shares: common options and the ShimConfig they make."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

__all__ = ["MIB", "ShimConfig", "add_common_arguments", "add_onnxruntime_arguments",
           "config_from_args", "default_threads"]

MIB = 1024 * 1024


@dataclass(frozen=True)
class ShimConfig:
    """Everything the shim needs besides the worker spec."""

    program: str
    model_type: str
    model: str
    host: str
    port: int
    workers: int
    threads: int
    queue_size: int
    request_timeout: float
    start_timeout: float
    max_body_bytes: int
    max_image_pixels: int
    log_level: str = "INFO"


def default_threads(workers: int) -> int:
    """ONNX Runtime / OpenCV threads per worker so that workers x threads <= cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every inference program shares (network, workers, limits)."""
    parser.add_argument("--port", type=_port, required=True, help="HTTP port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--workers", type=_positive_int, default=1, help="worker processes")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads per worker (default: cores // workers)")
    parser.add_argument("--queue-size", type=_positive_int, default=32,
                        help="requests that may wait for a busy worker before 503")
    parser.add_argument("--request-timeout", type=_positive_float, default=30.0,
                        help="seconds a request may wait for and run on a worker")
    parser.add_argument("--start-timeout", type=_positive_float, default=60.0,
                        help="seconds a worker may take to load its model")
    parser.add_argument("--max-body-mb", type=_positive_float, default=20.0,
                        help="largest accepted request body in MiB (larger: 413)")
    parser.add_argument("--max-image-pixels", type=_positive_int, default=100_000_000,
                        help="largest decoded image in pixels (larger: 400)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def add_onnxruntime_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the services whose workers run ONNX Runtime."""
    parser.add_argument("--spin", action=argparse.BooleanOptionalAction, default=False,
                        help="let idle ONNX Runtime intra-op threads spin: lower latency, busy "
                             "idle cores (default: --no-spin)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), or the GPUs to run on (uuids or indices, comma "
                             "separated): the CUDA execution provider on the first of them")
    parser.add_argument("--gpu-fallback", choices=["cpu"], default=None,
                        help="with --device: run on the CPU when the CUDA provider is not "
                             "usable (default: fail to start)")


def config_from_args(program: str, model_type: str, model: str,
                     args: argparse.Namespace) -> ShimConfig:
    """The ShimConfig for parsed common options (threads default to cores // workers)."""
    return ShimConfig(
        program=program, model_type=model_type, model=model, host=args.host, port=args.port,
        workers=args.workers, threads=args.threads or default_threads(args.workers),
        queue_size=args.queue_size, request_timeout=args.request_timeout,
        start_timeout=args.start_timeout, max_body_bytes=int(args.max_body_mb * MIB),
        max_image_pixels=args.max_image_pixels, log_level=args.log_level,
    )
