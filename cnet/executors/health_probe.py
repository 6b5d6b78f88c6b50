"""The service health probe: one ``GET /health`` with a time limit, answered as (ok, why)."""

from __future__ import annotations

import ipaddress

__all__ = ["WILDCARDS", "probe_health", "url_host"]

# A service bound to a wildcard address is probed on loopback.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (an IPv6 address in brackets)."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


async def probe_health(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """``GET /health`` on a service bound to ``host:port``: (True, "") on 200, else (False, why).

    ``timeout`` bounds the whole exchange, connecting included. Each probe has its own client,
    so probes never queue behind one another (or behind the shared client's other requests).
    """
    # Lazy: only an agent running services probes them; an idle one never loads the client.
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError  # noqa: PLC0415
    from tornado.simple_httpclient import HTTPTimeoutError  # noqa: PLC0415

    host = WILDCARDS.get(host, host)
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://{url_host(host)}:{port}/health", raise_error=False,
                                      connect_timeout=timeout, request_timeout=timeout,
                                      follow_redirects=False)
    except HTTPTimeoutError:
        return False, f"/health did not answer within {timeout:g}s"
    except HTTPClientError:  # closed without an answer, or not HTTP
        return False, "/health did not answer HTTP"
    except OSError as exc:
        return False, f"cannot connect to {host}:{port} ({exc.strerror or exc})"
    finally:
        client.close()
    return (True, "") if response.code == 200 else (False, f"/health answered {response.code}")
