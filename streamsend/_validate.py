"""Validation: each input line becomes a `Message` ready for the wire, or an `invalid` Outcome.

Promises:
- Nothing reaches the service that it would refuse for shape: the line is a UTF-8 JSON object with
  a recipient the service accepts and a body of 1 to 1,600 characters (code points).
- Nothing the service would accept is refused here. Phone numbers follow the service's own rule:
  formatting characters are stripped; `+` and 8–15 digits (first not 0) is E.164; 11 digits
  starting with 1 gain a `+`. Everything else is `invalid_phone`.
- Every refusal has a precise code and a human message naming the field.

Most lines have the plain shape ``{"to_msisdn": "+1…", "body": "…"}`` (optionally with a `ref`).
Those are recognised with one bytes pattern and copied into the request body without decoding and
re-encoding; that was the largest single saving measured (about ×3.5, before this module existed).
Every other line takes the full path: parse, check, normalise, encode.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import partial

import orjson

from streamsend._models import Encoding, Message, Outcome, Status
from streamsend._protocol import protocol_for
from streamsend._segments import ASCII_SEGMENT_SPECIAL, count_segments, count_segments_ascii
from streamsend._types import ApiVersion

# Message(...) runs NamedTuple's generated Python __new__; building the tuple directly skips
# that frame, which is a tenth of validating a plain line.
_new_message = partial(tuple.__new__, Message)

MAX_BODY_CHARS = 1600

# The plain shape, as JSON serialisers write it (compact, or with one space after `:` and `,`).
# Body and ref are printable ASCII without quotes or backslashes, so their bytes are complete
# JSON string contents needing no escape handling, and their length in bytes is their length in
# code points; the phone is already E.164. Anything else (escapes, non-ASCII, other fields, a
# per-line sender, a number to normalise, other spacing) takes the full path, which is correct
# for every line and merely slower. Positive character classes match about a third faster
# than negated ones here.
_PLAIN_LINE = re.compile(
    rb'\{"(?:to_msisdn|to)": ?"(\+[1-9][0-9]{7,14})", ?"body": ?"([ !#-\[\]-~]{1,1600})"'
    rb'(?:, ?"ref": ?("[ !#-\[\]-~]{0,256}"|0|-?[1-9][0-9]{0,17}))?\}'
)

_PHONE_FORMATTING = str.maketrans("", "", " -.()\t")


def normalise_phone(raw: str) -> str | None:
    """The E.164 form of `raw` by the service's rule, or None when the service would refuse it."""
    digits = raw.translate(_PHONE_FORMATTING)
    if digits.startswith("+"):
        rest = digits[1:]
        if 8 <= len(rest) <= 15 and rest.isascii() and rest.isdigit() and rest[0] != "0":
            return digits
        return None
    if len(digits) == 11 and digits[0] == "1" and digits.isascii() and digits.isdigit():
        return "+" + digits
    return None


def country_code_hint(raw: str) -> str:
    """For a number refused only for want of a country code (a national number such as
    `(415) 555-0199`), what to write instead; "" otherwise."""
    digits = raw.translate(_PHONE_FORMATTING)
    if not (digits.isascii() and digits.isdigit() and 6 <= len(digits) <= 14):
        return ""
    if len(digits) == 10 and digits[0] not in "01":  # the North American national form
        return f"; it lacks a country code: for the US or Canada write +1{digits}"
    return "; it lacks a country code: write it in E.164 form, + then country code and number"


def is_e164(number: str) -> bool:
    """Strict E.164, as v2 wants `to` and `list_number`: no formatting at all."""
    rest = number[1:]
    return (
        number.startswith("+")
        and 8 <= len(rest) <= 15
        and rest.isascii()
        and rest.isdigit()
        and rest[0] != "0"
    )


class Validator:
    """Turns raw input lines into Messages or `invalid` Outcomes for one API version."""

    def __init__(
        self,
        *,
        api_version: ApiVersion = "v1",
        default_sender: str | None,
        max_line_bytes: int = 64 * 1024,
    ) -> None:
        self.api_version = api_version
        self.max_line_bytes = max_line_bytes  # the source enforces it; named in the error
        self.default_sender = default_sender
        self._protocol = protocol_for(api_version)
        self._sender_field = self._protocol.sender_field
        # The fast path can only serve lines that use the default sender; without one, every
        # line must name its own and takes the full path.
        self._fast = default_sender is not None and self._sender_problem(default_sender) is None
        self._default_sender_str = default_sender or ""
        # The plain line's wire form: the recipient and body bytes drop into this unchanged.
        self._wire_template = self._protocol.plain_message_template(default_sender or "")

    def validate(self, source: str, line: int, raw: bytes) -> Message | Outcome:
        """Validate one line (without its line ending). Never raises on any input."""
        match = _PLAIN_LINE.fullmatch(raw) if self._fast else None
        if match is not None:
            to, body, ref = match.groups()
            # One `translate` settles the usual body: no GSM-7 extension or non-GSM-7 character.
            size = len(body)
            counted: tuple[int, Encoding] | None
            if len(body.translate(None, ASCII_SEGMENT_SPECIAL)) == size:
                counted = (1 if size <= 160 else -(-size // 153)), Encoding.GSM7
            else:
                counted = count_segments_ascii(body)  # None: a backtick or a control character
            if counted is not None:
                return Message(
                    source,
                    line,
                    to.decode("ascii"),
                    self._default_sender_str,
                    self._wire_template % (to, body),
                    ref or b"",
                    *counted,
                )
        return self._validate_full(source, line, raw)

    def validate_lines(
        self,
        source: str,
        first_line: int,
        lines: Sequence[bytes | None],
        messages: list[Message],
        others: list[Outcome],
    ) -> None:
        """Validate consecutive lines (`lines[i]` is line `first_line + i`), appending Messages
        to `messages` and `invalid` Outcomes to `others`; blank lines give neither.

        The same as `validate` line by line, with the plain-line case inlined: this loop runs
        once per input line, and the call and attribute look-ups it saves are about a fifth of
        validating a plain line.
        """
        if not self._fast:
            for line, raw in enumerate(lines, first_line):
                self._take_line(source, line, raw, messages, others)
            return
        fullmatch = _PLAIN_LINE.fullmatch
        special = ASCII_SEGMENT_SPECIAL
        template = self._wire_template
        sender = self._default_sender_str
        gsm7 = Encoding.GSM7
        keep = messages.append
        for line, raw in enumerate(lines, first_line):
            if raw and (match := fullmatch(raw)) is not None:
                to, body, ref = match.groups()
                size = len(body)
                if len(body.translate(None, special)) == size:
                    keep(
                        _new_message(
                            (
                                source,
                                line,
                                to.decode("ascii"),
                                sender,
                                template % (to, body),
                                ref or b"",
                                1 if size <= 160 else -(-size // 153),
                                gsm7,
                            )
                        )
                    )
                    continue
            self._take_line(source, line, raw, messages, others)

    def _take_line(
        self,
        source: str,
        line: int,
        raw: bytes | None,
        messages: list[Message],
        others: list[Outcome],
    ) -> None:
        if not raw:
            if raw is None:
                others.append(self.line_too_long(source, line))
            return  # b"": a blank line, no message and no outcome
        result = self.validate(source, line, raw)
        if type(result) is Message:
            messages.append(result)
        elif not raw.isspace():  # a whitespace-only line is a blank line after all
            others.append(result)  # type: ignore[arg-type]

    def line_too_long(self, source: str, line: int) -> Outcome:
        return Outcome(
            source,
            line,
            Status.INVALID,
            "line_too_long",
            f"the line is longer than the limit of {self.max_line_bytes} bytes (max_line_bytes)",
        )

    def _validate_full(self, source: str, line: int, raw: bytes) -> Message | Outcome:
        def invalid(code: str, error: str, ref_json: bytes = b"") -> Outcome:
            return Outcome(source, line, Status.INVALID, code, error, ref_json=ref_json)

        if b"\x00" in raw:
            return invalid("nul_byte", "the line contains a NUL byte")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return invalid("invalid_utf8", f"the line is not valid UTF-8 (byte {exc.start + 1})")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            text = str(exc)
            if "trailing" in text or "after document" in text:
                return invalid("trailing_garbage", "the line has data after the JSON object")
            if "recursion" in text or "depth limit" in text:
                return invalid("too_deep", "the JSON is nested too deeply")
            return invalid("invalid_json", f"the line is not valid JSON: {text}")
        if not isinstance(obj, dict):
            return invalid(
                "not_an_object", f"the line is a JSON {type(obj).__name__}, not an object"
            )

        # orjson keeps the last of duplicate keys silently; a line with two bodies or two
        # recipients is ambiguous, so refuse it. The substring count is a cheap pre-check; the
        # exact parse runs only when a key appears twice in the text, or when a backslash means
        # a key may be spelt with escapes (`"bo\\u0064y"` is a second `body`).
        if (
            b"\\" in raw or any(raw.count(b'"' + key.encode() + b'"') > 1 for key in obj)
        ) and _has_duplicate_key(raw):
            return invalid("duplicate_key", "a field appears twice in the line")

        ref = obj.get("ref")
        try:
            ref_json = orjson.dumps(ref) if ref is not None else b""
        except orjson.JSONEncodeError:  # orjson reads deeper nesting than it writes
            return invalid("too_deep", "`ref` is nested too deeply")
        if isinstance(ref, float):
            ref_json = _exact_number(raw, ref_json)

        # As the service does: `to` is the fallback when `to_msisdn` is absent or null.
        to_value = obj.get("to_msisdn")
        if to_value is None:
            to_value = obj.get("to")
        if to_value is None:
            return invalid("missing_to", "the line has no `to_msisdn` (or `to`)", ref_json)
        if not isinstance(to_value, str):
            return invalid("wrong_type", "`to_msisdn` must be a string", ref_json)
        to = normalise_phone(to_value)
        if to is None:
            return invalid(
                "invalid_phone",
                f"not a phone number the service accepts: {to_value[:40]!r}"
                + country_code_hint(to_value),
                ref_json,
            )

        body = obj.get("body")
        if body is None:
            return invalid("missing_body", "the line has no `body`", ref_json)
        if body == "":
            return invalid(
                "missing_body", "`body` is empty: the service sends no empty SMS", ref_json
            )
        if not isinstance(body, str):
            return invalid("wrong_type", "`body` must be a string", ref_json)
        if len(body) > MAX_BODY_CHARS:
            return invalid(
                "body_too_long", f"`body` has {len(body)} characters; the limit is 1600", ref_json
            )

        for other_field in self._protocol.other_sender_fields:
            if obj.get(other_field) is not None:
                # A v1 input run with --api-version v2 (or the reverse) would otherwise send
                # every message from --from, silently, instead of the number the line names.
                return invalid(
                    "wrong_sender_field",
                    f"`{other_field}` is the other API version's sender field; with "
                    f"{self.api_version} name the sender in `{self._sender_field}`",
                    ref_json,
                )
        sender = obj.get(self._sender_field)
        if sender is None:
            sender = self.default_sender
        if sender is None:
            return invalid(
                "missing_from",
                f"no sender: give --from or a `{self._sender_field}` field on the line",
                ref_json,
            )
        problem = self._sender_problem(sender)
        if problem is not None:
            return invalid(problem[0], problem[1], ref_json)
        assert isinstance(sender, str)

        segments, encoding = count_segments(body)
        extra: dict[str, object] = {}
        for name in self._protocol.passthrough:
            if obj.get(name) is not None:  # null means absent, as it does for `ref`
                if not isinstance(obj[name], dict):
                    return invalid("wrong_type", f"`{name}` must be an object", ref_json)
                extra[name] = obj[name]
        try:
            wire = self._protocol.message(to, sender, body, extra)
        except orjson.JSONEncodeError:  # orjson reads deeper nesting than it writes
            return invalid("too_deep", "`contact_data` or `metadata` is nested too deeply")
        return Message(source, line, to, sender, wire, ref_json, segments, encoding)

    def _sender_problem(self, sender: object) -> tuple[str, str] | None:
        if not isinstance(sender, str) or not sender:
            return "wrong_type", f"`{self._sender_field}` must be a non-empty string"
        if self._protocol.e164_sender and not is_e164(sender):
            return (
                f"invalid_{self._sender_field}",
                f"`{self._sender_field}` must be E.164, got {sender[:40]!r}",
            )
        if len(sender) > 128:
            return "invalid_sender", f"`{self._sender_field}` is longer than 128 characters"
        return None


def _exact_number(raw: bytes, encoded: bytes) -> bytes:
    """The line's `ref` number exactly as the caller wrote it.

    orjson reads integers beyond 64 bits as floats (18446744073709551616 would come back as
    1.8446744073709552e+19); the stdlib keeps them exact. Only float refs pay for the second parse.
    """
    try:
        exact = json.loads(raw).get("ref")
        return json.dumps(exact).encode()
    except (RecursionError, ValueError, AttributeError):
        return encoded


def _has_duplicate_key(raw: bytes) -> bool:
    """Whether the line's top-level object names a field twice (nested objects are payload)."""
    duplicated: list[bool] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        # Objects complete innermost first, so the last call is the top-level object's.
        duplicated.append(len({key for key, _ in items}) != len(items))
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (RecursionError, ValueError):
        return False  # orjson parsed it; the stdlib's recursion limit is lower
    return duplicated[-1]


def sender_problem(api_version: ApiVersion, sender: str) -> str | None:
    """Why `sender` can't be used as the default sender, for the CLI's error message."""
    problem = Validator(api_version=api_version, default_sender=None)._sender_problem(sender)
    return None if problem is None else problem[1]


__all__ = ["MAX_BODY_CHARS", "Validator", "is_e164", "normalise_phone"]
