"""The bus's socket reader (bus/wire.py ``serve``) on real ZMQ sockets: messages handled in the
loop's reader callback, and broadcasts held back until the replies read with them are done."""

from __future__ import annotations

import asyncio
import logging

import zmq
import zmq.asyncio

from bus.wire import DropLog, close_socket, new_socket, serve

from .harness import until


def _ready(sock: zmq.asyncio.Socket) -> bool:
    return bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)


async def _order_of_a_reply_and_a_broadcast_read_in_one_turn(after_replies: bool) -> list[str]:
    """A reply (on a DEALER) and a broadcast (on a SUB) both waiting when their readers start
    in the same loop turn, the broadcast's first: what runs in which order."""
    context = zmq.asyncio.Context()
    router, dealer = new_socket(context, zmq.ROUTER), new_socket(context, zmq.DEALER)
    pub, sub = new_socket(context, zmq.PUB), new_socket(context, zmq.SUB)
    order: list[str] = []
    tasks: list[asyncio.Task] = []
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}")
        await dealer.send(b"hello")
        identity, _ = await asyncio.wait_for(router.recv_multipart(), 5)
        while not _ready(sub):                       # the subscription has reached the PUB
            await pub.send(b"warm-up")
            await asyncio.sleep(0.01)
        while _ready(sub):
            await sub.recv()
        await pub.send(b"broadcast")
        await router.send_multipart([identity, b"reply"])
        await until(lambda: _ready(sub) and _ready(dealer), what="both messages waiting")

        answered = asyncio.get_running_loop().create_future()

        async def waiter() -> None:
            await answered
            order.append("the task the reply woke")

        def on_reply(frames: list[bytes]) -> None:
            order.append("reply")
            answered.set_result(None)

        drops = DropLog(logging.getLogger(__name__), "test")
        tasks.append(asyncio.create_task(waiter()))
        await asyncio.sleep(0)                       # the waiter is waiting
        tasks.append(asyncio.create_task(serve(sub, list, lambda f: order.append("broadcast"),
                                               drops, after_replies=after_replies)))
        tasks.append(asyncio.create_task(serve(dealer, list, on_reply, drops)))
        await until(lambda: len(order) == 3, what="all three handled")
        return order
    finally:
        for sock in (router, dealer, pub, sub):
            close_socket(sock)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        context.term()


async def test_a_broadcast_waits_for_the_reply_read_with_it_and_the_task_it_wakes():
    assert await _order_of_a_reply_and_a_broadcast_read_in_one_turn(after_replies=True) == [
        "reply", "the task the reply woke", "broadcast"]


async def test_without_it_a_broadcast_read_first_is_handled_first():
    """The case above without ``after_replies``: the order it changes."""
    assert await _order_of_a_reply_and_a_broadcast_read_in_one_turn(after_replies=False) == [
        "broadcast", "reply", "the task the reply woke"]
