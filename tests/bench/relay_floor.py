"""The least a Python relay can cost on this box: a baseline for bench_replicas.py.

Bare asyncio streams, no HTTP framework and no checks: each client connection gets its own
kept-alive connection to the one replica; a request's head and Content-Length body are read
whole, ``/svc/<set>`` is cut off its target, and the bytes go on unchanged; the answer comes
back the same way. Whatever the router costs beyond this is our code and Tornado's.

    python tests/bench/relay_floor.py --port N --replica http://127.0.0.1:M
"""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import urlsplit


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 message (head and Content-Length body) as it came."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (await reader.readexactly(length) if length else b"")


async def relay(host: str, port: int, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    up_reader, up_writer = await asyncio.open_connection(host, port)
    try:
        while True:
            request = await read_message(reader)
            method, _, rest = request.partition(b" ")
            target, _, rest = rest.partition(b" ")
            _, _, after = target.removeprefix(b"/svc/").partition(b"/")
            up_writer.write(b"%s /%s %s" % (method, after, rest))
            writer.write(await read_message(up_reader))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        up_writer.close()


async def serve(port: int, replica: str) -> None:
    parts = urlsplit(replica)
    server = await asyncio.start_server(
        lambda r, w: relay(parts.hostname, parts.port, r, w), "127.0.0.1", port)
    print(json.dumps({"event": "listening", "port": port}), flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--replica", required=True, help="the replica's base URL")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.replica))


if __name__ == "__main__":
    main()
