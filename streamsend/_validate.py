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
from collections.abc import Iterator, Sequence
from itertools import chain, repeat
from operator import attrgetter

import orjson

from streamsend._columns import Columns, new_message
from streamsend._models import Encoding, Message, Outcome, Status
from streamsend._protocol import protocol_for
from streamsend._segments import ASCII_SEGMENT_SPECIAL, count_segments, count_segments_ascii
from streamsend._types import ApiVersion

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

_LINE = attrgetter("line")

_PHONE_FORMATTING = str.maketrans("", "", " -.()\t")

# The columnar proof (see `Validator._prove_run`).
_PRINTABLE = bytes(range(0x20, 0x7F))
_DIGITS_AND_PLUS = b"+0123456789\x00"
#: Quotes on a plain line: 12 with a string `ref`, 8 without.
_PLAIN_QUOTES = (12, 8)
_EXTENSION_CHARACTERS = b"[]^{|}~"  # ASCII's GSM-7 extension characters, without the backslash
_ORDINARY = bytes(c for c in range(0x20, 0x7F) if c not in b"\\`" + _EXTENSION_CHARACTERS)
_EXTENSION_OR_NUL = b"\x00" + _EXTENSION_CHARACTERS
#: Fewer lines than this in a run take the per-line path: the proof's fixed cost isn't worth it.
MIN_COLUMNAR_RUN = 8


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
        columnar: bool = True,
    ) -> None:
        self.api_version = api_version
        # False: validate_block takes the per-line path for every line (the tests compare both).
        self.columnar = columnar
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
                        new_message(
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

    def validate_block(
        self, source: str, first_line: int, lines: Sequence[bytes | None], others: list[Outcome]
    ) -> tuple[Columns | None, list[Message]]:
        """Validate consecutive lines as `validate_lines` does, without a Message per line.

        Returns the messages as `Columns` (and an empty list), or, when some line names a sender
        of its own, as a list in input order (and None); `invalid` outcomes go to `others`. The
        messages, and every field of them, are exactly those `validate_lines` would give.

        Runs of lines of the plain shape (see `_PLAIN_LINE`) are proved plain together with a
        handful of C-level passes over the joined run (see `_prove_run`) and come out as
        columns; any other line (escapes, non-ASCII, other fields, a sender of its own, a blank
        line) takes the per-line path, and its message joins the columns in input order.
        """
        if not (self._fast and self.columnar):
            # No default sender (every line names its own), or the columnar path is off: the
            # per-line path, every message in the list.
            messages: list[Message] = []
            self.validate_lines(source, first_line, lines, messages, others)
            return None, messages
        n = len(lines)
        refuted = None  # the run already refused below, not to be proved twice
        if n >= MIN_COLUMNAR_RUN and all(lines):  # no blank line, none too long
            # The usual block: every line plain, proved in one go.
            whole = self._prove_run(source, first_line, n, b"\x00".join(lines))  # type: ignore[arg-type]
            if whole is not None:
                return whole, []
            refuted = (0, n)
        parts: list[Columns] = []
        elsewhere: list[Message] = []  # messages naming another sender
        done = 0
        for lo, hi in _candidate_runs(lines):
            if lo > done:
                self._take_per_line(
                    source, first_line + done, lines[done:lo], others, parts, elsewhere
                )
            run = lines[lo:hi]
            proved = (
                None
                if (lo, hi) == refuted
                else self._prove_run(source, first_line + lo, hi - lo, b"\x00".join(run))  # type: ignore[arg-type]
            )
            if proved is None:
                self._take_per_line(source, first_line + lo, run, others, parts, elsewhere)
            else:
                parts.append(proved)
            done = hi
        if done < len(lines):
            self._take_per_line(source, first_line + done, lines[done:], others, parts, elsewhere)
        parts = [part for part in parts if part.lines]
        if elsewhere:
            # Lines naming other senders: the whole block goes on as Messages in input order,
            # as the per-line path has it (batches close, and dedupe meets copies, in that order).
            return None, sorted(chain(*parts, elsewhere), key=_LINE)
        return (Columns.concat(parts) if parts else None), []

    def _split_senders(
        self, source: str, messages: list[Message]
    ) -> tuple[Columns | None, list[Message]]:
        sender = self._default_sender_str
        mine = [m for m in messages if m.sender == sender]
        theirs = [m for m in messages if m.sender != sender] if len(mine) < len(messages) else []
        return (Columns.of_messages(source, sender, mine) if mine else None), theirs

    def _take_per_line(  # noqa: PLR0917 - a private helper of validate_block
        self,
        source: str,
        first_line: int,
        lines: Sequence[bytes | None],
        others: list[Outcome],
        parts: list[Columns],
        elsewhere: list[Message],
    ) -> None:
        messages: list[Message] = []
        self.validate_lines(source, first_line, lines, messages, others)
        mine, theirs = self._split_senders(source, messages)
        if mine is not None:
            parts.append(mine)
        elsewhere.extend(theirs)

    def _prove_run(self, source: str, first_line: int, n: int, joined: bytes) -> Columns | None:
        """The messages of `n` lines as Columns when every one of them has the plain shape;
        None when any doesn't. `joined` is the lines joined with NUL.

        Each step is a C-level pass over the whole run, not a step per line. The proof: no
        byte outside printable ASCII and no backslash, so no escapes and every quote is
        structural; cut at the quotes, the run is 12 pieces a line (with a string `ref`) or 8
        (without), and the pieces between the quotes are, position by position, the shape's
        keys, colons, commas and line boundaries (`}`, NUL, `{`: a boundary at every 12th
        or 8th piece proves each line has exactly that many quotes); then the recipients'
        digits and the lengths.
        """
        # Printable ASCII but for the backslash, the backtick and the GSM-7 extension
        # characters is deleted: a plain run leaves one `{` and one `}` a line, and the NULs.
        rest = joined.translate(None, _ORDINARY)
        plain_bodies = rest == b"{}\x00" * (n - 1) + b"{}"
        if not plain_bodies and rest.translate(None, _EXTENSION_OR_NUL):
            return None  # a control character, a backslash, a backtick or non-ASCII
        pieces = joined.split(b'"')
        per_line = (len(pieces) - 1) // n
        if per_line not in _PLAIN_QUOTES or len(pieces) != per_line * n + 1:
            return None
        keys = pieces[1::per_line]
        colons = pieces[2::per_line] + pieces[6::per_line]
        commas = pieces[4::per_line]
        if per_line == 12:
            colons += pieces[10::12]
            commas += pieces[8::12]
        if (
            pieces[0] != b"{"
            or pieces[-1] != b"}"
            or pieces[per_line:-1:per_line].count(b"}\x00{") != n - 1
            or keys.count(b"to_msisdn") + keys.count(b"to") != n
            or pieces[5::per_line].count(b"body") != n
            or (per_line == 12 and pieces[9::12].count(b"ref") != n)
            # The one optional space after a key's colon and after a value's comma.
            or colons.count(b":") + colons.count(b": ") != len(colons)
            or commas.count(b",") + commas.count(b", ") != len(commas)
        ):
            return None
        tos = pieces[3::per_line]
        bodies = pieces[7::per_line]
        # Recipients: `+`, then 8 to 15 digits, the first not 0.
        recipients = b"\x00".join(tos)
        to_sizes = list(map(len, tos))
        if (
            recipients.translate(None, _DIGITS_AND_PLUS)
            or recipients.count(b"+") != n
            or (b"\x00" + recipients).count(b"\x00+") != n
            or b"+0" in recipients
            or min(to_sizes) < 9
            or max(to_sizes) > 16
        ):
            return None
        sizes = list(map(len, bodies))
        if min(sizes) < 1 or max(sizes) > MAX_BODY_CHARS:
            return None
        if per_line == 12:
            # The refs' JSON, quotes and all, in one `%` over a repeated template.
            refs = ((b'"%b"\x00' * n) % tuple(pieces[11::12])).split(b"\x00")
            refs.pop()
        else:
            refs = [b""] * n
        if plain_bodies:
            if max(sizes) <= 160:
                segments = [1] * n
            else:
                segments = [1 if size <= 160 else -(-size // 153) for size in sizes]
        else:
            counted = [count_segments_ascii(body) for body in bodies]
            if None in counted:
                return None  # a backtick or a control character: not GSM-7, the full path
            segments = [c[0] for c in counted]  # type: ignore[index]
        # Every wire in one `%` over the repeated template, cut at the NULs: a third of the
        # cost of one `%` call per message.
        wires = ((self._wire_template + b"\x00") * n % tuple(_interleave(tos, bodies))).split(
            b"\x00"
        )
        wires.pop()
        return Columns(
            source,
            self._default_sender_str,
            list(range(first_line, first_line + n)),
            tos,
            wires,
            refs,
            segments,
            [Encoding.GSM7] * n,
        )

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


def _interleave(first: list[bytes], second: list[bytes]) -> Iterator[bytes]:
    return chain.from_iterable(zip(first, second, strict=True))


def _candidate_runs(lines: Sequence[bytes | None]) -> list[tuple[int, int]]:
    """Runs [lo, hi) of lines that may have the plain shape (the block that failed the proof as
    a whole, cut where it can't hold).

    A candidate is non-empty printable ASCII without a backslash, with 12 or 8 quotes, and a
    run holds lines of one quote count. Each test is one C-level pass over the whole block;
    only a block that fails one looks at its lines one by one.
    """
    n = len(lines)
    bad: set[int] = set()
    if not all(lines):  # a blank line, or one too long
        bad.update(i for i, raw in enumerate(lines) if not raw)
        safe: list[bytes] = [raw or b"" for raw in lines]
    else:
        safe = lines  # type: ignore[assignment]
    joined = b"\n".join(safe)
    if b"\\" in joined:
        bad.update(i for i, raw in enumerate(safe) if b"\\" in raw)
    if len(joined.translate(None, _PRINTABLE)) != n - 1:  # only the joining newlines may remain
        bad.update(i for i, raw in enumerate(safe) if raw.translate(None, _PRINTABLE))
    counts = list(map(bytes.count, safe, repeat(b'"')))
    runs: list[tuple[int, int]] = []
    lo = 0
    while lo < n:
        quotes = counts[lo]
        if lo in bad or quotes not in _PLAIN_QUOTES:
            lo += 1
            continue
        hi = lo + 1
        while hi < n and counts[hi] == quotes and hi not in bad:
            hi += 1
        if hi - lo >= MIN_COLUMNAR_RUN:
            runs.append((lo, hi))
        lo = hi
    return runs


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
