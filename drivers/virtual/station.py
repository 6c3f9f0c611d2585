"""The virtual inspection station: every instrument twin on a loopback port, over one simulated world.

Run it on its own::

    python -m drivers.virtual --profile resources/profiles/demo-2in.toml --time-scale 1

It prints one JSON line ``{"resources": {"stage": "TCPIP0::127.0.0.1::PORT::SOCKET", ...}, "control": PORT}``
and serves until its standard input closes (so it exits when the process that started it exits, however that
process ends) or it gets SIGTERM/SIGINT. It binds 127.0.0.1 only.

From Python, :meth:`VirtualStation.start` runs it as a child process and hands back the resource strings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from drivers.interfaces import Axis
from drivers.virtual.aq6370_twin import AQ6370Twin
from drivers.virtual.bench import AxisModel, FaultPlan, LaserModel, SimClock, VirtualBench
from drivers.virtual.dmm6500_twin import DMM6500Twin
from drivers.virtual.k2450_twin import Keithley2450Twin
from drivers.virtual.obis_twin import OBISTwin
from drivers.virtual.pm100d_twin import PM100DTwin
from drivers.virtual.profile import WaferProfile, load_profile
from drivers.virtual.server import LOOPBACK, ControlServer, InstrumentTwin, TwinServer
from drivers.virtual.world import WaferWorld
from drivers.virtual.zaber_twin import ZaberTwin
from inspection.memory import retain_freed_memory

TWINS: dict[str, type[InstrumentTwin]] = {
    "stage": ZaberTwin,
    "laser": OBISTwin,
    "power_meter": PM100DTwin,
    "detector": DMM6500Twin,
    "spectrometer": AQ6370Twin,
    "smu": Keithley2450Twin,
}


def build_bench(profile: WaferProfile, *, time_scale: float = 0.0) -> VirtualBench:
    """The bench of a virtual station: the profile's world, stage, laser and probe."""
    world = WaferWorld(profile)
    stage, optics = profile.stage, profile.optics
    half_xy_um = stage.travel_xy_mm * 500.0
    xy = {"max_velocity_um_s": stage.max_velocity_xy_mm_s * 1000.0, "accel_um_s2": stage.accel_xy_mm_s2 * 1000.0}
    axes = {
        Axis.X: AxisModel(Axis.X, limits_um=(-half_xy_um, half_xy_um), **xy),
        Axis.Y: AxisModel(Axis.Y, limits_um=(-half_xy_um, half_xy_um), **xy),
        Axis.Z: AxisModel(
            Axis.Z,
            limits_um=(0.0, stage.travel_z_mm * 1000.0),
            max_velocity_um_s=stage.max_velocity_z_mm_s * 1000.0,
            accel_um_s2=stage.accel_z_mm_s2 * 1000.0,
        ),
    }
    laser = LaserModel(
        wavelength_nm=optics.laser_wavelength_nm,
        min_power_w=0.0,
        max_power_w=optics.laser_max_power_w,
        drift_fraction=optics.laser_drift_fraction,
        seed=profile.seed,
    )
    return VirtualBench(
        world=world,
        placement=world.placement,
        axes=axes,
        laser=laser,
        clock=SimClock(time_scale),
        faults=FaultPlan(seed=profile.seed),
        probe_contact_z_um=stage.probe_contact_z_um,
        seed=profile.seed,
    )


class VirtualStationServer:
    """All twin servers and the control server of one bench, each on its own thread."""

    def __init__(self, bench: VirtualBench) -> None:
        self.bench = bench
        self.servers = {role: TwinServer(twin(bench), bench) for role, twin in TWINS.items()}
        self.control = ControlServer(bench)
        self._threads = [
            threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"virtual-{name}", daemon=True
            )
            for name, server in [*self.servers.items(), ("control", self.control)]
        ]
        for thread in self._threads:
            thread.start()

    @property
    def resources(self) -> dict[str, str]:
        return {role: f"TCPIP0::{LOOPBACK}::{server.port}::SOCKET" for role, server in self.servers.items()}

    def shutdown(self) -> None:
        for server in [*self.servers.values(), self.control]:
            if isinstance(server, TwinServer):
                server.stopping.set()
            server.shutdown()
            server.server_close()


class VirtualStation:
    """A running virtual station child process (use :meth:`start`)."""

    def __init__(self, process: subprocess.Popen[bytes], resources: dict[str, str], control_port: int) -> None:
        self.process = process
        self.resources = resources
        self.control_port = control_port
        self._control: socket.socket | None = None
        self._control_reader: Any = None

    @classmethod
    @contextmanager
    def start(
        cls, profile_path: str | Path, *, time_scale: float = 0.0, timeout_s: float = 60.0
    ) -> Iterator[VirtualStation]:
        """Start the virtual station for ``profile_path``; stop it when the block ends."""
        profile_path = Path(profile_path)
        load_profile(profile_path)  # a bad profile fails here, with every problem listed, not in the child
        command = [
            sys.executable,
            "-m",
            "drivers.virtual",
            "--profile",
            str(profile_path),
            "--time-scale",
            str(time_scale),
        ]
        # its own session: a Ctrl-C meant for the parent (which then makes the hardware safe through it) must not
        # stop the station first; it ends when the parent's end of its stdin closes
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            ready = _read_ready_line(process, timeout_s)
            station = cls(process, ready["resources"], int(ready["control"]))
            yield station
        finally:
            _stop(process)

    def control(self, **request: Any) -> dict[str, Any]:
        """Send one request to the control port (see :class:`~drivers.virtual.server.ControlServer`)."""
        if self._control is None:
            self._control = socket.create_connection((LOOPBACK, self.control_port), timeout=10)
            self._control_reader = self._control.makefile("rb")
        self._control.sendall(json.dumps(request).encode() + b"\n")
        answer = json.loads(self._control_reader.readline())
        if not answer.get("ok"):
            raise ValueError(f"virtual station refused {request}: {answer.get('error')}")
        return answer

    def inject_fault(
        self, role: str, kind: str, *, at_command: int | None = None, rate: float = 0.0, count: int = 1
    ) -> None:
        """Ask for a fault: see :class:`~drivers.virtual.bench.FaultKind` for the kinds."""
        self.control(op="fault", role=role, kind=kind, at_command=at_command, rate=rate, count=count)


def _read_ready_line(process: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def read() -> None:
        assert process.stdout is not None
        result["line"] = process.stdout.readline()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    line = result.get("line", b"")
    if not line:
        _stop(process)
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        raise RuntimeError(f"the virtual station did not start within {timeout_s:g} s:\n{stderr.strip()}")
    return json.loads(line)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            if process.stdin is not None:
                process.stdin.close()  # the child serves until its stdin closes
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def main(argv: list[str] | None = None) -> int:
    """Serve a virtual station until standard input closes (entry point of ``python -m drivers.virtual``)."""
    parser = argparse.ArgumentParser(prog="python -m drivers.virtual", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="wafer profile TOML")
    parser.add_argument("--time-scale", type=float, default=0.0, help="1 = real time, 0 = as fast as possible")
    args = parser.parse_args(argv)
    retain_freed_memory()  # a rendered line allocates MBs of temporaries: reuse them instead of faulting them in
    bench = build_bench(load_profile(args.profile), time_scale=args.time_scale)
    server = VirtualStationServer(bench)
    print(json.dumps({"resources": server.resources, "control": server.control.port}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait()
    server.shutdown()
    os._exit(0)  # daemon handler threads may still hold sockets; exiting now is what the parent asked for
