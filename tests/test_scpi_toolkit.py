"""Known-answer tests of the shared SCPI helpers: the twins' toolkit and the drivers' error-queue drain."""

from __future__ import annotations

import doctest
import math

import pytest

import drivers.scpi
from drivers.base import Instrument
from drivers.errors import InstrumentError, InstrumentReplyError, InstrumentTimeoutError
from drivers.scpi import drain_error_queue, format_number, parse_error_reply
from drivers.testing import TIMEOUT, expected_protocol
from drivers.virtual import scpi
from drivers.virtual.scpi import ErrorQueue, ScpiError, scpi_header


def scpi_code(call: object, *arguments: object, **options: object) -> int:
    """The SCPI error code ``call`` raises."""
    with pytest.raises(ScpiError) as caught:
        call(*arguments, **options)  # type: ignore[operator]
    return caught.value.code


@pytest.mark.parametrize("module", [scpi, drivers.scpi])
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.attempted > 0
    assert result.failed == 0


# -- headers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "matching", "not_matching"),
    [
        (
            "[:SENSe]:POWer[:DC]:RANGe:AUTO?",
            [":SENS:POW:RANG:AUTO?", ":POW:DC:RANG:AUTO?", ":sense:power:dc:range:auto?", ":SENSE:POW:DC:RANGE:AUTO?"],
            [":SENS:POWE:RANG:AUTO?", ":SENS:POW:RANG:AUTO", ":SENS:POW:RANG:AUTO?X", ":SEN:POW:RANG:AUTO?"],
        ),
        ("SYSTem:ERRor[:NEXT]", [":SYST:ERR", ":system:error:next", ":SYST:ERR:NEXT"], [":SYST:ERR?", ":SYS:ERR"]),
        (
            ":DISPlay[:WINDow]:TRACe:Y1[:SCALe]:UNIT",
            [":DISP:TRAC:Y1:UNIT", ":DISPLAY:WINDOW:TRACE:Y1:SCALE:UNIT"],
            [":DISP:TRAC:Y:UNIT", ":DISP:TRAC:Y2:UNIT"],
        ),
        (":CFORM1", [":CFORM1", ":cform1"], [":CFORM0", ":CFORM"]),
        ("*IDN?", [":*IDN?", ":*idn?"], [":*IDN", ":*IDN?X"]),
        (":OUTPut[1][:STATe]", [":OUTP", ":OUTP1", ":OUTPUT1:STATE", ":OUTP2"], [":OUTP11X", ":OUTP:STAT?"]),
    ],
)
def test_header_templates_match_long_short_and_optional_forms(
    template: str, matching: list[str], not_matching: list[str]
) -> None:
    pattern = scpi_header(template)
    for header in matching:
        assert pattern.match(header), header
    for header in not_matching:
        assert not pattern.match(header), header


@pytest.mark.parametrize("template", [":SYSTem:error", ":SYST::ERR", ":SOUR[", "[:SENSe:POW"])
def test_header_template_not_in_the_notation_is_refused(template: str) -> None:
    with pytest.raises(ValueError, match=r"template|mnemonic"):
        scpi_header(template)


def test_find_command_takes_the_first_match_and_checks_suffixes() -> None:
    commands = [
        (scpi_header(":SOURce[1]:CURRent[:LEVel]"), "level"),
        (scpi_header(":SOURce[1]:CURRent[:LEVel]?"), "level?"),
        (scpi_header(":ROUTe[2]:CLOSe"), "route"),
        (scpi_header(":SOURce[1]:CURRent:LEVel"), "never reached"),
    ]
    assert scpi.find_command(commands, ":SOUR:CURR") == "level"
    assert scpi.find_command(commands, ":SOUR1:CURR:LEV") == "level"
    assert scpi.find_command(commands, ":source1:current?") == "level?"
    assert scpi.find_command(commands, ":ROUT2:CLOS") == "route"
    assert scpi_code(scpi.find_command, commands, ":SOUR2:CURR") == -114
    assert scpi_code(scpi.find_command, commands, ":SOUR01:CURR") == -114  # the suffix is exactly 1..n
    assert scpi_code(scpi.find_command, commands, ":ROUT3:CLOS") == -114
    assert scpi_code(scpi.find_command, commands, ":SOUR:VOLT") == -113
    assert scpi_code(scpi.find_command, [], ":SOUR:CURR") == -113


def test_split_command_normalizes_the_leading_colon_and_keeps_the_query_mark() -> None:
    assert scpi.split_command("SENS:CORR:WAV 405") == (":SENS:CORR:WAV", "405")
    assert scpi.split_command('  :TRAC:DATA? 1, 2,  "defbuffer1"  \n') == (":TRAC:DATA?", '1, 2,  "defbuffer1"')
    assert scpi.split_command("::MEAS:POW?") == (":MEAS:POW?", "")
    assert scpi.split_command("*RST") == (":*RST", "")


def test_require_form_is_an_undefined_header() -> None:
    scpi.require_form(True)
    assert scpi_code(scpi.require_form, False) == -113


# -- parameters ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   ", []),
        ("AUTO", ["AUTO"]),
        ('1, 5, "defbuffer1", SOUR, READ', ["1", "5", '"defbuffer1"', "SOUR", "READ"]),
        ("'a,b', 2", ["'a,b'", "2"]),
        ("1,,3", ["1", "", "3"]),
        ("1,", ["1", ""]),
        ('"unclosed, still one', ['"unclosed, still one']),
    ],
)
def test_split_arguments_splits_at_commas_outside_quotes(text: str, expected: list[str]) -> None:
    assert scpi.split_arguments(text) == expected


def test_unquote_needs_matching_quotes() -> None:
    assert scpi.unquote('"defbuffer1"') == "defbuffer1"
    assert scpi.unquote("'VOLT:DC'") == "VOLT:DC"
    assert scpi.unquote('""') == ""
    for text in ("defbuffer1", '"defbuffer1', "\"defbuffer1'", '"'):
        assert scpi_code(scpi.unquote, text) == -104, text


def test_require_argument_is_a_missing_parameter_when_empty() -> None:
    assert scpi.require_argument("ON") == "ON"
    assert scpi_code(scpi.require_argument, "") == -109


@pytest.mark.parametrize(
    ("value", "mnemonic", "expected"),
    [
        ("RIS", "RISing", True),
        ("rising", "RISing", True),
        ("RISI", "RISing", False),
        ("", "RISing", False),
        ("TRA", "TRA", True),
        ("Y1", "Y1", True),
        ("ASC", "ASCii", True),
        ("ASCII", "ASCii", True),
    ],
)
def test_matches_mnemonic_takes_exactly_the_long_or_short_form(value: str, mnemonic: str, expected: bool) -> None:
    assert scpi.matches_mnemonic(value, mnemonic) is expected


def test_parse_number_reads_numbers_and_only_the_keywords_given() -> None:
    assert scpi.parse_number("405") == 405.0
    assert scpi.parse_number(" -1.5e-3 ") == -1.5e-3
    assert scpi.parse_number("+2") == 2.0
    assert scpi.parse_number("MIN", minimum=400.0) == 400.0
    assert scpi.parse_number("minimum", minimum=400.0) == 400.0
    assert scpi.parse_number("MAX", maximum=1100.0) == 1100.0
    assert scpi.parse_number("Def", minimum=0.0, default=21.0) == 21.0
    assert math.isinf(scpi.parse_number("inf"))  # a number to Python; check_range refuses it
    for text, options in [("", {}), ("MIN", {}), ("MAX", {"minimum": 1.0}), ("MINI", {"minimum": 1.0}), ("1 V", {})]:
        assert scpi_code(scpi.parse_number, text, **options) == -104, text


def test_check_range_is_inclusive_and_refuses_non_finite_values() -> None:
    assert scpi.check_range(1.0, 1.0, 2.0) == 1.0
    assert scpi.check_range(2.0, 1.0, 2.0) == 2.0
    for value in (0.999, 2.001, math.nan, math.inf, -math.inf):
        assert scpi_code(scpi.check_range, value, 1.0, 2.0) == -222, value
    with pytest.raises(ScpiError, match="-222 Parameter data out of range"):
        scpi.check_range(300.0, -210.0, 210.0, message="Parameter data out of range")


# -- the error queue -----------------------------------------------------------------------------------------------


def test_error_queue_is_first_in_first_out_and_reports_no_error_when_empty() -> None:
    queue = ErrorQueue(10)
    assert queue.pop() == (0, "No error", 0.0)
    queue.push(-113, "Undefined header", time_s=1.5)
    queue.push(-222, "Data out of range")
    assert len(queue) == 2
    assert queue.pop() == (-113, "Undefined header", 1.5)
    assert queue.pop() == (-222, "Data out of range", 0.0)
    assert queue.pop() == (0, "No error", 0.0)
    assert len(queue) == 0


def test_error_queue_overflow_keeps_the_oldest_and_ends_with_queue_overflow() -> None:
    queue = ErrorQueue(3)
    for index in range(6):
        queue.push(-100 - index, f"error {index}", time_s=float(index))
    assert len(queue) == 3
    assert [queue.pop() for _ in range(4)] == [
        (-100, "error 0", 0.0),
        (-101, "error 1", 1.0),
        (-350, "Queue overflow", 5.0),  # the time of the last error that did not fit
        (0, "No error", 0.0),
    ]


def test_error_queue_clear_and_capacity() -> None:
    queue = ErrorQueue(1)
    queue.push(-113, "Undefined header")
    queue.clear()
    assert queue.pop()[:2] == (0, "No error")
    with pytest.raises(ValueError, match="capacity"):
        ErrorQueue(0)


def test_format_error_is_code_comma_quoted_message() -> None:
    assert scpi.format_error(0, "No error") == '0,"No error"'
    assert scpi.format_error(-222, "Data out of range") == '-222,"Data out of range"'


# -- reply numbers ------------------------------------------------------------------------------------------------


def test_format_nr3_known_answers() -> None:
    assert scpi.format_nr3(1.234567e-3) == "1.234567E-03"
    assert scpi.format_nr3(0.0) == "0.000000E+00"
    assert scpi.format_nr3(-633.0) == "-6.330000E+02"
    assert scpi.format_nr3(9.9e37) == "9.900000E+37"
    assert scpi.format_nr3(1e-3, digits=2) == "1.00E-03"


def test_format_nr3_list_known_answers() -> None:
    assert scpi.format_nr3_list([]) == ""
    assert scpi.format_nr3_list([0.1, -2.5e-9]) == "1.000000E-01,-2.500000E-09"
    aq6370 = {"digits": 8, "plus_sign": True, "exponent_digits": 3}
    assert scpi.format_nr3_list([4.5e-7, -1e-12, 0.0], **aq6370) == "+4.50000000E-007,-1.00000000E-012,+0.00000000E+000"
    assert scpi.format_nr3_list([1e-120, 1e5], **aq6370) == "+1.00000000E-120,+1.00000000E+005"  # already three digits
    assert scpi.format_nr3_list([math.inf, 1.0], **aq6370) == "+INF,+1.00000000E+000"


# -- driver side: parameters and the error-queue drain ----------------------------------------------------------


def test_format_number_known_answers() -> None:
    assert format_number(100000) == "100000"
    assert format_number(0.1) == "0.1"
    assert format_number(1e6) == "1000000"
    assert format_number(1e10) == "1e+10"
    assert format_number(1e-9) == "1e-09"
    assert format_number(0.1 + 0.2) == "0.3"
    assert format_number(1.23456789012) == "1.23456789"
    assert format_number(1.23456789012, significant_digits=9) == "1.23456789"
    assert format_number(632.8) == "632.8"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('0,"No error"', (0, "No error")),
        ('0,"No error;0;0 0"', (0, "No error")),
        ('-113,"Undefined header;1;2024/01/01 00:00:12.345"', (-113, "Undefined header")),
        ('+0, "No error"', (0, "No error")),
        ("-222,Data out of range", (-222, "Data out of range")),
        ("0", (0, "")),
    ],
)
def test_parse_error_reply_known_answers(reply: str, expected: tuple[int, str]) -> None:
    assert parse_error_reply(reply) == expected


@pytest.mark.parametrize("reply", ["", "what?", "ERR", '"No error",0'])
def test_parse_error_reply_refuses_what_is_not_an_error_entry(reply: str) -> None:
    with pytest.raises(ValueError, match="code"):
        parse_error_reply(reply)


class _Meter(Instrument):
    model = "test meter"


def test_drain_reads_until_no_error_and_returns_every_error() -> None:
    exchanges = [
        (b":SYST:ERR?\n", b'-113,"Undefined header"\n'),
        (b":SYST:ERR?\n", b'-222,"Data out of range;1;2024/01/01 00:00:01.000"\n'),
        (b":SYST:ERR?\n", b'0,"No error"\n'),
    ]
    with expected_protocol(_Meter, exchanges) as meter:
        assert drain_error_queue(meter) == [
            (-113, "Undefined header", '-113,"Undefined header"'),
            (-222, "Data out of range", '-222,"Data out of range;1;2024/01/01 00:00:01.000"'),
        ]
    with expected_protocol(_Meter, [(b"SYST:ERR?\n", b'0,"No error"\n')]) as meter:
        assert drain_error_queue(meter, query="SYST:ERR?") == []


def test_drain_stops_after_max_reads() -> None:
    exchanges = [(b":SYST:ERR?\n", b'-100,"Command error"\n')] * 3
    with expected_protocol(_Meter, exchanges) as meter:
        assert [code for code, _, _ in drain_error_queue(meter, max_reads=3)] == [-100, -100, -100]


def drain_failure(reply: object, **options: str) -> InstrumentError:
    """What ``drain_error_queue`` raises when ``:SYST:ERR?`` is answered with ``reply``."""
    with expected_protocol(_Meter, [(b":SYST:ERR?\n", reply)]) as meter, pytest.raises(InstrumentError) as caught:
        drain_error_queue(meter, **options)
    return caught.value


def test_drain_failure_names_the_query_or_the_command_it_checks() -> None:
    unreadable = drain_failure(b"what?\n")
    assert isinstance(unreadable, InstrumentReplyError)
    assert (unreadable.command, unreadable.reply) == (":SYST:ERR?", "what?")
    assert "not an error-queue entry" in str(unreadable)

    on_behalf = drain_failure(b"what?\n", command=":OUTP ON")
    assert isinstance(on_behalf, InstrumentReplyError)
    assert (on_behalf.command, on_behalf.reply) == (":OUTP ON", "what?")
    assert "error-queue check ':SYST:ERR?' failed: not an error-queue entry (reply 'what?')" in str(on_behalf)

    silent = drain_failure(TIMEOUT, command=":OUTP ON")
    assert isinstance(silent, InstrumentTimeoutError)
    assert silent.command == ":OUTP ON"
    assert "error-queue check ':SYST:ERR?' failed: no reply" in str(silent)
