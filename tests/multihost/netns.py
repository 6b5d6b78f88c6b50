"""The network of the multi-host test bed: one namespace per machine and one for the client, each
joined by a veth pair to a bridge that lives in its own namespace; link cuts, delay and loss.

Safety: the test subnet exists only inside the namespaces made here (it is refused when any host
interface or route already touches it); no namespace has a default route, so nothing in them can
reach an address outside the subnet or loopback. Every name starts with ``cnetmh<pid>-``: the
run's namespaces (and every process in them) go in :meth:`Network.teardown`, and
:func:`sweep_stale` removes those of earlier runs whose pid is dead.
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "cnetmh"
SUBNET = ipaddress.ip_network("10.77.0.0/24")
CLIENT_ADDRESS = "10.77.0.2"
BRIDGE = "br0"
RELAY_PORT = 7999             # outside the agents' ports and the services' port range
RELAY_MARK = 0x77             # SO_MARK of the relay's own connections, passed by the REDIRECT
CHAINS = ("CNETMH-CUT", "CNETMH-LOSS")
RELAY = Path(__file__).with_name("relay.py")
_STALE = re.compile(rf"^{PREFIX}(\d+)-")


def run(*args: str, ns: str | None = None, check: bool = True,
        timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command (inside namespace ``ns`` when given); fail with its stderr."""
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def unavailable() -> str | None:
    """Why the test bed cannot run here (a skip reason), or None."""
    if not sys.platform.startswith("linux"):
        return "multi-host tests need Linux network namespaces"
    if os.geteuid() != 0:
        return "multi-host tests need root (network namespaces, veth, iptables, mounts)"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("iptables", "iptables"),
                          ("unshare", "util-linux"), ("mount", "mount")):
        if shutil.which(tool) is None:
            return f"multi-host tests need `{tool}` (apt-get install {package})"
    used = host_networks_in_subnet()
    if used:
        return f"refusing to run: {SUBNET} is already in use on this host ({', '.join(used)})"
    probe = f"{PREFIX}{os.getpid()}-probe"
    res = run("ip", "netns", "add", probe, check=False)
    if res.returncode:
        return f"`ip netns add` does not work here: {res.stderr.strip()}"
    try:
        res = run("iptables", "-w", "10", "-S", ns=probe, check=False)
        if res.returncode:
            return f"iptables does not work in a network namespace here: {res.stderr.strip()}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


def host_networks_in_subnet() -> list[str]:
    found = []
    for cmd in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for line in run(*cmd, check=False).stdout.splitlines():
            for word in line.split():
                try:
                    net = ipaddress.ip_network(word, strict=False)
                except ValueError:
                    continue
                if net.overlaps(SUBNET) and net.prefixlen > 0:
                    found.append(word)
    return found


def netem_works(ns: str) -> bool:
    """Whether this kernel has ``sch_netem`` (tried on ``ns``'s loopback)."""
    if run("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", ns=ns,
           check=False).returncode:
        return False
    run("tc", "qdisc", "del", "dev", "lo", "root", ns=ns, check=False)
    return True


def namespaces() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def remove_namespace(ns: str) -> None:
    """Kill every process in ``ns``, then delete it (its veth ends go with it)."""
    deadline = time.monotonic() + 10
    while pids := [int(p) for p in run("ip", "netns", "pids", ns, check=False).stdout.split()]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    run("ip", "netns", "del", ns, check=False)


def sweep_stale(dirs: Path | None = None) -> list[str]:
    """Remove the namespaces (and run directories in ``dirs``) of earlier runs whose owning
    pid is dead; return what was removed."""
    removed = []
    for ns in namespaces():
        if _stale(ns):
            remove_namespace(ns)
            removed.append(ns)
    for path in dirs.glob(f"{PREFIX}*") if dirs is not None else ():
        if path.is_dir() and _stale(path.name + "-"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _stale(name: str) -> bool:
    match = _STALE.match(name)
    return bool(match) and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Host:
    """One machine on the bridge: its namespace, address and the bridge-side end of its cable."""

    name: str
    ns: str
    address: str
    port: str               # the veth end in the bridge namespace
    relay: subprocess.Popen | None = None


class Network:
    """The run's namespaces: a bridge and the hosts plugged into it."""

    def __init__(self) -> None:
        self.run_id = f"{PREFIX}{os.getpid()}"
        self.bridge_ns = f"{self.run_id}-bridge"
        self.hosts: dict[str, Host] = {}
        self.netem = False

    def ns_name(self, name: str) -> str:
        return f"{self.run_id}-{name}"

    def create(self) -> None:
        run("ip", "netns", "add", self.bridge_ns)
        run("ip", "-n", self.bridge_ns, "link", "set", "lo", "up")
        run("ip", "-n", self.bridge_ns, "link", "add", BRIDGE, "type", "bridge")
        run("ip", "-n", self.bridge_ns, "link", "set", BRIDGE, "up")
        forced = os.environ.get("CNET_MULTIHOST_DELAY")   # "relay" or "netem"
        self.netem = forced == "netem" or (forced != "relay" and netem_works(self.bridge_ns))

    def add_host(self, name: str, address: str) -> Host:
        """A namespace with ``eth0`` at ``address``/24 on the bridge, and no default route."""
        if ipaddress.ip_address(address) not in SUBNET:
            raise ValueError(f"{address} is outside the test subnet {SUBNET}")
        host = Host(name, self.ns_name(name), address, f"v{len(self.hosts)}")
        self.hosts[name] = host
        run("ip", "netns", "add", host.ns)
        run("ip", "-n", host.ns, "link", "set", "lo", "up")
        run("ip", "-n", self.bridge_ns, "link", "add", host.port, "type", "veth",
            "peer", "name", "eth0", "netns", host.ns)
        run("ip", "-n", self.bridge_ns, "link", "set", host.port, "master", BRIDGE, "up")
        run("ip", "-n", host.ns, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0")
        run("ip", "-n", host.ns, "link", "set", "eth0", "up")
        routes = run("ip", "-n", host.ns, "-4", "route", "show", "default").stdout.strip()
        if routes:
            raise RuntimeError(f"{host.ns} has a default route: {routes}")
        for chain in CHAINS:
            self._iptables(host, "-N", chain)
            for hook in ("INPUT", "OUTPUT"):
                self._iptables(host, "-A", hook, "-j", chain)
        return host

    def _iptables(self, host: Host, *args: str, table: str = "filter") -> None:
        run("iptables", "-w", "10", "-t", table, *args, ns=host.ns)

    # -- faults ---------------------------------------------------------------------------

    def cut(self, name: str, how: str = "link") -> None:
        """Disconnect one machine: its cable down (``link``) or iptables DROP in it (``drop``)."""
        host = self.hosts[name]
        if how == "link":
            run("ip", "-n", self.bridge_ns, "link", "set", host.port, "down")
        elif how == "drop":
            self._iptables(host, "-A", CHAINS[0], "-i", "eth0", "-j", "DROP")
            self._iptables(host, "-A", CHAINS[0], "-o", "eth0", "-j", "DROP")
        else:
            raise ValueError(f"unknown cut {how!r}")

    def heal(self, name: str) -> None:
        host = self.hosts[name]
        run("ip", "-n", self.bridge_ns, "link", "set", host.port, "up")
        self._iptables(host, "-F", CHAINS[0])

    def prepare_delay(self, name: str, log: Path | str = os.devnull) -> None:
        """Make ``delay()`` possible on this machine; without netem, put a relay in its path
        (before its agent starts, so every connection it has goes through the relay)."""
        host = self.hosts[name]
        if self.netem or host.relay is not None:
            return
        with open(log, "ab") as err:
            host.relay = subprocess.Popen(
                ["ip", "netns", "exec", host.ns, sys.executable, str(RELAY), "--port",
                 str(RELAY_PORT), "--mark", str(RELAY_MARK)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        if _line(host.relay, 10) != "ready":
            raise RuntimeError(f"the relay in {host.ns} did not start")
        subnet, port = str(SUBNET), str(RELAY_PORT)
        self._iptables(host, "-A", "OUTPUT", "-d", host.address, "-j", "RETURN", table="nat")
        self._iptables(host, "-A", "OUTPUT", "-p", "tcp", "-d", subnet, "-m", "mark", "!",
                       "--mark", str(RELAY_MARK), "-j", "REDIRECT", "--to-ports", port, table="nat")
        # Connections from the client skip the relay: the tests' own calls are not slowed.
        self._iptables(host, "-A", "PREROUTING", "-i", "eth0", "-p", "tcp", "-d", host.address,
                       "!", "-s", CLIENT_ADDRESS, "-j", "REDIRECT", "--to-ports", port, table="nat")

    def delay(self, name: str, seconds: float) -> None:
        """Hold every byte to and from this machine ``seconds`` in each direction (0: none)."""
        host = self.hosts[name]
        if self.netem:
            for ns, dev in ((host.ns, "eth0"), (self.bridge_ns, host.port)):
                if seconds > 0:
                    run("tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay",
                        f"{seconds * 1000:.0f}ms", ns=ns)
                else:
                    run("tc", "qdisc", "del", "dev", dev, "root", ns=ns, check=False)
            return
        if host.relay is None:
            raise RuntimeError(f"{name}: no relay; call prepare_delay() before its agent starts")
        host.relay.stdin.write(f"delay {seconds}\n")
        host.relay.stdin.flush()
        if _line(host.relay, 10) != "ok":
            raise RuntimeError(f"the relay in {host.ns} refused the delay")

    def loss(self, name: str, probability: float) -> None:
        """Drop packets between this machine and the other machines at random (0: none)."""
        host = self.hosts[name]
        self._iptables(host, "-F", CHAINS[1])
        if probability > 0:
            p = f"{probability:.4f}"
            self._iptables(host, "-A", CHAINS[1], "-i", "eth0", "!", "-s", CLIENT_ADDRESS, "-m",
                           "statistic", "--mode", "random", "--probability", p, "-j", "DROP")
            self._iptables(host, "-A", CHAINS[1], "-o", "eth0", "!", "-d", CLIENT_ADDRESS, "-m",
                           "statistic", "--mode", "random", "--probability", p, "-j", "DROP")

    def dropped(self, name: str) -> int:
        """Packets the loss rules dropped on this machine since they were last set."""
        out = run("iptables", "-w", "10", "-L", CHAINS[1], "-v", "-n", "-x", ns=self.hosts[name].ns)
        return sum(int(line.split()[0]) for line in out.stdout.splitlines()[2:] if line.strip())

    def heal_all(self) -> None:
        for name, host in self.hosts.items():
            self.heal(name)
            self.loss(name, 0)
            if self.netem or host.relay is not None:
                self.delay(name, 0)

    # -- teardown -------------------------------------------------------------------------

    def teardown(self) -> None:
        """Every process in the run's namespaces killed, every namespace deleted; idempotent."""
        for host in self.hosts.values():
            if host.relay is not None:
                if host.relay.poll() is None:
                    host.relay.kill()
                    host.relay.wait(timeout=10)
                host.relay.stdin.close()
                host.relay.stdout.close()
        for ns in namespaces():
            if ns.startswith(f"{self.run_id}-"):
                remove_namespace(ns)


def _line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of ``proc``'s stdout within ``timeout`` seconds ("" on EOF or timeout)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""
