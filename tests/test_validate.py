"""Validation and phone normalisation: the fast path against the full one, every refusal code,
the body limit in code points, the v2 wire format, and that no input makes `validate` raise.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsend._models import Encoding, Message, Outcome, Status
from streamsend._outcomes import OutcomeEncoder
from streamsend._validate import _PLAIN_LINE, Validator, is_e164, normalise_phone
from streamsend.emulator._validation import normalise_v1_phone

V1_SENDER = "pn_abc123def456"
V2_SENDER = "+18005551000"
TO = "+14155551234"

#: Every code `validate` may give an invalid line.
INVALID_CODES = {
    "invalid_json",
    "not_an_object",
    "missing_to",
    "missing_body",
    "wrong_type",
    "body_too_long",
    "invalid_phone",
    "duplicate_key",
    "trailing_garbage",
    "too_deep",
    "invalid_utf8",
    "nul_byte",
    "missing_from",
    "invalid_list_number",
    "wrong_sender_field",
    "invalid_sender",
}


def v1(default_sender: str | None = V1_SENDER) -> Validator:
    return Validator(api_version="v1", default_sender=default_sender)


def v2(default_sender: str | None = V2_SENDER) -> Validator:
    return Validator(api_version="v2", default_sender=default_sender)


def as_message(result: Message | Outcome) -> Message:
    assert isinstance(result, Message), f"expected a Message, got {result}"
    return result


def as_invalid(result: Message | Outcome) -> Outcome:
    assert isinstance(result, Outcome), f"expected an invalid Outcome, got {result}"
    assert result.status is Status.INVALID
    return result


# -- the fast path and the full path agree ------------------------------------------------------

_space = st.sampled_from(["", " "])  # as JSON serialisers write it: compact, or one space
_e164 = st.builds(
    lambda first, rest: "+" + first + rest,
    st.sampled_from("123456789"),
    st.text("0123456789", min_size=7, max_size=14),
)
# Printable ASCII without quote and backslash (what the plain shape carries unescaped), with the
# backtick and GSM-7 extension characters in, so bodies also fall back from the fast path.
_plain_chars = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')
_plain_body = st.one_of(
    st.text(_plain_chars, min_size=1, max_size=200),
    st.integers(min_value=1, max_value=1600).map(lambda n: ("Hello {John}! " * 120)[:n]),
)
_ref = st.one_of(
    st.none(),
    st.text(_plain_chars, max_size=256).map(lambda s: orjson.dumps(s).decode()),
    st.integers(min_value=-(10**17), max_value=10**18 - 1).map(str),
)


@st.composite
def plain_lines(draw: st.DrawFn) -> tuple[str, str, str | None, str, str]:
    """A line of the plain shape: (to, body, ref as JSON text or None, the line, the same line
    with the body's first character written as a \\u escape)."""
    to, body, ref = draw(_e164), draw(_plain_body), draw(_ref)
    key = draw(st.sampled_from(["to_msisdn", "to"]))
    s = [draw(_space) for _ in range(5)]
    escaped_body = f"\\u{ord(body[0]):04x}{body[1:]}"
    lines = []
    for text in (body, escaped_body):
        line = f'{{"{key}":{s[0]}"{to}",{s[1]}"body":{s[2]}"{text}"'
        if ref is not None:
            line += f',{s[3]}"ref":{s[4]}{ref}'
        lines.append(line + "}")
    return to, body, ref, lines[0], lines[1]


@given(case=plain_lines(), api=st.sampled_from(["v1", "v2"]))
@settings(max_examples=500, deadline=None)
def test_fast_and_full_paths_agree(case: tuple[str, str, str | None, str, str], api: str) -> None:
    """A plain line gives the same Message by the fast path as by the full parse, and its wire
    bytes are the JSON object the API version wants."""
    to, body, ref, line, escaped = case
    raw = line.encode()
    validator = v1() if api == "v1" else v2()
    assert _PLAIN_LINE.fullmatch(raw), "the generator must produce fast-path lines"

    fast = as_message(validator.validate("in.ndjson", 7, raw))
    full = as_message(validator._validate_full("in.ndjson", 7, raw))
    assert fast == full

    # Shapes the fast path doesn't take reach the full path through the public entry point,
    # and must give the same message: an extra field, an escape, surrounding whitespace.
    extra = line[:-1] + ', "campaign": {"id": 1}}'
    for variant in (extra, escaped, f" \t{line}\t "):
        assert variant != line
        assert as_message(validator.validate("in.ndjson", 7, variant.encode())) == fast

    expected: dict[str, object] = (
        {"to_msisdn": to, "body": body}
        if api == "v1"
        else {"to": to, "list_number": V2_SENDER, "body": body}
    )
    assert orjson.loads(fast.wire) == expected
    assert (fast.source, fast.line, fast.to) == ("in.ndjson", 7, to)
    assert fast.sender == (V1_SENDER if api == "v1" else V2_SENDER)
    assert fast.ref_json == (b"" if ref is None else orjson.dumps(orjson.loads(ref)))


@given(
    body=st.text(
        st.characters(blacklist_categories=["Cs"]),  # lone surrogates aren't valid UTF-8
        min_size=1,
        max_size=300,
    ),
    api=st.sampled_from(["v1", "v2"]),
)
@settings(deadline=None)
def test_any_body_survives_the_round_trip(body: str, api: str) -> None:
    """Whatever the body's characters (escapes, quotes, emoji, controls), the wire carries it
    unchanged and the segment count is the one `count_segments` gives."""
    from streamsend._segments import count_segments

    raw = orjson.dumps({"to_msisdn": TO, "body": body})
    validator = v1() if api == "v1" else v2()
    message = as_message(validator.validate("-", 1, raw))
    assert orjson.loads(message.wire)["body"] == body
    assert (message.segments, message.encoding) == count_segments(body)


_any_line = st.one_of(
    plain_lines().map(lambda case: case[3].encode()),
    plain_lines().map(lambda case: case[4].encode()),
    st.sampled_from(
        [
            b"",
            b" ",
            b"\t \t",
            b"{}",
            b'{"to_msisdn": "4155551234", "body": "x"}',
            b'{"to_msisdn": "+14155551234", "body": "`backtick`"}',
            b'{"to_msisdn": "+14155551234", "body": "caf\xc3\xa9"}',
            b"\xff",
        ]
    ),
    st.none(),  # a line over the length limit
    st.binary(max_size=40),
)


@given(lines=st.lists(_any_line, max_size=30), api=st.sampled_from(["v1", "v2"]))
@settings(max_examples=300, deadline=None)
def test_validate_lines_is_validate_per_line(lines: list[bytes | None], api: str) -> None:
    """The block validator (its own inlined fast path) gives, line for line, what `validate`
    gives: Messages in order, invalid outcomes for the rest, nothing for blank lines and
    `line_too_long` for the lines the source dropped."""
    validator = v1() if api == "v1" else v2()
    messages: list[Message] = []
    others: list[Outcome] = []
    validator.validate_lines("in", 10, lines, messages, others)

    expected_messages: list[Message] = []
    expected_others: list[Outcome] = []
    for number, raw in enumerate(lines, start=10):
        if raw is None:
            expected_others.append(validator.line_too_long("in", number))
        elif raw.strip(b" \t\r\n\f\v"):
            result = validator.validate("in", number, raw)
            if isinstance(result, Message):
                expected_messages.append(result)
            else:
                expected_others.append(result)
    assert messages == expected_messages
    assert others == expected_others


# -- phone numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("+14155551234", "+14155551234", id="e164"),
        pytest.param("+442079460958", "+442079460958", id="e164-uk"),
        pytest.param("14155551234", "+14155551234", id="11-digits-with-1"),
        pytest.param("1 (415) 555-1234", "+14155551234", id="nanp-formatted"),
        pytest.param("+1.415.555.1234", "+14155551234", id="dots"),
        pytest.param("+44 20 7946 0958", "+442079460958", id="spaces"),
        pytest.param("+12345678", "+12345678", id="8-digits-shortest"),
        pytest.param("+123456789012345", "+123456789012345", id="15-digits-longest"),
        pytest.param("4155551234", None, id="10-digits-refused"),
        pytest.param("(415) 555-1234", None, id="10-digits-formatted-refused"),
        pytest.param("24155551234", None, id="11-digits-not-1"),
        pytest.param("+1234567", None, id="7-digits-too-short"),
        pytest.param("+1234567890123456", None, id="16-digits-too-long"),
        pytest.param("141555512345", None, id="12-digits-no-plus"),
        pytest.param("+04155551234", None, id="leading-zero"),
        pytest.param("+1415555123x", None, id="letter"),
        pytest.param("+١٤١٥٥٥٥١٢٣٤", None, id="arabic-indic-digits"),
        pytest.param("+１４１５５５５１２３４", None, id="fullwidth-digits"),
        pytest.param("１４１５５５５１２３４", None, id="fullwidth-nanp"),
        pytest.param("", None, id="empty"),
        pytest.param("+", None, id="plus-only"),
        pytest.param("++14155551234", None, id="double-plus"),
    ],
)
def test_normalise_phone(raw: str, expected: str | None) -> None:
    """The service's phone rule: formatting stripped, E.164 kept, 11 digits with 1 gain a plus."""
    assert normalise_phone(raw) == expected
    result = v1().validate("-", 1, orjson.dumps({"to_msisdn": raw, "body": "hi"}))
    if expected is None:
        assert as_invalid(result).code == "invalid_phone"
    else:
        assert as_message(result).to == expected
        assert orjson.loads(as_message(result).wire)["to_msisdn"] == expected


@given(st.text("+0123456789 -.()x\t", max_size=20))
@settings(max_examples=500, deadline=None)
def test_never_stricter_than_the_service(raw: str) -> None:
    """Every number the (emulated) service accepts, we accept and normalise the same way; every
    number we accept, the service accepts as we send it."""
    theirs = normalise_v1_phone(raw)
    ours = normalise_phone(raw)
    if theirs is not None:
        assert ours == theirs
    if ours is not None:
        assert normalise_v1_phone(ours) == ours
        assert is_e164(ours)


# -- every refusal -------------------------------------------------------------------------------

_NESTED_300 = "[" * 300 + "]" * 300


@pytest.mark.parametrize(
    ("validator", "raw", "code"),
    [
        pytest.param(v1(), b'{"to_msisdn": "+14155551234", "body":', "invalid_json", id="cut"),
        pytest.param(v1(), b"{'to': 1}", "invalid_json", id="single-quotes"),
        pytest.param(v1(), b"[1, 2]", "not_an_object", id="array"),
        pytest.param(v1(), b'"text"', "not_an_object", id="string"),
        pytest.param(v1(), b"42", "not_an_object", id="number"),
        pytest.param(v1(), b"null", "not_an_object", id="null"),
        pytest.param(v1(), b'{"body": "hi"}', "missing_to", id="no-to"),
        pytest.param(v1(), b'{"to_msisdn": null, "body": "hi"}', "missing_to", id="null-to"),
        pytest.param(v1(), b'{"to_msisdn": "+14155551234"}', "missing_body", id="no-body"),
        pytest.param(
            v1(), b'{"to_msisdn": "+14155551234", "body": ""}', "missing_body", id="empty-body"
        ),
        pytest.param(
            v1(), b'{"to_msisdn": 14155551234, "body": "hi"}', "wrong_type", id="numeric-to"
        ),
        pytest.param(
            v1(), b'{"to_msisdn": "+14155551234", "body": 5}', "wrong_type", id="numeric-body"
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "hi", "from_phone_number_id": 7}',
            "wrong_type",
            id="numeric-sender",
        ),
        pytest.param(
            v2(),
            b'{"to": "+14155551234", "body": "hi", "contact_data": [1]}',
            "wrong_type",
            id="v2-contact-data-not-object",
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "' + b"a" * 1601 + b'"}',
            "body_too_long",
            id="1601-ascii",
        ),
        pytest.param(
            v1(), b'{"to_msisdn": "4155551234", "body": "hi"}', "invalid_phone", id="10-digits"
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "a", "body": "b"}',
            "duplicate_key",
            id="two-bodies",
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "to_msisdn": "+14155550000", "body": "a"}',
            "duplicate_key",
            id="two-recipients",
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "a", "bo\\u0064y": "b"}',
            "duplicate_key",
            id="two-bodies-one-escaped",
        ),
        pytest.param(
            v1(), b'{"to_msisdn": "+14155551234", "body": "a"} x', "trailing_garbage", id="text"
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "a"}{"to_msisdn": "+14155551234"}',
            "trailing_garbage",
            id="two-objects",
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "too_deep",
            id="deep-extra-field",
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "a", "ref": ' + _NESTED_300.encode() + b"}",
            "too_deep",
            id="ref-deeper-than-the-encoder-goes",
        ),
        pytest.param(
            v2(),
            b'{"to": "+14155551234", "body": "a", "metadata": {"m": '
            + _NESTED_300.encode()
            + b"}}",
            "too_deep",
            id="v2-metadata-deeper-than-the-encoder-goes",
        ),
        pytest.param(
            v1(), b'{"to_msisdn": "+14155551234", "body": "\xff"}', "invalid_utf8", id="ff"
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "\xed\xa0\x80"}',
            "invalid_utf8",
            id="encoded-surrogate",
        ),
        pytest.param(v1(), b'{"to_msisdn": "+14155551234", "body": "a\x00"}', "nul_byte", id="nul"),
        pytest.param(
            v1(default_sender=None),
            b'{"to_msisdn": "+14155551234", "body": "hi"}',
            "missing_from",
            id="v1-no-sender",
        ),
        pytest.param(
            v2(default_sender=None),
            b'{"to": "+14155551234", "body": "hi"}',
            "missing_from",
            id="v2-no-sender",
        ),
        pytest.param(
            v2(),
            b'{"to": "+14155551234", "body": "hi", "list_number": "18005551000"}',
            "invalid_list_number",
            id="v2-list-number-not-e164",
        ),
        pytest.param(
            v2(default_sender=None),
            b'{"to": "+14155551234", "body": "hi", "list_number": "pn_abc123def456"}',
            "invalid_list_number",
            id="v2-v1-style-sender",
        ),
        pytest.param(
            v2(),
            b'{"to": "+14155551234", "body": "hi", "from_phone_number_id": "pn_abc"}',
            "wrong_sender_field",
            id="v1-sender-field-in-a-v2-run",
        ),
        pytest.param(
            v1(),
            b'{"to": "+14155551234", "body": "hi", "list_number": "+18005551000"}',
            "wrong_sender_field",
            id="v2-sender-field-in-a-v1-run",
        ),
        pytest.param(
            v1(),
            b'{"to_msisdn": "+14155551234", "body": "hi", "from_phone_number_id": "'
            + b"p" * 129
            + b'"}',
            "invalid_sender",
            id="v1-sender-too-long",
        ),
    ],
)
def test_invalid_lines(validator: Validator, raw: bytes, code: str) -> None:
    """Each kind of bad line is refused with its own code, a message, and nothing to send."""
    outcome = as_invalid(validator.validate("in.ndjson", 3, raw))
    assert outcome.code == code
    assert outcome.error
    assert (outcome.source, outcome.line) == ("in.ndjson", 3)
    assert code in INVALID_CODES


def test_invalid_line_echoes_ref() -> None:
    """A refused line that carries a `ref` still echoes it, so the caller can match it up."""
    outcome = as_invalid(v1().validate("-", 1, b'{"to_msisdn": "555", "body": "x", "ref": "a-1"}'))
    assert (outcome.code, outcome.ref) == ("invalid_phone", "a-1")


def test_legacy_to_is_a_fallback_for_null_to_msisdn() -> None:
    """The service reads `to` when `to_msisdn` is null; so do we (never stricter than it)."""
    result = v1().validate("-", 1, b'{"to_msisdn": null, "to": "+14155551234", "body": "hi"}')
    assert as_message(result).to == TO


def test_nested_duplicate_keys_do_not_depend_on_neighbours() -> None:
    """Duplicate keys inside a nested object are judged alike whether or not some top-level key
    happens to appear twice in the text."""
    plain = b'{"to_msisdn": "+14155551234", "body": "a", "x": {"k": 1, "k": 2}}'
    echoing = b'{"to_msisdn": "+14155551234", "body": "a", "x": {"body": 1, "body": 2}}'
    first, second = v1().validate("-", 1, plain), v1().validate("-", 1, echoing)
    assert type(first) is type(second)
    if isinstance(first, Outcome):
        assert isinstance(second, Outcome)
        assert first.code == second.code


# -- the body limit in code points ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        pytest.param("a" * 1600, True, id="1600-ascii"),
        pytest.param("a" * 1601, False, id="1601-ascii"),
        pytest.param("😀" * 1600, True, id="1600-emoji"),  # 6,400 bytes, 3,200 UTF-16 units
        pytest.param("😀" * 1601, False, id="1601-emoji"),
        pytest.param("é" * 1600, True, id="1600-two-byte"),
        pytest.param("e\u0301" * 800, True, id="800-combined-is-1600-code-points"),
        pytest.param("€" * 1601, False, id="1601-euro"),
    ],
)
def test_body_limit_counts_code_points(body: str, valid: bool) -> None:
    """The 1,600 limit is in code points, whatever the bytes or UTF-16 units."""
    result = v1().validate("-", 1, orjson.dumps({"to_msisdn": TO, "body": body}))
    if valid:
        assert orjson.loads(as_message(result).wire)["body"] == body
    else:
        assert as_invalid(result).code == "body_too_long"


def test_emoji_body_segments() -> None:
    """1,600 emoji are UCS-2, 3,200 UTF-16 units: 48 segments of 67."""
    message = as_message(v1().validate("-", 1, orjson.dumps({"to": TO, "body": "😀" * 1600})))
    assert (message.segments, message.encoding) == (48, Encoding.UCS2)


# -- the v2 wire format, senders and refs --------------------------------------------------------


def test_v2_wire_passes_contact_data_and_metadata_through() -> None:
    """v2 messages carry `to`, `list_number`, `body`, and the line's contact_data and metadata."""
    line = {
        "to": "1 (415) 555-1234",
        "body": "Hi {{messageId}}",
        "contact_data": {"first_name": "Ann", "custom_fields": {"tier": "gold"}},
        "metadata": {"campaign": "spring", "n": [1, 2]},
        "other": "ignored",
    }
    message = as_message(v2().validate("-", 1, orjson.dumps(line)))
    assert orjson.loads(message.wire) == {
        "to": TO,
        "list_number": V2_SENDER,
        "body": "Hi {{messageId}}",
        "contact_data": line["contact_data"],
        "metadata": line["metadata"],
    }


def test_v1_wire_has_only_recipient_and_body() -> None:
    """v1 messages name the sender once per request, so a message is just `to_msisdn` and `body`."""
    line = {"to": "14155551234", "body": "Hi", "metadata": {"a": 1}, "ref": 5}
    message = as_message(v1().validate("-", 1, orjson.dumps(line)))
    assert orjson.loads(message.wire) == {"to_msisdn": TO, "body": "Hi"}
    assert message.sender == V1_SENDER


def test_line_sender_overrides_the_default() -> None:
    """A line's own `from_phone_number_id` / `list_number` wins over --from."""
    m1 = as_message(
        v1().validate(
            "-", 1, b'{"to": "+14155551234", "body": "a", "from_phone_number_id": "pn_x"}'
        )
    )
    assert m1.sender == "pn_x"
    m2 = as_message(
        v2().validate("-", 1, b'{"to": "+14155551234", "body": "a", "list_number": "+18005550000"}')
    )
    assert m2.sender == "+18005550000"
    assert orjson.loads(m2.wire)["list_number"] == "+18005550000"


@pytest.mark.parametrize(
    ("ref_text", "expected"),
    [
        pytest.param(b'"order-17"', "order-17", id="string"),
        pytest.param(b'"\\u00e9t\\u00e9 \\"q\\""', 'été "q"', id="string-with-escapes"),
        pytest.param(b"42", 42, id="int"),
        pytest.param(b"-7", -7, id="negative"),
        pytest.param(b"0", 0, id="zero"),
        pytest.param(b"1.5", 1.5, id="float"),
        pytest.param(b'{"a": [1]}', {"a": [1]}, id="object"),
    ],
)
@pytest.mark.parametrize("extra", [b"", b', "x": 1'], ids=["fast", "full"])
def test_ref_is_echoed(ref_text: bytes, expected: object, extra: bytes) -> None:
    """`ref`, string or number, comes back decoded exactly as given, by either path."""
    raw = b'{"to_msisdn": "+14155551234", "body": "hi", "ref": ' + ref_text + extra + b"}"
    message = as_message(v1().validate("-", 1, raw))
    assert orjson.loads(message.ref_json) == expected
    outcome = Outcome("-", 1, Status.QUEUED, ref_json=message.ref_json)
    assert outcome.ref == expected
    assert orjson.loads(OutcomeEncoder().encode([outcome]))["ref"] == expected


def test_negative_zero_ref_is_echoed_alike_by_both_paths() -> None:
    """`"ref": -0` is the same integer by the fast path and the full path."""
    raw = b'{"to_msisdn": "+14155551234", "body": "hi", "ref": -0}'
    assert as_message(v1().validate("-", 1, raw)) == as_message(v1()._validate_full("-", 1, raw))


# -- never raises --------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what orjson can write
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    ["to_msisdn", "to", "body", "ref", "from_phone_number_id", "list_number", "contact_data",
     "metadata", "x"]
)  # fmt: skip


@given(raw=st.binary(max_size=300), api=st.sampled_from(["v1", "v2"]))
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_never_raise(raw: bytes, api: str) -> None:
    """Any bytes at all end as a Message or an `invalid` Outcome with a known code."""
    for validator in (v1(), v1(None)) if api == "v1" else (v2(), v2(None)):
        result = validator.validate("-", 1, raw)
        if isinstance(result, Outcome):
            assert result.status is Status.INVALID
            assert result.code in INVALID_CODES


@given(
    fields=st.dictionaries(_field_names, _json_values | _e164, max_size=6),
    api=st.sampled_from(["v1", "v2"]),
)
@settings(max_examples=300, deadline=None)
def test_arbitrary_objects_never_raise(fields: dict[str, object], api: str) -> None:
    """Any JSON object ends as a Message whose wire carries its body, or a known refusal."""
    validator = v1() if api == "v1" else v2()
    result = validator.validate("-", 1, orjson.dumps(fields))
    if isinstance(result, Outcome):
        assert result.status is Status.INVALID
        assert result.code in INVALID_CODES
    else:
        assert orjson.loads(result.wire)["body"] == fields["body"]
