"""The ``cnet`` commands that talk to an agent: submit, ls, get, stop, rm, scale, logs, resources,
nodes, health (over the ZeroMQ bus by default, over REST with ``--rest``) and ``watch``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from .client import ClientError, SyncClient

__all__ = ["DEFAULT_URL", "add_commands", "format_event"]

DEFAULT_URL = "http://127.0.0.1:8080"
Command = Callable[[argparse.Namespace], int]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the agent-client commands to the ``cnet`` parser's subcommands."""

    def client_cmd(name: str, help_: str, func: Command, rest: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--url", default=os.environ.get("CNET_URL", DEFAULT_URL),
                       help=f"agent HTTP address (env CNET_URL, default {DEFAULT_URL})")
        c.add_argument("--token", default=os.environ.get("CNET_API_TOKEN"),
                       help="API token (env CNET_API_TOKEN)")
        c.add_argument("--curve-dir", default=os.environ.get("CNET_CURVE_DIR"),
                       help="CurveZMQ keys directory holding client.key_secret (env CNET_CURVE_DIR)")
        c.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the agent")
        if rest:
            c.add_argument("--rest", action="store_true", help="use the REST API instead of the bus")
        c.set_defaults(func=func, _name=name, rest=False)
        return c

    c = client_cmd("submit", "submit a workload", _cmd_submit)
    c.add_argument("-f", "--file", help="workload file, YAML or JSON ('-' for stdin)")
    c.add_argument("--name")
    c.add_argument("--type", default="process")
    c.add_argument("--cpu", type=float, default=0.0)
    c.add_argument("--memory", type=int, default=0, help="bytes")
    c.add_argument("--gpu", type=int, default=0)
    c.add_argument("command", nargs=argparse.REMAINDER, help="for a process: -- COMMAND [ARGS...]")
    c = client_cmd("ls", "list workloads", _cmd_ls)
    c.add_argument("--status")
    c.add_argument("--type")
    c.add_argument("--json", action="store_true")
    for name, help_ in (("get", "show a workload"), ("stop", "stop a workload"),
                        ("rm", "stop and delete a workload")):
        c = client_cmd(name, help_, _cmd_one)
        c.add_argument("id")
    c = client_cmd("scale", "grow or shrink a replica set", _cmd_scale)
    c.add_argument("id")
    c.add_argument("replicas", type=int, help="the set's new member count")
    c = client_cmd("logs", "show a workload's log tail", _cmd_logs)
    c.add_argument("id")
    c.add_argument("--tail", type=int, default=100)
    client_cmd("resources", "this node's resources", _cmd_show)
    client_cmd("nodes", "this node and its neighbours", _cmd_show)
    client_cmd("health", "agent health", _cmd_show)
    c = client_cmd("watch", "print the agent's events as they happen (Ctrl-C to stop)", _cmd_watch,
                   rest=False)
    c.add_argument("--json", action="store_true", help="one JSON object per line")


class _RestClient:
    """The REST client behind :class:`SyncClient`'s interface (``--rest``)."""

    def __init__(self, url: str, token: str | None, timeout: float):
        from .http_client import HttpClient
        self._http = HttpClient(url if "://" in url else f"http://{url}", token, timeout)

    @staticmethod
    def _call(method: Callable[..., Any], *args: Any) -> Any:
        from .http_client import ApiError
        try:
            return method(*args)
        except ApiError as exc:
            raise ClientError(exc.status, exc.code, exc.message) from None

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"workload": self._call(self._http.submit, spec)}

    def list(self, status: str | None = None, type: str | None = None) -> dict[str, Any]:
        return self._call(self._http.list, status, type)

    def get(self, workload_id: str) -> dict[str, Any]:
        return self._call(self._http.get, workload_id)

    def stop(self, workload_id: str) -> dict[str, Any]:
        return self._call(self._http.stop, workload_id)

    def delete(self, workload_id: str) -> dict[str, Any]:
        return self._call(self._http.delete, workload_id)

    def scale(self, set_id: str, replicas: int) -> dict[str, Any]:
        return self._call(self._http.scale, set_id, replicas)

    def logs(self, workload_id: str, tail: int = 100) -> str:
        return self._call(self._http.logs, workload_id, tail)

    def resources(self) -> dict[str, Any]:
        return self._call(self._http.resources)

    def nodes(self) -> dict[str, Any]:
        return self._call(self._http.nodes)

    def health(self) -> dict[str, Any]:
        return self._call(self._http.health)

    def close(self) -> None:
        """Nothing to release: every REST call opens and closes its own connection."""


def _client(args: argparse.Namespace) -> SyncClient | _RestClient:
    if args.rest:
        return _RestClient(args.url, args.token, args.timeout)
    return SyncClient(args.url, token=args.token, timeout=args.timeout, curve_dir=args.curve_dir)


def _run(args: argparse.Namespace, call: Callable[[Any], Any]) -> int:
    """Run ``call(client)``; print its result (text as is, anything else as JSON) or the error."""
    client = _client(args)
    try:
        result = call(client)
    except ClientError as exc:
        print(f"cnet {args._name}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if isinstance(result, str):
        sys.stdout.write(result)
    elif result is not None:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    if args.file:
        try:
            with contextlib.nullcontext(sys.stdin) if args.file == "-" else open(args.file) as f:
                spec = yaml.safe_load(f.read())    # YAML, and so JSON too
        except (OSError, ValueError, yaml.YAMLError) as exc:
            print(f"cnet submit: cannot read {args.file}: {exc}", file=sys.stderr)
            return 2
    else:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command or not args.name:
            print("cnet submit: give -f FILE, or --name NAME -- COMMAND [ARGS...]", file=sys.stderr)
            return 2
        spec = {"name": args.name, "type": args.type,
                "config": {"command": command[0], "args": command[1:]},
                "requirements": {"cpu": args.cpu, "memory": args.memory, "gpu": args.gpu}}
    return _run(args, lambda c: c.submit(spec)["workload"])


def _cmd_ls(args: argparse.Namespace) -> int:
    def table(client: Any) -> str | dict:
        result = client.list(args.status, args.type)
        if args.json:
            return result
        rows = [("ID", "NAME", "TYPE", "STATUS", "NODE", "PID", "ENDPOINT")]
        for wl in result["workloads"]:
            rows.append((wl["id"], wl["name"], wl["type"], wl["status"], wl["node_id"],
                         str(wl.get("process_pid") or "-"), wl.get("endpoint") or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n"
                       for row in rows)
    return _run(args, table)


def _cmd_one(args: argparse.Namespace) -> int:
    op = {"get": "get", "stop": "stop", "rm": "delete"}[args._name]
    return _run(args, lambda c: getattr(c, op)(args.id))


def _cmd_scale(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.scale(args.id, args.replicas))


def _cmd_logs(args: argparse.Namespace) -> int:
    return _run(args, lambda c: c.logs(args.id, args.tail))


def _cmd_show(args: argparse.Namespace) -> int:
    return _run(args, lambda c: getattr(c, args._name)())


def _cmd_watch(args: argparse.Namespace) -> int:
    client = SyncClient(args.url, token=args.token, timeout=args.timeout, curve_dir=args.curve_dir)
    try:
        with contextlib.closing(client.watch()) as events:
            for event in events:
                line = json.dumps(event, ensure_ascii=False) if args.json else format_event(event)
                print(line, flush=True)
    except ClientError as exc:
        print(f"cnet watch: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            client.close()
    return 0


# -- human-readable events -------------------------------------------------------------------

def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _clock(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        ts = time.time()
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def format_event(event: dict[str, Any]) -> str:
    """One line for a :meth:`cnet.client.Client.watch` event, e.g.
    ``12:00:01.123 [jiangsu] workload 3f2a… sleeper (process) running``."""
    kind = event.get("type", "?")
    if kind == "connected":
        return f"{_clock(None)} watching {event.get('node_id') or '?'} ({event.get('pub')}); Ctrl-C to stop"
    head = f"{_clock(event.get('time'))} [{event.get('source', '?')}] {kind}"
    if kind == "resources":
        res = event.get("resources", {})
        alloc, cap = res.get("allocated", {}), res.get("capacity", {})
        count = (event.get("workloads") or {}).get("count")
        text = (f"{head} {event.get('node_id')}: allocated cpu {alloc.get('cpu', 0):g}/{cap.get('cpu', 0):g}"
                f"  memory {_size(alloc.get('memory', 0))}/{_size(cap.get('memory', 0))}"
                f"  gpu {alloc.get('gpu', 0)}/{cap.get('gpu', 0)}")
        return text + (f"  workloads {count}" if count is not None else "")
    if kind == "workload":
        wl = event.get("workload", {})
        text = f"{head} {wl.get('id')} {wl.get('name')} ({wl.get('type')}) {wl.get('status')} on {wl.get('node_id')}"
        if wl.get("exit_code") is not None:
            text += f" exit {wl['exit_code']}"
        return text + (f" error: {wl['error']}" if wl.get("error") else "")
    if kind == "workload_deleted":
        return f"{head} {event.get('id')} on {event.get('node_id')}"
    if kind == "node":
        return (f"{head} {event.get('node_id')} ({event.get('role')}) {event.get('status')}"
                f" {event.get('address') or ''}").rstrip()
    rest = {k: v for k, v in event.items() if k not in ("type", "source", "time")}
    return f"{head} {json.dumps(rest, ensure_ascii=False)}"
