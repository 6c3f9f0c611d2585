"""SCPI plumbing shared by the virtual twins: headers, parameters, the error queue, reply numbers.

Every SCPI-speaking twin (PM100D, OBIS, DMM6500, AQ6373, 2450) turns one command line into the bytes the real
instrument would send. What SCPI itself defines is the same for all of them and lives here; what differs between
instruments (which commands exist, the error-queue length, the text of the ``SYST:ERR?`` reply, which error code a
bad keyword earns) stays in the twin.

Headers
-------
A command table is written in the manual's notation and compiled with :func:`scpi_header`:

- ``:SYSTem:ERRor[:NEXT]?``: each mnemonic matches its long form or its short form (its capitals, plus any digits
  that are part of the name, as in ``Y1`` or ``CFORM1``), in any case; ``[:NODE]`` may be left out; a trailing
  ``?`` is the query form (a template without it matches only the command form);
- ``:SOURce[1]:FUNCtion``: the mnemonic may carry a numeric suffix ``1`` to ``n`` (``[n]``); a header whose
  suffix is outside that range is SCPI error -114 (see :func:`find_command`);
- ``*IDN?``: a common command, matched literally (any case).

:func:`split_command` turns a received line into a header with exactly one leading colon (``:*IDN?``,
``:SENS:CORR:WAV?``) and its parameter text; compiled templates match headers in that form.

Examples
--------
>>> commands = [(scpi_header("[:SENSe]:CORRection:WAVelength?"), "get"), (scpi_header("*RST"), "reset")]
>>> header, arguments = split_command("sense:corr:wav? MAX")
>>> header, arguments, find_command(commands, header)
(':sense:corr:wav?', 'MAX', 'get')
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TypeVar

Handler = TypeVar("Handler")

NO_ERROR = (0, "No error")
"""What ``SYST:ERR?`` reports when the queue is empty."""

# one node of a template: ":MNEMonic", ":MNEMonic[n]" (numeric suffix 1..n), optional as "[:MNEMonic]"
_TEMPLATE_NODE = re.compile(
    r"(?P<optional>\[)?:(?P<letters>[A-Za-z]+)(?P<digits>\d*)(?:\[(?P<suffix>\d+)\])?(?(optional)\])"
)
_SUFFIX_GROUP = re.compile(r"suffix\d+_(\d+)")


class ScpiError(Exception):
    """A command the instrument rejects: it is not answered and ``code,"message"`` goes to the error queue.

    Parameters
    ----------
    code
        The SCPI error code, e.g. -113.
    message
        The instrument's text for it, e.g. ``"Undefined header"``.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


# -- headers -----------------------------------------------------------------------------------------------------


def scpi_header(template: str) -> re.Pattern[str]:
    """Compile a header template in manual notation into a regular expression for :func:`find_command`.

    Parameters
    ----------
    template
        ``[:SENSe]:CORRection:WAVelength?``, ``SYSTem:ERRor[:NEXT]`` (the first colon may be left out),
        ``:SOURce[1]:CURRent[:LEVel]`` or ``*IDN?``. See the module docstring for the notation.

    Returns
    -------
    re.Pattern
        Matches (``pattern.match``) a whole header with exactly one leading colon, as :func:`split_command` gives
        it; a numeric suffix is captured in a group named ``suffix<i>_<n>`` for the range check.

    Raises
    ------
    ValueError
        The template is not in the notation, or a mnemonic has no short form in capitals.

    Examples
    --------
    >>> bool(scpi_header("[:SENSe]:CORRection:WAVelength?").match(":sens:correction:wav?"))
    True
    >>> bool(scpi_header("[:SENSe]:CORRection:WAVelength?").match(":CORR:WAVE?"))
    False
    >>> bool(scpi_header("[:SENSe]:CORRection:WAVelength?").match(":CORR:WAV"))
    False
    """
    query = template.endswith("?")
    body = template.removesuffix("?")
    if body.startswith("*"):
        return re.compile(":" + re.escape(body) + (r"\?" if query else "") + r"\Z", re.IGNORECASE)
    if not body.startswith((":", "[")):
        body = ":" + body
    nodes: list[str] = []
    position = 0
    while position < len(body):
        node = _TEMPLATE_NODE.match(body, position)
        if node is None:
            raise ValueError(f"template {template!r}: cannot read a node at {body[position:]!r}")
        letters, digits = node.group("letters"), node.group("digits")
        short = re.match(r"[A-Z]+", letters)
        if short is None:
            raise ValueError(f"mnemonic {letters + digits!r} in {template!r} has no short form in capitals")
        forms = sorted({letters.upper() + digits, short.group() + digits}, key=len, reverse=True)
        pattern = ":(?:" + "|".join(forms) + ")"
        if node.group("suffix") is not None:
            pattern += f"(?P<suffix{len(nodes)}_{int(node.group('suffix'))}>\\d*)"
        nodes.append(f"(?:{pattern})?" if node.group("optional") else pattern)
        position = node.end()
    return re.compile("".join(nodes) + (r"\?" if query else "") + r"\Z", re.IGNORECASE)


def split_command(command: str) -> tuple[str, str]:
    """Split one received line into its header (exactly one leading colon, ``?`` kept) and its parameter text.

    The header ends at the first blank. Extra leading colons, and a colon before a common command (``:*IDN?``),
    are tolerated.

    Examples
    --------
    >>> split_command(' :TRAC:ACT? "defbuffer1" ')
    (':TRAC:ACT?', '"defbuffer1"')
    >>> split_command("*IDN?")
    (':*IDN?', '')
    """
    header, _, arguments = command.strip().partition(" ")
    return ":" + header.lstrip(":"), arguments.strip()


def split_program_message(message: str) -> list[str]:
    """Split one received line into its program message units (``;`` outside quotes), with every header made
    absolute by the SCPI rule: a unit that starts with neither ``:`` nor ``*`` continues in the path of the
    unit before it (everything up to that unit's last colon).

    Examples
    --------
    >>> split_program_message(':ABOR;:DIG:COUN 800;:INIT')
    [':ABOR', ':DIG:COUN 800', ':INIT']
    >>> split_program_message(':TRIG:BLOC:WAIT 2, EXT, ENT;MDIG 3, "a;b", AUTO;*OPC?')
    [':TRIG:BLOC:WAIT 2, EXT, ENT', ':TRIG:BLOC:MDIG 3, "a;b", AUTO', '*OPC?']
    """
    units = _split_outside_quotes(message, ";")
    absolute: list[str] = []
    path = ":"
    for given in units:
        unit = path + given if given and given[0] not in ":*" else given
        absolute.append(unit)
        header = unit.partition(" ")[0]
        if not header.startswith("*"):  # common commands do not change the path
            path = header[: header.rfind(":") + 1] or ":"
    return absolute


def find_command(commands: Sequence[tuple[re.Pattern[str], Handler]], header: str) -> Handler:
    """The handler of the first pattern in ``commands`` that ``header`` matches.

    Parameters
    ----------
    commands
        ``(scpi_header(template), handler)`` pairs, tried in order.
    header
        A header as :func:`split_command` gives it.

    Raises
    ------
    ScpiError
        -113 ``Undefined header`` if no pattern matches; -114 ``Header suffix out of range`` if one does but a
        numeric suffix is outside ``1..n`` (``SOUR2`` on a one-channel instrument).

    Examples
    --------
    >>> commands = [(scpi_header(":OUTPut[1][:STATe]"), "output")]
    >>> find_command(commands, ":OUTP1:STAT")
    'output'
    >>> find_command(commands, ":OUTP2")
    Traceback (most recent call last):
    ...
    drivers.virtual.scpi.ScpiError: -114 Header suffix out of range
    """
    for pattern, handler in commands:
        match = pattern.match(header)
        if match is None:
            continue
        for name, suffix in match.groupdict().items():
            allowed = _SUFFIX_GROUP.fullmatch(name)
            if allowed is not None and suffix and suffix not in {str(n) for n in range(1, int(allowed.group(1)) + 1)}:
                raise ScpiError(-114, "Header suffix out of range")
        return handler
    raise ScpiError(-113, "Undefined header")


def require_form(allowed: bool) -> None:
    """Raise -113 ``Undefined header`` unless ``allowed``: the query form of a command-only header, or the
    command form of a query-only one, is a header the instrument does not know."""
    if not allowed:
        raise ScpiError(-113, "Undefined header")


# -- parameters --------------------------------------------------------------------------------------------------


def split_arguments(text: str) -> list[str]:
    """Split a parameter list at the commas outside quotes; strip blanks, keep the quotes.

    Examples
    --------
    >>> split_arguments('1, 5, "def,buffer1", READ')
    ['1', '5', '"def,buffer1"', 'READ']
    >>> split_arguments("")
    []
    >>> split_arguments("1,")
    ['1', '']
    """
    arguments = _split_outside_quotes(text, ",")
    return [] if arguments == [""] else arguments


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` outside single or double quotes, every part stripped (quotes kept);
    one part for a text without a separator."""
    parts: list[str] = []
    current, quote = "", ""
    for char in text:
        if quote:
            current += char
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
            current += char
        elif char == separator:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def unquote(text: str) -> str:
    """The string parameter inside matching single or double quotes; -104 ``Data type error`` if it is not quoted.

    Examples
    --------
    >>> unquote('"defbuffer1"')
    'defbuffer1'
    """
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    raise ScpiError(-104, "Data type error")


def require_argument(text: str) -> str:
    """``text`` unchanged, or -109 ``Missing parameter`` if it is empty."""
    if not text:
        raise ScpiError(-109, "Missing parameter")
    return text


def matches_mnemonic(value: str, mnemonic: str) -> bool:
    """True if ``value`` is the long or the short form of a keyword parameter in manual notation, in any case.

    Examples
    --------
    >>> matches_mnemonic("ris", "RISing"), matches_mnemonic("RISING", "RISing"), matches_mnemonic("RISI", "RISing")
    (True, True, False)
    """
    short = re.match(r"[A-Z0-9]+", mnemonic)
    return value.upper() in {mnemonic.upper(), short.group() if short else mnemonic.upper()}


def parse_number(
    text: str, *, minimum: float | None = None, maximum: float | None = None, default: float | None = None
) -> float:
    """A numeric parameter, with the keywords ``MINimum``, ``MAXimum`` and ``DEFault`` where the command has them.

    Parameters
    ----------
    text
        The parameter as received.
    minimum, maximum, default
        What ``MIN``, ``MAX`` and ``DEF`` stand for; a keyword whose value is None is not accepted.

    Raises
    ------
    ScpiError
        -104 ``Data type error`` if ``text`` is neither a number nor an accepted keyword. No range check: see
        :func:`check_range`.

    Examples
    --------
    >>> parse_number("1e-3"), parse_number("max", maximum=1100.0)
    (0.001, 1100.0)
    """
    for mnemonic, value in (("MINimum", minimum), ("MAXimum", maximum), ("DEFault", default)):
        if value is not None and matches_mnemonic(text, mnemonic):
            return value
    try:
        return float(text)
    except ValueError:
        raise ScpiError(-104, "Data type error") from None


def check_range(value: float, minimum: float, maximum: float, *, message: str = "Data out of range") -> float:
    """``value`` unchanged if finite and in ``[minimum, maximum]``; otherwise -222 with ``message``.

    Examples
    --------
    >>> check_range(5.0, 1, 10)
    5.0
    >>> check_range(math.inf, 1, math.inf)
    Traceback (most recent call last):
    ...
    drivers.virtual.scpi.ScpiError: -222 Data out of range
    """
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise ScpiError(-222, message)
    return value


# -- the error queue ---------------------------------------------------------------------------------------------


class ErrorQueue:
    """The SCPI error queue: first in, first out, at most ``capacity`` entries.

    When the queue is full a new error is not added; instead the newest entry becomes ``-350 "Queue overflow"``
    (SCPI-99, 21.8), so the oldest errors, which explain what went wrong first, are kept.

    Parameters
    ----------
    capacity
        Entries the instrument keeps, at least 1.

    Examples
    --------
    >>> queue = ErrorQueue(2)
    >>> for code in (-113, -222, -104):
    ...     queue.push(code, "error")
    >>> queue.pop()[:2], queue.pop()[:2], queue.pop()[:2]
    ((-113, 'error'), (-350, 'Queue overflow'), (0, 'No error'))
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: {capacity!r} must be at least 1")
        self.capacity = capacity
        self._entries: deque[tuple[int, str, float]] = deque()

    def push(self, code: int, message: str, *, time_s: float = 0.0) -> None:
        """Queue an error; ``time_s`` is kept with it for instruments whose reply carries a time stamp."""
        if len(self._entries) >= self.capacity:
            self._entries[-1] = (-350, "Queue overflow", time_s)
        else:
            self._entries.append((code, message, time_s))

    def pop(self) -> tuple[int, str, float]:
        """Remove and return the oldest ``(code, message, time_s)``; ``(0, "No error", 0.0)`` when empty."""
        return self._entries.popleft() if self._entries else (*NO_ERROR, 0.0)

    def clear(self) -> None:
        """Empty the queue (``*CLS``)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def format_error(code: int, message: str) -> str:
    """The plain SCPI error reply ``<code>,"<message>"``.

    Examples
    --------
    >>> format_error(-113, "Undefined header")
    '-113,"Undefined header"'
    """
    return f'{code},"{message}"'


# -- reply numbers -----------------------------------------------------------------------------------------------


def format_nr3(value: float, *, digits: int = 6) -> str:
    """One number in SCPI's NR3 form with ``digits`` decimals: ``1.234567E-03``.

    Examples
    --------
    >>> format_nr3(0.001234567), format_nr3(-2.0, digits=2)
    ('1.234567E-03', '-2.00E+00')
    """
    return f"{value:.{digits}E}"


def format_nr3_list(
    values: Iterable[float], *, digits: int = 6, plus_sign: bool = False, exponent_digits: int = 2
) -> str:
    """Comma-separated NR3 numbers, optionally with an explicit ``+`` and exponents padded to ``exponent_digits``.

    Examples
    --------
    >>> format_nr3_list([1.0, -0.5])
    '1.000000E+00,-5.000000E-01'
    >>> format_nr3_list([4.5e-7, 0.0], digits=3, plus_sign=True, exponent_digits=3)
    '+4.500E-007,+0.000E+000'
    """
    template = "{:" + ("+" if plus_sign else "") + f".{digits}E" + "}"
    text = ",".join(map(template.format, values))
    for width in range(2, exponent_digits):  # Python writes at least two exponent digits
        text = re.sub(rf"E([+-])(\d{{{width}}})(?=,|$)", rf"E\g<1>{'0' * (exponent_digits - width)}\g<2>", text)
    return text
