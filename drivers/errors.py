"""Typed instrument errors.

Every failure an instrument can cause reaches the caller as one of these, never as a log line or a sentinel
value. Each names the instrument and, where there is one, the command that was being sent, so the message is
something an operator can act on ("laser (Coherent OBIS at TCPIP0::...): no reply to 'SOUR:AM:STAT ON' within
2.0 s") rather than a pyvisa status code.

Range checks on values a caller asks for are not instrument errors: they are ``ValueError`` raised before
anything is sent.
"""

from __future__ import annotations


class InstrumentError(Exception):
    """Base class of everything that went wrong while talking to an instrument.

    Parameters
    ----------
    instrument
        Human-readable name of the instrument (role, model and resource where known).
    message
        What went wrong, phrased for the operator.
    command
        The command that was being sent when it went wrong, if any.
    """

    def __init__(self, instrument: str, message: str, *, command: str | None = None) -> None:
        self.instrument = instrument
        self.command = command
        self.detail = message
        where = f" while sending {command!r}" if command is not None else ""
        super().__init__(f"{instrument}: {message}{where}")


class InstrumentConnectionError(InstrumentError):
    """The instrument could not be reached, or the connection to it was lost."""


class InstrumentTimeoutError(InstrumentError):
    """The instrument did not answer within its timeout."""


class InstrumentReplyError(InstrumentError):
    """The instrument rejected a command or answered with something that cannot be understood.

    Attributes
    ----------
    reply
        The reply exactly as received (decoded text), kept for the log and the protocol tests.
    """

    def __init__(self, instrument: str, message: str, *, command: str | None = None, reply: str = "") -> None:
        self.reply = reply
        super().__init__(instrument, f"{message} (reply {reply!r})", command=command)


class InterlockOpenError(InstrumentError):
    """The laser interlock is open: emission is impossible until the enclosure is closed."""


class StageLimitError(InstrumentError):
    """A stage move was refused or stopped because it would leave the axis' travel limits."""


class StageFaultError(InstrumentError):
    """A stage axis reported a fault (stall, driver disabled, encoder error) and stopped."""
