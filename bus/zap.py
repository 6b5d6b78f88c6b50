"""The bus's ZAP handler: pyzmq's asyncio authenticator, saying whom it turned away. Imported by
:func:`bus.security.start_authenticator`, i.e. only by a node that runs Curve."""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from bus.refusals import RefusalLog

__all__ = ["Authenticator"]

log = logging.getLogger("bus.security")


class Authenticator(AsyncioAuthenticator):
    """pyzmq's ZAP handler, saying whom it turned away (a refused key is otherwise silent)."""

    def __init__(self, context: zmq.Context, owner: str, accepted_dir: Path):
        super().__init__(context, log=logging.getLogger("bus.zap"))
        self._owner = owner
        self._accepted_dir = accepted_dir
        self._refusals = RefusalLog(log)
        self._asking: tuple[str, bytes | None] = ("?", None)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        key = msg[6] if len(msg) > 6 and msg[5] == b"CURVE" else None
        self._asking = (address, key)   # read by _send_zap_reply, in this same turn
        await super().handle_zap_message(msg)

    def _send_zap_reply(self, request_id, status_code, status_text, user_id="anonymous"):
        if status_code != b"200":
            address, key = self._asking
            text = status_text.decode("utf-8", "replace") if isinstance(status_text, bytes) \
                else str(status_text)
            self._refusals.refused(self._owner, "a connection",
                                   f"its Curve key is not accepted ({text}): it is not among "
                                   f"the public keys in {self._accepted_dir}",
                                   address=address, key=z85.encode(key) if key else None)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)
