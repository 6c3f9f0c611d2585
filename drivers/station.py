"""The station: which driver and which VISA resource serve each hardware role.

A station file (TOML) names, for each role, a driver model from :data:`DRIVERS` and a VISA resource string::

    [station]
    name = "Line 3 PL station"

    [instruments.stage]
    driver = "zaber-x-mcc"
    resource = "TCPIP0::10.0.3.21::4001::SOCKET"   # serial-to-Ethernet converter
    timeout_s = 2.0
    options = { microstep_um = { x = 0.1984375, y = 0.1984375, z = 0.047625 } }

With ``virtual_profile`` set in ``[station]``, :func:`open_station` starts the virtual station with that wafer
profile and connects every role to its twin over loopback; resources may then be left empty. The application
only ever sees the role interfaces of :mod:`drivers.interfaces`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.base import Instrument, default_resource_manager
from drivers.errors import InstrumentError
from drivers.interfaces import (
    HardwareRole,
    InstrumentIdentity,
    IntensityDetector,
    Laser,
    PowerMeter,
    SourceMeter,
    Spectrometer,
    Stage,
)
from drivers.keithley_2450 import Keithley2450
from drivers.keithley_dmm6500 import KeithleyDMM6500
from drivers.obis import CoherentOBIS
from drivers.thorlabs import ThorlabsPM100D
from drivers.virtual.station import VirtualStation
from drivers.yokogawa import YokogawaAQ6373
from drivers.zaber import ZaberXMCC
from inspection.settings import SettingsError, from_mapping, load_toml, setting

DRIVERS: dict[str, type[Instrument]] = {
    "zaber-x-mcc": ZaberXMCC,
    "coherent-obis": CoherentOBIS,
    "thorlabs-pm100d": ThorlabsPM100D,
    "keithley-dmm6500": KeithleyDMM6500,
    "yokogawa-aq6373": YokogawaAQ6373,
    "keithley-2450": Keithley2450,
}
"""Driver models a station file may name."""

ROLES: dict[str, type[HardwareRole]] = {
    "stage": Stage,
    "laser": Laser,
    "power_meter": PowerMeter,
    "detector": IntensityDetector,
    "spectrometer": Spectrometer,
    "smu": SourceMeter,
}
"""Hardware roles, in the order they are opened (and closed in reverse, the laser made safe first)."""


@dataclass(frozen=True)
class InstrumentConfig:
    """How to reach the instrument of one role."""

    driver: str = setting(choices=tuple(DRIVERS), doc="driver model")
    resource: str = setting("", doc="VISA resource string; empty when served by the virtual station")
    timeout_s: float = setting(2.0, minimum=0.05, maximum=600.0, unit="s")
    options: dict[str, Any] = field(default_factory=dict)
    visa_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StationSection:
    name: str = setting("plmapper station")
    virtual_profile: str = setting("", doc="wafer profile TOML of the virtual station; empty for real hardware")
    time_scale: float = setting(0.0, minimum=0.0, maximum=10.0, doc="virtual station only: 1 = real time")


@dataclass(frozen=True)
class Instruments:
    stage: InstrumentConfig
    laser: InstrumentConfig
    power_meter: InstrumentConfig
    detector: InstrumentConfig
    spectrometer: InstrumentConfig
    smu: InstrumentConfig


@dataclass(frozen=True)
class StationConfig:
    """A whole station file. Load with :func:`load_station_config`."""

    station: StationSection
    instruments: Instruments
    source: str = ""

    def __post_init__(self) -> None:
        problems = []
        for role, interface in ROLES.items():
            config: InstrumentConfig = getattr(self.instruments, role)
            driver = DRIVERS[config.driver]
            if not issubclass(driver, interface):
                suitable = ", ".join(name for name, cls in DRIVERS.items() if issubclass(cls, interface))
                problems.append(f"instruments.{role}.driver: {config.driver!r} is not a {role} (use {suitable})")
            if not config.resource and not self.station.virtual_profile:
                problems.append(
                    f"instruments.{role}.resource: missing (required unless station.virtual_profile is set)"
                )
        if problems:
            raise ValueError("\n".join(problems))

    def profile_path(self) -> Path | None:
        """The virtual station's wafer profile, relative paths taken from the station file's folder."""
        if not self.station.virtual_profile:
            return None
        path = Path(self.station.virtual_profile)
        if not path.is_absolute() and self.source:
            path = Path(self.source).parent / path
        return path


def load_station_config(path: str | Path) -> StationConfig:
    """Read and validate a station file; every problem is reported at once."""
    data = load_toml(path)
    config = from_mapping(StationConfig, {**data, "source": str(path)}, source=str(path))
    profile = config.profile_path()
    if profile is not None and not profile.is_file():
        raise SettingsError([f"station.virtual_profile: file not found: {profile}"], source=str(path))
    return config


class StationError(InstrumentError):
    """One or more roles could not be opened; ``problems`` has one line per role."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("station", "cannot open:\n" + "\n".join(f"  - {problem}" for problem in problems))


@dataclass
class Station:
    """The open instruments, one per role (the application's view of the hardware)."""

    stage: Stage
    laser: Laser
    power_meter: PowerMeter
    detector: IntensityDetector
    spectrometer: Spectrometer
    smu: SourceMeter
    name: str = "station"

    _reopen: Callable[[str], Instrument] | None = field(default=None, repr=False)

    def reconnect(self, role: str) -> HardwareRole:
        """Close the instrument of ``role`` (ignoring a dead connection) and open it again.

        Used after a dropped connection or a garbled exchange, when the instrument itself is fine.
        """
        if self._reopen is None:
            raise InstrumentError(role, "this station was not opened from a station file and cannot reconnect")
        with contextlib.suppress(InstrumentError):
            getattr(self, role).close()
        instrument = self._reopen(role)
        setattr(self, role, instrument)
        return instrument  # type: ignore[return-value]

    def roles(self) -> dict[str, HardwareRole]:
        return {role: getattr(self, role) for role in ROLES}

    def identities(self) -> dict[str, InstrumentIdentity]:
        return {role: instrument.identity() for role, instrument in self.roles().items()}

    def close(self) -> None:
        """Make every instrument safe and close it: the laser first, then the source-meter, then the rest.

        Every instrument is closed even if another one fails; the first error is raised afterwards.
        """
        order = ["laser", "smu", "stage", "detector", "spectrometer", "power_meter"]
        first_error: BaseException | None = None
        for role in order:
            try:
                getattr(self, role).close()
            except Exception as error:  # noqa: BLE001 - keep closing the others, report afterwards
                first_error = first_error or error
        if first_error is not None:
            raise first_error

    def __enter__(self) -> Station:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        try:
            self.close()
        except InstrumentError as close_error:
            if error is None:
                raise
            # the problem already on its way out is what the user must see first; this one rides along
            error.add_note(f"also, making the station safe failed: {close_error}")


def _open_role(config: StationConfig, role: str, resources: dict[str, str] | None) -> Instrument:
    """Open the instrument of one role; every failure is an :class:`InstrumentError` naming the role."""
    instrument_config: InstrumentConfig = getattr(config.instruments, role)
    resource = (resources or {}).get(role) or instrument_config.resource
    driver = DRIVERS[instrument_config.driver]
    name = f"{role} ({driver.model} at {resource})"
    try:
        return driver.open(
            resource,
            name=name,
            timeout_s=instrument_config.timeout_s,
            resource_manager=default_resource_manager(),
            driver_options=instrument_config.options,
            **instrument_config.visa_options,
        )
    except (TypeError, ValueError) as error:
        raise InstrumentError(name, f"bad options: {error}") from error


def open_station(config: StationConfig, *, resources: dict[str, str] | None = None) -> Station:
    """Open every role of ``config``.

    ``resources`` overrides the configured resource strings (the virtual station passes its loopback ports).
    All roles are attempted; if any fails, the ones that opened are closed again and a :class:`StationError`
    lists one clear line per failed role.
    """
    opened: dict[str, Instrument] = {}
    problems: list[str] = []
    for role in ROLES:
        try:
            opened[role] = _open_role(config, role, resources)
        except InstrumentError as error:
            problems.append(f"{role}: {error}")
    if problems:
        for instrument in opened.values():
            # already failing; the original problem is what the user needs to see
            with contextlib.suppress(InstrumentError):
                instrument.close()
        raise StationError(problems)
    station = Station(name=config.station.name, **opened)  # type: ignore[arg-type]
    station._reopen = lambda role: _open_role(config, role, resources)
    return station


@contextmanager
def connect(config: StationConfig) -> Iterator[Station]:
    """Open the station of ``config`` (starting the virtual station first if configured) and close it after."""
    profile = config.profile_path()
    if profile is None:
        with open_station(config) as station:
            yield station
        return
    with (
        VirtualStation.start(profile, time_scale=config.station.time_scale) as virtual,
        open_station(config, resources=virtual.resources) as station,
    ):
        yield station
