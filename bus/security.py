"""CurveZMQ for the bus: key files, a node's key pair, the accepted keys, and the ZAP authenticator.

zmq.auth (and the ZAP handler, ``bus.zap``) is imported where keys are used, so a bus without
Curve never loads it. Key files are zmq.auth's: ``NAME.key`` (public) and ``NAME.key_secret`` (both keys). One
directory serves a cluster: each node loads its own ``NODE_ID.key_secret`` and accepts every
``*.key`` in the authorized directory (the same directory unless told otherwise). Servers
(ROUTER, PUB) only admit clients whose public key is accepted; clients (DEALER, SUB) only
connect to servers whose public key is accepted.
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from zmq.auth.asyncio import AsyncioAuthenticator

__all__ = ["CurveKeys", "generate_keys", "start_authenticator", "token_matches"]

log = logging.getLogger("bus.security")


def token_matches(expected: str | None, presented: str | None) -> bool:
    """Whether ``presented`` is the cluster's shared token (always, when none is configured).

    The one check of the token: the REST API, the bus's client requests and a neighbour's hello
    all use it. Constant-time, so a wrong guess says nothing about the right one.
    """
    if not expected:
        return True
    return hmac.compare_digest((presented or "").encode(), expected.encode())


def generate_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` into ``directory``; return their paths.

    The secret file is made readable by its owner only.
    """
    import zmq.auth  # noqa: PLC0415 -- lazy: only where Curve is used

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


@dataclass(frozen=True)
class CurveKeys:
    """A node's (or client's) Curve key pair and the directory of public keys it accepts."""

    public: bytes                 # Z85
    secret: bytes                 # Z85
    authorized_dir: Path

    @classmethod
    def load(cls, directory: str | os.PathLike[str], name: str,
             authorized: str | os.PathLike[str] | None = None) -> CurveKeys:
        """Load ``directory/NAME.key_secret``; accept the ``*.key`` files of ``authorized``
        (default: ``directory``). Raises OSError/ValueError with the file named."""
        import zmq.auth  # noqa: PLC0415 -- lazy: only where Curve is used

        folder = Path(directory)
        public, secret = zmq.auth.load_certificate(folder / f"{name}.key_secret")
        if not secret:
            raise ValueError(f"{folder / (name + '.key_secret')} holds no secret key")
        return cls(public=public, secret=secret, authorized_dir=Path(authorized or folder))

    @property
    def public_text(self) -> str:
        return self.public.decode("ascii")

    def accepted(self) -> set[bytes]:
        """The accepted public keys, read afresh (keys may be added while running)."""
        import zmq.auth  # noqa: PLC0415 -- lazy: only where Curve is used

        return set(zmq.auth.load_certificates(self.authorized_dir))

    def trusts(self, public_key: str | bytes | None) -> bool:
        if not public_key:
            return False
        key = public_key.encode("ascii") if isinstance(public_key, str) else public_key
        return key in self.accepted()

    def make_server(self, sock: zmq.Socket) -> None:
        """Before bind: ``sock`` becomes a Curve server (clients checked by ZAP)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def make_client(self, sock: zmq.Socket, server_key: str | bytes) -> None:
        """Before connect: ``sock`` talks Curve to the server holding ``server_key``."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = server_key.encode("ascii") if isinstance(server_key, str) else server_key


def start_authenticator(context: zmq.Context, keys: CurveKeys,
                        owner: str = "this node") -> "AsyncioAuthenticator":
    """Start the ZAP handler of ``context`` (one per context) accepting ``keys.authorized_dir``.

    Call inside the running event loop; ``stop()`` it before terminating the context.
    """
    from bus.zap import Authenticator  # noqa: PLC0415 -- lazy: only where Curve is used

    auth = Authenticator(context, owner, keys.authorized_dir)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.authorized_dir))
    log.info("curve: accepting %d public keys from %s", len(auth.certs.get("*", {})),
             keys.authorized_dir)
    return auth
