"""The base of every driver: one connection, one lock, declared properties, typed errors.

A driver is a subclass of :class:`Instrument` for one real instrument model. Simple settings and readings are
declared once with :func:`control` and :func:`measurement` (command string, validation, parsing, docs), in the
spirit of PyMeasure's ``Instrument.control``; anything with more logic is a plain method that uses
:meth:`Instrument.write` and :meth:`Instrument.query`.

Unlike PyMeasure, a value out of range is a ``ValueError`` raised before anything is sent (no silent clamping),
an instrument's error reply is an :class:`~drivers.errors.InstrumentReplyError`, and pyvisa's timeout and
connection failures become :class:`~drivers.errors.InstrumentTimeoutError` and
:class:`~drivers.errors.InstrumentConnectionError` naming the instrument and the command.

Protocols differ in how a command is acknowledged, so subclasses override two hooks:

``_reply_to_write(command)``
    What to read after a command that returns no value (nothing for plain SCPI, ``OK`` for a Coherent OBIS,
    a status reply for a Zaber controller).
``_read_reply(command)``
    How to read and check the answer to a query (one line for SCPI, value then ``OK`` for an OBIS, ...).

and may override ``_check_errors(command)``, called after every write when ``check_errors_after_write`` is set,
to poll an error queue (``SYST:ERR?``) for instruments that do not acknowledge commands.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

import numpy as np
import pyvisa
import pyvisa.constants
import pyvisa.errors
import pyvisa.rname

from drivers.errors import (
    InstrumentConnectionError,
    InstrumentError,
    InstrumentReplyError,
    InstrumentTimeoutError,
)

Validator = Callable[[str, Any], Any]
"""A validator takes the property name and the requested value and returns the value to send, or raises
``ValueError`` naming the property, the value and what is allowed."""


def strict_range(minimum: float, maximum: float, *, unit: str = "") -> Validator:
    """Accept a real number in ``[minimum, maximum]``; anything else is a ``ValueError``.

    Examples
    --------
    >>> strict_range(0, 1, unit="W")("power_w", 0.5)
    0.5
    """

    def validate(name: str, value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {value!r} is not a number") from None
        if not np.isfinite(number) or not minimum <= number <= maximum:
            raise ValueError(
                f"{name}: {value!r} is outside the allowed range {minimum:g} to {maximum:g} {unit}".rstrip()
            )
        return number

    return validate


def strict_integer_range(minimum: int, maximum: int) -> Validator:
    """Accept an integer (a float with no fractional part too) in ``[minimum, maximum]``."""

    def validate(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
            raise ValueError(f"{name}: {value!r} is not an integer")
        if float(value) != int(value):
            raise ValueError(f"{name}: {value!r} is not an integer")
        number = int(value)
        if not minimum <= number <= maximum:
            raise ValueError(f"{name}: {value!r} is outside the allowed range {minimum} to {maximum}")
        return number

    return validate


def one_of(allowed: Sequence[Any]) -> Validator:
    """Accept exactly one of ``allowed``."""

    def validate(name: str, value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"{name}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}")
        return value

    return validate


def parse_bool(on: str = "ON", off: str = "OFF") -> Callable[[str], bool]:
    """Parse an instrument's on/off reply (``1``/``0`` accepted too)."""

    def parse(reply: str) -> bool:
        text = reply.strip().upper()
        if text in (on.upper(), "1"):
            return True
        if text in (off.upper(), "0"):
            return False
        raise ValueError(f"expected {on} or {off}")

    return parse


def control(
    get_command: str,
    set_command: str,
    doc: str,
    *,
    validator: Validator | None = None,
    parse: Callable[[str], Any] = float,
    format_value: Callable[[Any], str] = str,
) -> property:
    """Declare a property that is read with ``get_command`` and written with ``set_command``.

    ``set_command`` is a ``str.format`` template with one field, e.g. ``"SOUR:POW:LEV:IMM:AMPL {}"``; the value
    goes through ``validator`` first and then ``format_value``. Replies go through ``parse``; a reply that
    ``parse`` rejects is an :class:`InstrumentReplyError`.
    """

    def fget(self: Instrument) -> Any:
        return self.query_parsed(get_command, parse)

    def fset(self: Instrument, value: Any) -> None:
        if validator is not None:
            value = validator(_property_name(self, fget), value)
        self.write(set_command.format(format_value(value)))

    return property(fget, fset, doc=doc)


def measurement(get_command: str, doc: str, *, parse: Callable[[str], Any] = float) -> property:
    """Declare a read-only property read with ``get_command``."""

    def fget(self: Instrument) -> Any:
        return self.query_parsed(get_command, parse)

    return property(fget, doc=doc)


def _property_name(instrument: Instrument, getter: Callable[..., Any]) -> str:
    for klass in type(instrument).__mro__:
        for name, attribute in vars(klass).items():
            if isinstance(attribute, property) and attribute.fget is getter:
                return name
    return "value"


_resource_manager: pyvisa.ResourceManager | None = None
_resource_manager_lock = threading.Lock()


def default_resource_manager() -> pyvisa.ResourceManager:
    """The process-wide pyvisa resource manager on the pure-Python backend (pyvisa-py).

    pyvisa-py needs no vendor VISA library; it speaks TCP sockets, VXI-11, serial and USBTMC itself.
    """
    global _resource_manager
    with _resource_manager_lock:
        if _resource_manager is None:
            _resource_manager = pyvisa.ResourceManager("@py")
        return _resource_manager


class Instrument:
    """A connection to one instrument.

    Parameters
    ----------
    resource
        An open pyvisa resource, or anything with the same ``write``/``read``/``read_binary_values``/``close``
        methods (the protocol tests pass a :class:`drivers.testing.ProtocolResource`).
    name
        How errors name this instrument, e.g. ``"laser (Coherent OBIS at TCPIP0::127.0.0.1::5001::SOCKET)"``.

    All exchanges with the instrument hold the instance's lock, so a query's reply cannot be taken by another
    thread's query.
    """

    model = "generic instrument"
    read_termination = "\n"
    write_termination = "\n"
    check_errors_after_write = False

    def __init__(self, resource: Any, *, name: str | None = None) -> None:
        self._resource = resource
        self.name = name or self.model
        self.lock = threading.RLock()
        self._closed = False

    # -- opening and closing ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        resource_name: str,
        *,
        name: str | None = None,
        timeout_s: float = 2.0,
        resource_manager: pyvisa.ResourceManager | None = None,
        driver_options: dict[str, Any] | None = None,
        **visa_options: Any,
    ) -> Self:
        """Open ``resource_name`` through pyvisa, connect, and return the driver.

        ``driver_options`` go to the driver's constructor (e.g. a stage's microstep size); ``visa_options`` go
        to ``open_resource`` (e.g. ``baud_rate=115200`` for ``ASRL`` resources).
        """
        label = name or f"{cls.model} at {resource_name}"
        manager = resource_manager or default_resource_manager()
        try:
            pyvisa.rname.parse_resource_name(resource_name)
        except pyvisa.rname.InvalidResourceName:
            raise InstrumentConnectionError(
                label,
                f"{resource_name!r} is not a VISA resource string (e.g. TCPIP0::192.168.1.20::4001::SOCKET, "
                "ASRL/dev/ttyUSB0::INSTR, USB0::0x1313::0x8078::P0012345::INSTR)",
            ) from None
        try:
            resource = manager.open_resource(
                resource_name,
                read_termination=cls.read_termination,
                write_termination=cls.write_termination,
                timeout=int(timeout_s * 1000),
                **visa_options,
            )
        except (pyvisa.errors.VisaIOError, ValueError, OSError) as error:
            raise InstrumentConnectionError(label, f"cannot open {resource_name!r}: {error}") from error
        tune_socket_resource(resource)
        instrument = cls(resource, name=label, **(driver_options or {}))
        try:
            instrument.connect()
        except BaseException:
            instrument._close_resource()
            raise
        return instrument

    def connect(self) -> None:
        """Protocol handshake after the connection opens (log-in, mode selection); nothing by default."""

    def make_safe(self) -> None:
        """Put the instrument in a safe state (laser off, output off, motion stopped); nothing by default."""

    def close(self) -> None:
        """Make the instrument safe, then close the connection. Safe to call more than once."""
        if self._closed:
            return
        try:
            self.make_safe()
        finally:
            self._close_resource()

    def _close_resource(self) -> None:
        self._closed = True
        # the connection may already be gone; closing must not raise
        with contextlib.suppress(Exception):
            self._resource.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- exchanges ----------------------------------------------------------------------------------------
    def write(self, command: str) -> None:
        """Send a command that returns no value, then read its acknowledgement if the protocol has one."""
        with self.lock, self._translate_errors(command):
            self._resource.write(command)
            self._reply_to_write(command)
            if self.check_errors_after_write:
                self._check_errors(command)

    def query(self, command: str) -> str:
        """Send a query and return its checked reply as text."""
        with self.lock, self._translate_errors(command):
            self._resource.write(command)
            return self._read_reply(command)

    def query_parsed(self, command: str, parse: Callable[[str], Any]) -> Any:
        """Send a query and parse its reply; a reply ``parse`` rejects is an :class:`InstrumentReplyError`."""
        return self.parse_reply(command, self.query(command), parse)

    def parse_reply(self, command: str, reply: str, parse: Callable[[str], Any]) -> Any:
        """``parse(reply)`` for a reply already read; one ``parse`` rejects is an :class:`InstrumentReplyError`
        naming ``command``."""
        try:
            return parse(reply)
        except (ValueError, TypeError, IndexError) as error:
            raise InstrumentReplyError(self.name, f"unexpected reply: {error}", command=command, reply=reply) from None

    def query_binary(
        self, command: str, *, datatype: str = "d", big_endian: bool = False, count: int | None = None
    ) -> np.ndarray:
        """Send a query answered with an IEEE 488.2 binary block (``#<n><length><data>`` or ``#0<data>``) and
        return the values.

        ``count`` is the number of values to expect; indefinite-length ``#0`` blocks need it, since their
        header does not say. A block of another length is an :class:`InstrumentReplyError`.
        """
        item = np.dtype(datatype).newbyteorder(">" if big_endian else "<")
        with self.lock, self._translate_errors(command):
            self._resource.write(command)
            header = self._resource.read_bytes(2)
            if header[:1] != b"#" or not header[1:2].isdigit():
                # drop the rest of the reply so the next exchange starts in step
                with contextlib.suppress(pyvisa.errors.VisaIOError, UnicodeDecodeError):
                    header += self._resource.read().encode("ascii", "replace")
                raise InstrumentReplyError(
                    self.name,
                    "malformed binary block: the reply does not start with #",
                    command=command,
                    reply=repr(header),
                )
            digits = int(header[1:2])
            if digits:
                length_text = self._resource.read_bytes(digits)
                if not length_text.isdigit():
                    raise InstrumentReplyError(
                        self.name,
                        "malformed binary block: bad length",
                        command=command,
                        reply=repr(header + length_text),
                    )
                length = int(length_text)
            elif count is not None:
                length = count * item.itemsize
            else:
                raise InstrumentReplyError(
                    self.name, "malformed binary block: indefinite length and no value count given", command=command
                )
            try:
                with _termination_disabled(self._resource):
                    data = self._resource.read_bytes(length, chunk_size=SOCKET_RECEIVE_CHUNK_BYTES) if length else b""
            except pyvisa.errors.VisaIOError as error:
                if error.error_code != pyvisa.constants.StatusCode.error_timeout or connection_closed_by_peer(
                    self._resource
                ):
                    raise
                raise InstrumentReplyError(
                    self.name,
                    f"malformed binary block: the instrument stopped sending before the {length} data bytes were in",
                    command=command,
                ) from error
            self.read_line(command)  # the block's own termination
        if length % item.itemsize:
            raise InstrumentReplyError(
                self.name, f"malformed binary block: {length} bytes are not whole {item} values", command=command
            )
        values = np.frombuffer(data, dtype=item).astype(item.newbyteorder("="))
        if count is not None and values.shape != (count,):
            raise InstrumentReplyError(
                self.name, f"malformed binary block: expected {count} values, got {values.size}", command=command
            )
        return values

    def read_line(self, command: str) -> str:
        """Read one reply line that belongs to ``command`` (used by the hooks)."""
        try:
            return self._resource.read()
        except UnicodeDecodeError as error:
            raise InstrumentReplyError(self.name, f"reply is not text: {error}", command=command) from None

    # -- protocol hooks -----------------------------------------------------------------------------------
    def _reply_to_write(self, command: str) -> None:
        """Read the acknowledgement of a write; plain SCPI has none."""

    def _read_reply(self, command: str) -> str:
        """Read the reply to a query; plain SCPI answers with one line."""
        return self.read_line(command).strip()

    def _check_errors(self, command: str) -> None:
        """Raise if the instrument's error queue holds an error caused by ``command``."""

    # -- error translation ----------------------------------------------------------------------------------
    def _translate_errors(self, command: str) -> _ErrorTranslation:
        return _ErrorTranslation(self, command)


class _ErrorTranslation:
    """Context manager turning pyvisa and socket failures into typed instrument errors."""

    def __init__(self, instrument: Instrument, command: str) -> None:
        self.instrument = instrument
        self.command = command

    def __enter__(self) -> None:
        if self.instrument._closed:
            raise InstrumentConnectionError(self.instrument.name, "connection is closed", command=self.command)

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None, traceback: Any) -> bool:
        if error is None or isinstance(error, InstrumentError):
            return False
        name, command = self.instrument.name, self.command
        if isinstance(error, pyvisa.errors.VisaIOError):
            if error.error_code == pyvisa.constants.StatusCode.error_timeout and connection_closed_by_peer(
                self.instrument._resource
            ):
                raise InstrumentConnectionError(name, "connection closed by the instrument", command=command) from error
            if error.error_code == pyvisa.constants.StatusCode.error_timeout:
                timeout_s = getattr(self.instrument._resource, "timeout", None)
                within = f" within {timeout_s / 1000:g} s" if isinstance(timeout_s, (int, float)) else ""
                raise InstrumentTimeoutError(name, f"no reply{within}", command=command) from error
            raise InstrumentConnectionError(name, f"connection failed: {error.description}", command=command) from error
        if isinstance(error, ConnectionRefusedError):
            raise InstrumentConnectionError(
                name,
                "connection refused: check that the instrument is on and the resource address is right",
                command=command,
            ) from error
        if isinstance(error, (ConnectionError, OSError, EOFError)):
            raise InstrumentConnectionError(name, f"connection lost: {error}", command=command) from error
        return False


def _pyvisa_py_session(resource: Any) -> Any:
    sessions = getattr(getattr(resource, "visalib", None), "sessions", None)
    return sessions.get(getattr(resource, "session", None)) if isinstance(sessions, dict) else None


def _pyvisa_py_socket(resource: Any) -> socket.socket | None:
    """The TCP socket under a pyvisa-py ``::SOCKET`` resource, or None for any other kind of resource."""
    sock = getattr(_pyvisa_py_session(resource), "interface", None)
    return sock if isinstance(sock, socket.socket) else None


SOCKET_RECEIVE_CHUNK_BYTES = 1 << 20


def tune_socket_resource(resource: Any) -> None:
    """Make a pyvisa-py socket resource fit for instrument traffic; nothing for other resources.

    * TCP_NODELAY: a write followed by a query is two small segments in a row; with Nagle's algorithm the second
      waits for the instrument's delayed ACK, about 40 ms per command. pyvisa-py (0.8) does not apply
      ``VI_ATTR_TCPIP_NODELAY`` to socket resources, so the option is set on the socket itself.
    * Receive chunk: pyvisa-py receives 4 KiB per ``recv`` and rescans its whole buffer for the termination byte
      after each, so a multi-megabyte binary block (a digitizer line) costs quadratic time; 1 MiB chunks
      make it linear.
    """
    sock = _pyvisa_py_socket(resource)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pyvisa_py_session(resource).max_recv_size = SOCKET_RECEIVE_CHUNK_BYTES


def connection_closed_by_peer(resource: Any) -> bool:
    """True if ``resource`` is a pyvisa-py raw socket whose other end has closed the connection.

    pyvisa-py reads a socket the peer has closed as "no data yet" until the timeout, so a dropped connection
    looks like a silent instrument. After a timeout, a zero-length peek at the socket tells the two apart.
    Anything that is not a pyvisa-py socket session (serial ports, protocol-test resources) answers False.
    """
    sock = _pyvisa_py_socket(resource)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:  # reset or already closed: gone either way
        return True


@contextlib.contextmanager
def _termination_disabled(resource: Any) -> Iterator[None]:
    """Read a binary block with the termination character off.

    With it on, pyvisa-py ends every low-level read at the first termination byte, and a block of binary numbers
    is full of them: an 800 kB digitizer line would arrive in thousands of short reads.
    """
    context = getattr(resource, "read_termination_context", None)
    if context is None:  # the protocol-test resource reads blocks whole
        yield
        return
    with context(None):
        yield
