"""Virtual Zaber X-MCC4 controller: the Zaber ASCII protocol over the bench's stage axes.

The controller is an X-MCC4 (device ID 30342, firmware 7.38) at address 1 with the bench's X, Y and Z axes on
its axes 1, 2 and 3; its fourth axis connector has no peripheral. The peripherals are the driver's defaults
(:data:`drivers.zaber.DEFAULT_MICROSTEP_UM`): positions, limits, speeds and accelerations cross the wire in
microsteps and Zaber data units exactly as :mod:`drivers.zaber` describes, and are converted to and from the
bench's µm here.

What is emulated
----------------
* Replies ``@01 <axis> OK|RJ IDLE|BUSY <flag> <data>\\r\\n``; BUSY while the axis (any axis, for axis 0) moves;
  the flag is the highest-priority active warning (``--`` if none).
* ``get pos|maxspeed|accel|limit.min|limit.max`` (axis 0 lists axes 1 to 4, the empty connector reading 0),
  ``get deviceid|device.id|system.serial|version|system.axiscount``, ``set maxspeed|accel``,
  ``move abs|rel``, ``home``, ``stop``, ``warnings [clear]``, the empty status command, ``trigger <n> when <a>
  pos <op> <N>`` / ``action a|b io set do <ch> <0|1>`` / ``action a|b none`` / ``enable [count]`` /
  ``disable``, ``io set do <ch> <0|1>`` and ``io get do [<ch>]``.
* Rejections as the controller sends them: ``BADCOMMAND`` (unknown command or setting, and real commands this
  twin does not emulate, such as ``move vel``), ``BADDATA`` (value out of range or not an integer, a move past
  ``limit.min``/``limit.max``), ``BADAXIS`` (no such axis, or the empty fourth connector), ``DEVICEONLY``
  (``trigger``, ``io`` or a device setting addressed to an axis).
* Commands for another device address get no reply, as on a daisy chain.

Virtual hardware behaviour
--------------------------
* ``home`` drives the axis to its lower soft limit (``limit.min``; where the home sensor sits on these stages) and
  marks it homed. Homing does not change positions: the bench frame is already the homed frame, so the twin never
  raises ``WR`` (no reference position).
* A move or ``stop`` that interrupts a move raises ``NI``; a new movement command clears ``FS`` and ``NI``, and
  ``warnings clear`` clears everything.
* An injected STALL fault (``bench.stall_next_move``) makes the next movement stall half-way (in time) with ``FS``;
  an injected LIMIT fault (``bench.refuse_next_move``) makes the next ``move abs|rel`` be refused with
  ``BADDATA`` as if out of range.
* Probe-card crash protection: a Z move that would rise above ``probe_contact_z_um + probe_overtravel_um`` stalls
  at that height with ``FS``.
* ``FS`` appears when the stall happens, not when the move is planned (this matters at time scale > 0).
* Trigger ``n`` with a ``pos`` condition and an action ``io set do 1 1`` arms the bench's trigger line
  (``bench.arm_trigger``) when enabled; it fires once whatever the enable count (the bench models a single
  shot). ``trigger n disable`` disarms it; ``io set do 1 0|1`` drives the line directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from drivers.interfaces import Axis, TriggerDirection
from drivers.virtual.bench import AxisModel, VirtualBench
from drivers.virtual.server import InstrumentTwin
from drivers.zaber import (
    ACCEL_DATA_PER_MICROSTEP_S2,
    AXIS_NUMBERS,
    DEFAULT_MICROSTEP_UM,
    MAX_ACCEL_DATA,
    SPEED_DATA_PER_MICROSTEP_S,
    WARNING_FLAGS,
)

_FLAG_PRIORITY = {flag: rank for rank, flag in enumerate(WARNING_FLAGS)}
_AXIS_SETTINGS = ("pos", "maxspeed", "accel", "limit.min", "limit.max")
_CONDITIONS = {">=", "<=", ">", "<"}


class _RejectedError(Exception):
    """A command the controller answers with ``RJ`` and ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Trigger:
    """One of the controller's triggers as configured over the protocol."""

    condition: tuple[int, str, int] | None = None  # (axis number, operator, microsteps)
    actions: dict[str, tuple[int, int] | None] = field(default_factory=lambda: {"a": None, "b": None})
    enabled: bool = False


class ZaberTwin(InstrumentTwin):
    """The stage's X-MCC4 controller on the virtual bench (see the module docstring for what it emulates)."""

    role = "stage"
    input_termination = b"\n"
    output_termination = b"\r\n"

    device_number: ClassVar[int] = 1
    device_id: ClassVar[int] = 30342  # X-MCC4
    serial_number: ClassVar[int] = 123456
    firmware_version: ClassVar[str] = "7.38"
    axis_count: ClassVar[int] = 4
    trigger_count: ClassVar[int] = 6
    digital_output_count: ClassVar[int] = 4

    def __init__(self, bench: VirtualBench, *, microstep_um: Mapping[Axis, float] | None = None) -> None:
        super().__init__(bench)
        self.microstep_um = {**DEFAULT_MICROSTEP_UM, **(microstep_um or {})}
        self._axis_by_number = {number: axis for axis, number in AXIS_NUMBERS.items() if axis in bench.axes}
        self._triggers = {n: _Trigger() for n in range(1, self.trigger_count + 1)}
        self._armed_trigger: int | None = None
        self._outputs = [False] * self.digital_output_count
        self._pending_faults: list[tuple[Axis, float, str]] = []

    # -- the wire -------------------------------------------------------------------------------------------
    def settles_before(self, command: str) -> bool:
        """A move starts at once, even while another axis still moves (how a slanted line drives X and Y)."""
        return " move " not in f" {command.lower()} "

    def handle(self, command: str, session: dict[str, Any]) -> bytes | None:
        text = command.strip()
        if not text.startswith("/"):
            return None  # not a command: the controller ignores the line
        words = text[1:].lower().split()
        device = 0
        if words and words[0].isdigit():
            device = int(words.pop(0))
        if device not in (0, self.device_number):
            return None  # another controller on the chain would answer
        axis_number = 0
        if words and words[0].isdigit():
            axis_number = int(words.pop(0))
        now = self.bench.now()
        self._apply_pending_faults(now)
        try:
            if axis_number > self.axis_count:
                raise _RejectedError("BADAXIS")
            data = self._execute(axis_number, words, now)
        except _RejectedError as rejection:
            return self._reply(axis_number, rejection.reason, now, rejected=True)
        return self._reply(axis_number, data, now)

    def _reply(self, axis_number: int, data: str, now: float, *, rejected: bool = False) -> bytes:
        models = self._models(axis_number, strict=False)
        busy = any(model.is_busy(now) for model in models)
        flags = set().union(*(model.warnings for model in models)) if models else set()
        flag = min(flags, key=lambda f: (_FLAG_PRIORITY.get(f, len(_FLAG_PRIORITY)), f)) if flags else "--"
        line = (
            f"@{self.device_number:02d} {axis_number} {'RJ' if rejected else 'OK'} "
            f"{'BUSY' if busy else 'IDLE'} {flag} {data}"
        )
        return line.encode("ascii") + self.output_termination

    def _models(self, axis_number: int, *, strict: bool = True) -> list[AxisModel]:
        """The axis models addressed by ``axis_number`` (0: all of them)."""
        if axis_number == 0:
            return [self.bench.axes[axis] for axis in self._axis_by_number.values()]
        if axis_number in self._axis_by_number:
            return [self.bench.axes[self._axis_by_number[axis_number]]]
        if strict:
            raise _RejectedError("BADAXIS")  # the empty connector has nothing to move or report
        return []

    # -- dispatch -------------------------------------------------------------------------------------------
    def _execute(self, axis_number: int, words: list[str], now: float) -> str:
        if not words:
            return "0"  # the status poll
        verb, arguments = words[0], words[1:]
        if verb == "get":
            return self._get(axis_number, arguments, now)
        if verb == "set":
            return self._set(axis_number, arguments)
        if verb == "move":
            return self._move(axis_number, arguments, now)
        if verb == "home" and not arguments:
            for model in self._models(axis_number):
                # the home position is limit.min as the controller reports it (whole microsteps)
                self._start_motion(model, self._limit_steps(model)[0] * self.microstep_um[model.axis], now)
                model.homed = True
            self.bench.update_trigger()
            return "0"
        if verb == "stop" and not arguments:
            for model in self._models(axis_number):
                self._drop_pending_faults(model.axis)
                if model.is_busy(now):
                    model.warnings.add("NI")
                    model.stop(now)
            self.bench.update_trigger()
            return "0"
        if verb == "warnings":
            return self._warnings(axis_number, arguments)
        if verb == "trigger":
            self._device_only(axis_number)
            return self._trigger(arguments)
        if verb == "io":
            self._device_only(axis_number)
            return self._io(arguments)
        raise _RejectedError("BADCOMMAND")

    @staticmethod
    def _device_only(axis_number: int) -> None:
        if axis_number != 0:
            raise _RejectedError("DEVICEONLY")

    @staticmethod
    def _integer(word: str) -> int:
        try:
            return int(word)
        except ValueError:
            raise _RejectedError("BADDATA") from None

    # -- settings -------------------------------------------------------------------------------------------
    def _get(self, axis_number: int, arguments: list[str], now: float) -> str:
        if len(arguments) != 1:
            raise _RejectedError("BADCOMMAND")
        setting = arguments[0]
        device_settings = {
            "deviceid": str(self.device_id),
            "device.id": str(self.device_id),
            "system.serial": str(self.serial_number),
            "version": self.firmware_version,
            "system.axiscount": str(self.axis_count),
        }
        if setting in device_settings:
            self._device_only(axis_number)
            return device_settings[setting]
        if setting not in _AXIS_SETTINGS:
            raise _RejectedError("BADCOMMAND")
        if axis_number != 0:
            return str(self._axis_setting(self._models(axis_number)[0], setting, now))
        values = []
        for number in range(1, self.axis_count + 1):
            models = self._models(number, strict=False)
            values.append(str(self._axis_setting(models[0], setting, now) if models else 0))
        return " ".join(values)

    def _axis_setting(self, model: AxisModel, setting: str, now: float) -> int:
        step = self.microstep_um[model.axis]
        if setting == "pos":
            return round(float(model.position_um(now)) / step)
        if setting == "maxspeed":
            return round(model.velocity_um_s / step * SPEED_DATA_PER_MICROSTEP_S)
        if setting == "accel":
            return round(model.accel_um_s2 / step * ACCEL_DATA_PER_MICROSTEP_S2)
        low_steps, high_steps = self._limit_steps(model)
        return low_steps if setting == "limit.min" else high_steps

    def _limit_steps(self, model: AxisModel) -> tuple[int, int]:
        # rounded inwards, so every position the controller accepts lies inside the bench's limits
        step = self.microstep_um[model.axis]
        low, high = model.limits_um
        return math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)

    def _set(self, axis_number: int, arguments: list[str]) -> str:
        if len(arguments) != 2:
            raise _RejectedError("BADCOMMAND")
        setting, value = arguments[0], self._integer(arguments[1])
        if setting not in ("maxspeed", "accel"):
            raise _RejectedError("BADCOMMAND")
        models = self._models(axis_number)
        for model in models:  # all-or-nothing: check every axis before changing any
            step = self.microstep_um[model.axis]
            if setting == "maxspeed":
                highest = math.floor(model.max_velocity_um_s / step * SPEED_DATA_PER_MICROSTEP_S)
            else:
                highest = MAX_ACCEL_DATA
            if not 1 <= value <= highest:
                raise _RejectedError("BADDATA")
        for model in models:
            step = self.microstep_um[model.axis]
            if setting == "maxspeed":
                model.velocity_um_s = value / SPEED_DATA_PER_MICROSTEP_S * step
            else:
                model.accel_um_s2 = value / ACCEL_DATA_PER_MICROSTEP_S2 * step
        return "0"

    # -- motion ---------------------------------------------------------------------------------------------
    def _move(self, axis_number: int, arguments: list[str], now: float) -> str:
        if len(arguments) != 2 or arguments[0] not in ("abs", "rel"):
            raise _RejectedError("BADCOMMAND")
        steps = self._integer(arguments[1])
        models = self._models(axis_number)
        targets = []
        for model in models:
            target = steps
            if arguments[0] == "rel":
                target += round(float(model.position_um(now)) / self.microstep_um[model.axis])
            low_steps, high_steps = self._limit_steps(model)
            if not low_steps <= target <= high_steps:
                raise _RejectedError("BADDATA")
            targets.append(target * self.microstep_um[model.axis])
        if self.bench.refuse_next_move:
            self.bench.refuse_next_move = False
            raise _RejectedError("BADDATA")
        for model, target_um in zip(models, targets, strict=True):
            self._start_motion(model, target_um, now)
        self.bench.update_trigger()
        return "0"

    def _start_motion(self, model: AxisModel, target_um: float, now: float) -> None:
        """Plan a move of ``model`` to ``target_um`` with the faults the bench asks for."""
        interrupted = model.is_busy(now)
        self._drop_pending_faults(model.axis)
        model.warnings.difference_update({"FS", "NI"})
        if interrupted:
            model.warnings.add("NI")
        try:
            end_s = model.move_to(now, target_um)
        except ValueError:
            raise _RejectedError("BADDATA") from None
        stall_s: float | None = None
        if self.bench.stall_next_move:
            self.bench.stall_next_move = False
            stall_s = 0.5 * (now + end_s)
        if model.axis is Axis.Z:
            crash_um = self.bench.probe_contact_z_um + self.bench.probe_overtravel_um
            if target_um > crash_um:
                hit_s = model.first_crossing_s(now, crash_um, TriggerDirection.RISING)
                if hit_s is not None:
                    stall_s = hit_s if stall_s is None else min(stall_s, hit_s)
        if stall_s is not None:
            model.stall(stall_s)
            if stall_s > now:
                # the stall is still in the future: FS appears when it happens
                model.warnings.discard("FS")
                self._pending_faults.append((model.axis, stall_s, "FS"))

    def _apply_pending_faults(self, now: float) -> None:
        due = [fault for fault in self._pending_faults if fault[1] <= now]
        for axis, _, flag in due:
            self.bench.axes[axis].warnings.add(flag)
        self._pending_faults = [fault for fault in self._pending_faults if fault[1] > now]

    def _drop_pending_faults(self, axis: Axis) -> None:
        self._pending_faults = [fault for fault in self._pending_faults if fault[0] is not axis]

    # -- warnings -------------------------------------------------------------------------------------------
    def _warnings(self, axis_number: int, arguments: list[str]) -> str:
        if arguments not in ([], ["clear"]):
            raise _RejectedError("BADCOMMAND")
        models = self._models(axis_number)
        flags = sorted(
            set().union(*(model.warnings for model in models)),
            key=lambda f: (_FLAG_PRIORITY.get(f, len(_FLAG_PRIORITY)), f),
        )
        if arguments == ["clear"]:
            for model in models:
                model.warnings.clear()
        return " ".join([f"{len(flags):02d}", *flags])

    # -- triggers and digital outputs -----------------------------------------------------------------------
    def _trigger(self, arguments: list[str]) -> str:
        if len(arguments) < 2:
            raise _RejectedError("BADCOMMAND")
        number = self._integer(arguments[0])
        if not 1 <= number <= self.trigger_count:
            raise _RejectedError("BADDATA")
        trigger = self._triggers[number]
        verb, rest = arguments[1], arguments[2:]
        if verb == "when":
            if len(rest) != 4 or rest[1] != "pos" or rest[2] not in _CONDITIONS:
                raise _RejectedError("BADDATA")
            axis_number, steps = self._integer(rest[0]), self._integer(rest[3])
            if axis_number not in self._axis_by_number:
                raise _RejectedError("BADDATA")
            trigger.condition = (axis_number, rest[2], steps)
            if trigger.enabled:
                self._arm(number)
        elif verb == "action":
            if not rest or rest[0] not in ("a", "b"):
                raise _RejectedError("BADDATA")
            trigger.actions[rest[0]] = self._trigger_action(rest[1:])
            if trigger.enabled:
                self._arm(number)
        elif verb == "enable":
            if len(rest) > 1 or (rest and self._integer(rest[0]) < 0):
                raise _RejectedError("BADDATA")
            if trigger.condition is None:
                raise _RejectedError("BADDATA")
            trigger.enabled = True
            self._arm(number)
        elif verb == "disable" and not rest:
            trigger.enabled = False
            if self._armed_trigger == number:
                self.bench.disarm_trigger()
                self._armed_trigger = None
        else:
            raise _RejectedError("BADCOMMAND")
        return "0"

    def _trigger_action(self, words: list[str]) -> tuple[int, int] | None:
        if words == ["none"]:
            return None
        if len(words) == 5 and words[:3] == ["io", "set", "do"]:
            channel, value = self._integer(words[3]), self._integer(words[4])
            if not 1 <= channel <= self.digital_output_count or value not in (0, 1):
                raise _RejectedError("BADDATA")
            return channel, value
        raise _RejectedError("BADCOMMAND")  # real trigger actions this twin does not emulate

    def _arm(self, number: int) -> None:
        """Map trigger ``number`` onto the bench's single trigger line if it raises digital output 1."""
        trigger = self._triggers[number]
        if self._armed_trigger is not None:
            self.bench.disarm_trigger()
            self._armed_trigger = None
        if trigger.condition is None or (1, 1) not in trigger.actions.values():
            return
        axis_number, operator, steps = trigger.condition
        axis = self._axis_by_number[axis_number]
        # positions are whole microsteps, so "pos > N" is "pos >= N + 1"
        if operator in (">=", ">"):
            threshold_steps, direction = steps + (operator == ">"), TriggerDirection.RISING
        else:
            threshold_steps, direction = steps - (operator == "<"), TriggerDirection.FALLING
        self.bench.arm_trigger(axis, threshold_steps * self.microstep_um[axis], direction)
        self._armed_trigger = number

    def _io(self, arguments: list[str]) -> str:
        if len(arguments) == 4 and arguments[:2] == ["set", "do"]:
            channel, value = self._integer(arguments[2]), self._integer(arguments[3])
            if not 1 <= channel <= self.digital_output_count or value not in (0, 1):
                raise _RejectedError("BADDATA")
            self._outputs[channel - 1] = bool(value)
            if channel == 1:
                self.bench.trigger_output_high = bool(value)
            return "0"
        if arguments[:2] == ["get", "do"] and len(arguments) <= 3:
            states = [*self._outputs]
            states[0] = self.bench.trigger_output_high  # the bench's trigger line is output 1
            if len(arguments) == 2:
                return " ".join(str(int(state)) for state in states)
            channel = self._integer(arguments[2])
            if not 1 <= channel <= self.digital_output_count:
                raise _RejectedError("BADDATA")
            return str(int(states[channel - 1]))
        raise _RejectedError("BADCOMMAND")
