"""SCPI helpers the drivers share: numbers as parameters, and the ``SYST:ERR?`` drain.

The Keithley 2450 and DMM6500, the Thorlabs PM100D and the Yokogawa AQ6373 do not acknowledge commands, so their
drivers read the error queue after every write (``check_errors_after_write``). :func:`drain_error_queue` reads it
until it reports no error and returns what it read; each driver then words the error it raises.
"""

from __future__ import annotations

import re

from drivers.base import Instrument
from drivers.errors import InstrumentConnectionError, InstrumentReplyError, InstrumentTimeoutError

_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*(?:,\s*"?(.*?)"?)?\s*$')


def format_number(value: float, *, significant_digits: int = 10) -> str:
    """A number as an SCPI numeric parameter: at most ``significant_digits`` digits, no float noise.

    Examples
    --------
    >>> format_number(100000), format_number(0.1), format_number(1e12), format_number(0.1 + 0.2, significant_digits=9)
    ('100000', '0.1', '1e+12', '0.3')
    """
    return f"{float(value):.{significant_digits}g}"


def parse_error_reply(reply: str) -> tuple[int, str]:
    """Split a ``SYST:ERR?`` reply into code and message (a Keithley's ``;severity;time`` tail is dropped).

    Raises
    ------
    ValueError
        ``reply`` does not start with an error code.

    Examples
    --------
    >>> parse_error_reply('-113,"Undefined header;1;2024/01/01 00:00:12.345"')
    (-113, 'Undefined header')
    >>> parse_error_reply('0,"No error"')
    (0, 'No error')
    """
    match = _ERROR_REPLY.match(reply)
    if match is None:
        raise ValueError('expected <code>,"<message>"')
    return int(match.group(1)), (match.group(2) or "").split(";", 1)[0]


def drain_error_queue(
    instrument: Instrument, *, query: str = ":SYST:ERR?", max_reads: int = 32, command: str | None = None
) -> list[tuple[int, str, str]]:
    """Read the error queue with ``query`` until it reports code 0; return ``(code, message, reply)`` per error.

    Parameters
    ----------
    instrument
        The driver whose queue is read (its lock is held for the whole drain).
    query
        The error query exactly as the instrument's driver sends it.
    max_reads
        Reads at most; a queue that is still not empty then is reported as read so far (its first entries are the
        ones that explain what went wrong).
    command
        The command whose errors are being read. When given, a failure of the check itself (silence, a reply that
        is not an error-queue entry, a lost connection) is reported against ``command``, the one the caller sent,
        with ``error-queue check '<query>' failed:`` in the message. Otherwise it is reported against ``query``.

    Raises
    ------
    InstrumentReplyError
        A reply is not an error-queue entry.
    InstrumentTimeoutError, InstrumentConnectionError
        From the exchange itself.
    """
    try:
        with instrument.lock:
            errors: list[tuple[int, str, str]] = []
            for _ in range(max_reads):
                reply = instrument.query(query)
                try:
                    code, message = parse_error_reply(reply)
                except ValueError:
                    raise InstrumentReplyError(
                        instrument.name, "not an error-queue entry", command=query, reply=reply
                    ) from None
                if code == 0:
                    break
                errors.append((code, message, reply))
            return errors
    except InstrumentReplyError as error:
        if command is None:
            raise
        detail = error.detail.removesuffix(f" (reply {error.reply!r})")
        raise InstrumentReplyError(
            instrument.name, f"error-queue check {query!r} failed: {detail}", command=command, reply=error.reply
        ) from error
    except (InstrumentTimeoutError, InstrumentConnectionError) as error:
        if command is None:
            raise
        raise type(error)(
            instrument.name, f"error-queue check {query!r} failed: {error.detail}", command=command
        ) from error


def raise_first_error(instrument: Instrument, command: str, errors: list[tuple[int, str, str]]) -> None:
    """Raise the first of ``errors`` (from :func:`drain_error_queue`) against ``command``; nothing if empty.

    The message reads ``instrument error <code> '<message>'``, with ``(and N more queued)`` when more followed.
    """
    if not errors:
        return
    code, message, reply = errors[0]
    more = f" (and {len(errors) - 1} more queued)" if len(errors) > 1 else ""
    raise InstrumentReplyError(
        instrument.name, f"instrument error {code} {message!r}{more}", command=command, reply=reply
    )
