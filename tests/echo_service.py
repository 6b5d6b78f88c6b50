"""A small real HTTP service for router tests and benches: in-process (``make_app``) or as a
program (``python tests/echo_service.py --port P --name N``, for a replica to kill -9).

- ``ANY /echo...``: JSON of who answered (``name``), the method, path, query, headers, body size
  and sha256 of the body;
- ``GET /slow?s=S``: answers after S seconds, or holds until released (a request in flight for
  as long as a test needs); ``POST /slow`` too; ``/count`` says how many it began and how many
  were POSTs; a replica made to die cuts each /slow connection instead;
- ``GET /stream?n=N&size=B``: N chunks of B bytes, chunked, flushed one by one;
- ``GET /status/<code>``: that status with a JSON body;
- ``POST /predict``: a tiny stand-in for inference: the body's size and sha256;
- ``GET /health``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json

import tornado.web


class Base(tornado.web.RequestHandler):
    def initialize(self, state: dict) -> None:
        self.state = state

    def prepare(self) -> None:
        self.state["requests"] += 1

    def answer(self, **extra) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"name": self.state["name"], **extra}))


class Echo(Base):
    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def _echo(self) -> None:
        body = self.request.body
        self.set_header("X-Echo-Name", self.state["name"])
        self.answer(method=self.request.method, path=self.request.path,
                    query=self.request.query, headers=[list(h) for h in self.request.headers.get_all()],
                    size=len(body), sha256=hashlib.sha256(body).hexdigest())

    get = post = delete = patch = put = options = _echo

    def head(self) -> None:
        self.set_header("X-Echo-Name", self.state["name"])
        self.set_header("Content-Length", "1234")
        self.finish()


class Slow(Base):
    """Waits S seconds (``?s=S``), or until the test sets ``state["release"]`` (``?s=hold``);
    a replica made with ``dies=True`` cuts the connection instead of answering."""

    async def get(self) -> None:
        self.state["started"] += 1
        if self.state["dies"]:
            self.request.connection.stream.close()
            return
        wait = self.get_query_argument("s", "1")
        if wait == "hold":
            await self.state["release"].wait()
        else:
            await asyncio.sleep(float(wait))
        self.answer(slept=True)

    async def post(self) -> None:
        self.state["posts"] += 1
        await self.get()


class Count(Base):
    def get(self) -> None:
        self.answer(started=self.state["started"], posts=self.state["posts"],
                    requests=self.state["requests"])


class Stream(Base):
    async def get(self) -> None:
        n, size = int(self.get_query_argument("n", "3")), int(self.get_query_argument("size", "10"))
        self.set_header("Content-Type", "application/octet-stream")
        for i in range(n):
            self.write(bytes([65 + i % 26]) * size)
            await self.flush()
        self.finish()


class Status(Base):
    def get(self, code: str) -> None:
        self.set_status(int(code))
        if int(code) in (204, 304):
            self.finish()
            return
        self.answer(status=int(code))


class Predict(Base):
    def post(self) -> None:
        body = self.request.body
        self.answer(size=len(body), sha256=hashlib.sha256(body).hexdigest())


class Health(Base):
    def get(self) -> None:
        self.answer(status="healthy")


def make_app(name: str, dies: bool = False) -> tornado.web.Application:
    state = {"name": name, "started": 0, "posts": 0, "requests": 0, "dies": dies,
             "release": asyncio.Event()}
    args = {"state": state}
    app = tornado.web.Application([
        (r"/echo.*", Echo, args), (r"/slow", Slow, args), (r"/count", Count, args),
        (r"/stream", Stream, args), (r"/status/(\d{3})", Status, args),
        (r"/predict", Predict, args), (r"/health", Health, args)])
    app.state = state
    return app


async def serve(port: int, name: str) -> None:
    make_app(name).listen(port, address="127.0.0.1")
    print(json.dumps({"event": "listening", "port": port}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="echo")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.name))


if __name__ == "__main__":
    main()
