"""Loopback TCP servers that speak each instrument's protocol over the shared :class:`VirtualBench`.

Each instrument is an :class:`InstrumentTwin`: it turns one command line into the reply bytes the real instrument
would send. :class:`TwinServer` does the sockets: it listens on 127.0.0.1 only, splits the byte stream into
commands at the twin's input termination, holds the bench lock while a command runs, and injects the protocol
faults (dropped connection, silence, garbage) and bench faults (stall, limit, interlock) the fault plan asks for.

The control server takes one JSON object per line from tests and the CLI (``{"op": "fault", ...}``,
``{"op": "status"}``); it never exposes the wafer's ground truth, which the pipeline must not see.
"""

from __future__ import annotations

import abc
import json
import socket
import socketserver
import threading
from typing import Any, ClassVar

import numpy as np

from drivers.virtual.bench import PROTOCOL_FAULTS, FaultKind, FaultRule, VirtualBench

LOOPBACK = "127.0.0.1"


class InstrumentTwin(abc.ABC):
    """The protocol side of one virtual instrument.

    Subclasses set :attr:`role`, :attr:`input_termination` and :attr:`output_termination` and implement
    :meth:`handle`. State shared with other instruments lives in :attr:`bench`; per-connection state (a log-in,
    say) in the session object from :meth:`new_session`.
    """

    role: ClassVar[str]
    input_termination: ClassVar[bytes] = b"\n"
    output_termination: ClassVar[bytes] = b"\n"

    def __init__(self, bench: VirtualBench) -> None:
        self.bench = bench

    def new_session(self) -> dict[str, Any]:
        """Per-connection state, passed to every :meth:`handle` call of that connection."""
        return {}

    def settles_before(self, command: str) -> bool:
        """Whether ``command`` first lets pending activity finish (at time scale 0, jumps the clock past it).

        True for almost everything: a command normally observes or changes a settled instrument. A twin
        returns False for commands that start motion, so that moves sent to several axes in a row start at the
        same instant, as they do on the real controller, instead of one after the other.
        """
        return True

    def greeting(self) -> bytes:
        """Bytes sent when a client connects (nothing for most instruments)."""
        return b""

    @abc.abstractmethod
    def handle(self, command: str, session: dict[str, Any]) -> bytes | None:
        """Execute ``command`` (termination stripped) and return the complete reply bytes, or None for none.

        Called with the bench lock held and, unless :meth:`settles_before` says otherwise, the clock settled.
        """

    def garbage(self, rng: np.random.Generator) -> bytes:
        """A reply no driver can make sense of (binary noise, then the usual termination)."""
        return bytes(rng.integers(128, 256, 12, dtype=np.uint8)) + self.output_termination


class _TwinHandler(socketserver.BaseRequestHandler):
    server: TwinServer

    def handle(self) -> None:
        twin, bench = self.server.twin, self.server.bench
        sock: socket.socket = self.request
        session = twin.new_session()
        rng = np.random.default_rng()
        if greeting := twin.greeting():
            sock.sendall(greeting)
        buffer = b""
        terminator = twin.input_termination
        while not self.server.stopping.is_set():
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while terminator in buffer:
                raw, buffer = buffer.split(terminator, 1)
                command = raw.decode("ascii", errors="replace").strip("\r\n")
                if not command.strip():
                    continue
                with bench.lock:
                    if twin.settles_before(command):
                        bench.settle()
                    faults = bench.faults.next_command(twin.role)
                    for fault in faults:
                        apply_bench_fault(bench, fault)
                    if FaultKind.DISCONNECT in faults:
                        sock.close()
                        return
                    if FaultKind.TIMEOUT in faults:
                        continue
                    if FaultKind.GARBAGE in faults:
                        reply: bytes | None = twin.garbage(rng)
                    else:
                        reply = twin.handle(command, session)
                if reply:
                    try:
                        sock.sendall(reply)
                    except OSError:
                        return


def apply_bench_fault(bench: VirtualBench, fault: FaultKind) -> None:
    """Apply a fault that changes the simulated hardware rather than the byte stream."""
    if fault is FaultKind.INTERLOCK:
        bench.laser.open_interlock()
    elif fault is FaultKind.STALL:
        bench.stall_next_move = True
    elif fault is FaultKind.LIMIT:
        bench.refuse_next_move = True


class TwinServer(socketserver.ThreadingTCPServer):
    """Serves one twin on ``127.0.0.1:port`` (``port=0`` picks a free one, see :attr:`port`)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, twin: InstrumentTwin, bench: VirtualBench, port: int = 0) -> None:
        self.twin = twin
        self.bench = bench
        self.stopping = threading.Event()
        super().__init__((LOOPBACK, port), _TwinHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _ControlHandler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        for line in self.rfile:
            try:
                request = json.loads(line)
                answer = self.server.execute(request)
            except (ValueError, KeyError, TypeError) as error:
                answer = {"ok": False, "error": str(error)}
            self.wfile.write(json.dumps(answer).encode() + b"\n")


class ControlServer(socketserver.ThreadingTCPServer):
    """Fault injection and status for tests and the CLI; one JSON object per line each way.

    Requests
    --------
    ``{"op": "fault", "role": "laser", "kind": "timeout", "at_command": 5}`` (or ``"rate": 0.01``, ``"count": 3``;
    ``at_command`` counts from the moment of the request, 1 = the very next command)
    ``{"op": "clear_faults"}`` (drop every pending fault rule)
    ``{"op": "interlock", "closed": false}``
    ``{"op": "status"}`` → virtual time, commands served per role, laser state
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, bench: VirtualBench, port: int = 0) -> None:
        self.bench = bench
        super().__init__((LOOPBACK, port), _ControlHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def execute(self, request: dict[str, Any]) -> dict[str, Any]:
        bench = self.bench
        with bench.lock:
            op = request["op"]
            if op == "fault":
                kind = FaultKind(request["kind"])
                role = str(request["role"])
                at_command = request.get("at_command")
                if at_command is not None:
                    at_command = bench.faults.command_counts.get(role, 0) + int(at_command)
                rule = FaultRule(role, kind, at_command, float(request.get("rate", 0.0)), int(request.get("count", 1)))
                if kind not in PROTOCOL_FAULTS and at_command is None and rule.rate == 0.0:
                    apply_bench_fault(bench, kind)  # a state fault with no schedule happens now
                else:
                    bench.faults.add(rule)
                return {"ok": True}
            if op == "clear_faults":
                bench.faults.rules.clear()
                bench.stall_next_move = bench.refuse_next_move = False
                return {"ok": True}
            if op == "interlock":
                if request["closed"]:
                    bench.laser.interlock_closed = True
                else:
                    bench.laser.open_interlock()
                return {"ok": True}
            if op == "status":
                return {
                    "ok": True,
                    "time_s": bench.now(),
                    "commands": dict(bench.faults.command_counts),
                    "laser_emission": bench.laser.emission,
                    "interlock_closed": bench.laser.interlock_closed,
                    "smu_output": bench.smu.output_on,
                }
            raise ValueError(f"unknown op {op!r}; known: fault, clear_faults, interlock, status")
