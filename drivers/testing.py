"""Protocol tests for drivers: pin every byte a driver sends and every reply it reads.

:func:`expected_protocol` gives a driver a :class:`ProtocolResource` in place of a pyvisa resource. The resource
holds a script of exchanges ``(sent, reply)`` in bytes, exactly as they cross the wire (terminations
included). Each write must equal the next ``sent``; each read returns the pending ``reply``; at the end every
exchange must have been used. A reply of ``None`` means the command gets no answer; :data:`TIMEOUT` makes the
read time out as a real instrument that stays silent would, so timeout handling is tested too.

Examples
--------
Switching a Coherent OBIS on checks its interlock first, then sends the command; each is acknowledged:

>>> from drivers.obis import CoherentOBIS
>>> script = [(b"SYST:LOCK?\\r\\n", b"ON\\r\\nOK\\r\\n"), (b"SOUR:AM:STAT ON\\r\\n", b"OK\\r\\n")]
>>> with expected_protocol(CoherentOBIS, script) as laser:
...     laser.set_emission(True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pyvisa.constants
import pyvisa.errors
import pyvisa.util

from drivers.base import Instrument

TIMEOUT = object()
"""Reply marker: the instrument stays silent and the read times out."""

InstrumentType = TypeVar("InstrumentType", bound=Instrument)


class ProtocolResource:
    """A stand-in for a pyvisa message-based resource that replays a fixed script of exchanges."""

    def __init__(
        self,
        exchanges: Sequence[tuple[bytes, bytes | object | None]],
        *,
        read_termination: str,
        write_termination: str,
    ) -> None:
        self._exchanges = list(exchanges)
        self._position = 0
        self._pending = b""
        self._timeout_pending = False
        self.read_termination = read_termination
        self.write_termination = write_termination
        self.timeout = 1000
        self.closed = False

    # -- what drivers call ----------------------------------------------------------------------------------
    def write(self, message: str) -> int:
        data = (message + self.write_termination).encode("ascii")
        if self._pending:
            raise AssertionError(f"wrote {data!r} while the reply {self._pending!r} was still unread")
        if self._position >= len(self._exchanges):
            raise AssertionError(f"wrote {data!r} but the protocol script has no more exchanges")
        sent, reply = self._exchanges[self._position]
        self._position += 1
        if data != sent:
            raise AssertionError(f"exchange {self._position}: expected {sent!r}, driver wrote {data!r}")
        if reply is TIMEOUT:
            self._timeout_pending = True
        elif reply is not None:
            self._pending = bytes(reply)  # type: ignore[arg-type]
        return len(data)

    def read_bytes(self, count: int, **_: Any) -> bytes:
        self._raise_if_silent()
        if len(self._pending) < count:
            # like a real connection: what was sent arrives, then nothing more until the timeout
            self._pending = b""
            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_timeout)
        data, self._pending = self._pending[:count], self._pending[count:]
        return data

    def read_raw(self) -> bytes:
        self._raise_if_silent()
        termination = self.read_termination.encode("ascii")
        index = self._pending.find(termination)
        if index < 0:
            raise AssertionError(f"driver read a line but the pending reply {self._pending!r} has no termination")
        end = index + len(termination)
        data, self._pending = self._pending[:end], self._pending[end:]
        return data

    def read(self) -> str:
        return self.read_raw().decode("ascii")[: -len(self.read_termination)]

    def read_binary_values(
        self,
        datatype: str = "f",
        is_big_endian: bool = False,
        container: Any = list,
        header_fmt: str = "ieee",
        expect_termination: bool = True,
        **_: Any,
    ) -> Any:
        self._raise_if_silent()
        block, self._pending = self._pending, b""
        if expect_termination:
            block = block.removesuffix(self.read_termination.encode("ascii"))
        return pyvisa.util.from_ieee_block(block, datatype, is_big_endian, container)

    def clear(self) -> None:
        self._pending = b""

    def close(self) -> None:
        self.closed = True

    # -- checks ---------------------------------------------------------------------------------------------
    def _raise_if_silent(self) -> None:
        if self._timeout_pending:
            self._timeout_pending = False
            raise pyvisa.errors.VisaIOError(pyvisa.constants.StatusCode.error_timeout)
        if not self._pending:
            raise AssertionError("driver read a reply but the instrument sent none")

    def assert_finished(self) -> None:
        unused = self._exchanges[self._position :]
        if unused:
            raise AssertionError(f"{len(unused)} exchange(s) never happened, next: {unused[0]!r}")
        if self._pending:
            raise AssertionError(f"reply {self._pending!r} was never read")


@contextmanager
def expected_protocol(
    driver_class: type[InstrumentType],
    exchanges: Sequence[tuple[bytes, bytes | object | None]],
    *,
    connect: bool = False,
    **driver_options: Any,
) -> Iterator[InstrumentType]:
    """Yield a ``driver_class`` instance wired to a :class:`ProtocolResource` replaying ``exchanges``.

    ``connect=True`` runs the driver's connection handshake first (its bytes belong in ``exchanges``).
    The script must be used up exactly when the block ends without an exception.
    """
    resource = ProtocolResource(
        exchanges,
        read_termination=driver_class.read_termination,
        write_termination=driver_class.write_termination,
    )
    instrument = driver_class(resource, **driver_options)
    if connect:
        instrument.connect()
    yield instrument
    resource.assert_finished()
