"""A delaying TCP relay for kernels without ``sch_netem``: run inside one machine's namespace,
where iptables REDIRECTs that machine's TCP (in and out) to it, it forwards every connection to
its original destination and holds each chunk ``delay`` seconds in each direction.

    ip netns exec NS python relay.py --port 7999 --mark 119

It prints ``ready`` once listening, then reads commands on stdin: ``delay SECONDS`` (answered
``ok``). Its own upstream connections carry ``SO_MARK`` ``--mark`` so the REDIRECT rule lets
them pass. Stand-alone: no imports from the project.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import time

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h
CHUNK = 65536
QUEUE_CHUNKS = 256            # per direction; a full queue stops reading (backpressure)
CONNECT_TIMEOUT = 5.0


class Relay:
    """Accepts redirected connections and pipes each to where it was going, ``delay`` late."""

    def __init__(self, port: int, mark: int, delay: float = 0.0):
        self.port, self.mark, self.delay = port, mark, delay

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, host = struct.unpack_from("!H", raw, 2)[0], socket.inet_ntoa(raw[4:8])
            if port == self.port:           # reached directly, not through a REDIRECT
                raise OSError("not a redirected connection")
            up_reader, up_writer = await asyncio.wait_for(self._connect(host, port), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        pipes = {asyncio.create_task(self._pipe(reader, up_writer)),
                 asyncio.create_task(self._pipe(up_reader, writer))}
        # Both directions run to their EOF; a reset on either side ends the connection.
        done, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        for task in done:
            task.exception()        # a reset is how connections end here: nothing to report
        for w in (writer, up_writer):
            w.close()

    async def _connect(self, host: str, port: int):
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        up.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
        up.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(up, (host, port))
        except BaseException:
            up.close()
            raise
        return await asyncio.open_connection(sock=up)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction, each chunk written ``delay`` s after it was read, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        async def receive() -> None:
            while data := await reader.read(CHUNK):
                await queue.put((time.monotonic() + self.delay, data))
            await queue.put((time.monotonic() + self.delay, b""))

        steps = {asyncio.create_task(receive()), asyncio.create_task(send())}
        try:
            done, _ = await asyncio.wait(steps, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()       # a failed direction fails the connection
            await asyncio.gather(*steps)
        finally:
            for task in steps:
                task.cancel()

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            word, _, value = line.strip().partition(" ")
            if word == "delay":
                self.delay = max(0.0, float(value))
                print("ok", flush=True)
            else:
                print(f"error: unknown command {word!r}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mark", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    relay = Relay(args.port, args.mark, args.delay)
    server = await asyncio.start_server(relay.handle, "0.0.0.0", args.port, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await relay.commands()      # stdin closed: the test bed is done with us


if __name__ == "__main__":
    asyncio.run(main())
