"""Per-message validation of bulk requests, as the Trackly service does it.

Each `check_v1_messages` / `check_v2_messages` call splits a request's `messages` array into
the accepted messages (normalised, ready to queue) and the in-band `errors` entries, in the
service's wording. Valid messages of a request are accepted whatever happens to the others.

Speed is the point of this module's shape: the emulator must stay several times faster than
the client it measures. Almost every request a client sends is entirely valid, so each check
first tries a whole-request fast path that touches every message only from C code (list
comprehensions, one `str.join`, one regex over the joined numbers, `map(len, ...)`); only when
that fails does it walk the messages one by one in Python to say which ones are wrong and why.
Both paths implement the same rules; the slow path is the reference.

The phone rule (the client's validator follows the same rule and must not be stricter):
strip the formatting characters space, `-`, `.`, `(` and `)`; then `+` and 8-15 digits, the
first not 0, is valid as is; 11 digits starting with `1` (a North American number without the
plus) is valid and gets a `+`; anything else is invalid. v2's `to` gets no normalising at all.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, NamedTuple

from streamsend.emulator._config import E164

#: The body limit: 1,600 characters, counted (assumed) in Unicode code points, which is `len`.
MAX_BODY_CHARS = 1600
#: The message-count limit of both bulk endpoints.
MAX_MESSAGES = 1000
BODY_TOO_LONG = f"Message body exceeds {MAX_BODY_CHARS} characters"

_E164_LINES = re.compile(r"(?:\+[1-9][0-9]{7,14}\n)*")
_NANP_WITHOUT_PLUS = re.compile(r"1[0-9]{10}")
_FORMATTING = str.maketrans("", "", " -.()")
_ONLY_STR = frozenset({str})

JsonObject = dict[str, object]
#: A decoded JSON array: orjson gives `Any`, and the checks below are what narrow it.
JsonArray = list[Any]


class Accepted(NamedTuple):
    """The messages of one request that passed validation, in request order.

    `lists` is the sending list of each message (v2; `None` for v1, where the request names one
    list for all), `sources` the message objects themselves (v2, for the ledger's
    `contact_data`/`metadata`; `None` when not needed).
    """

    tos: list[str]
    bodies: list[str]
    lists: list[str | None] | None
    sources: list[JsonObject] | None
    errors: list[JsonObject]
    rejected_by_list: Counter[str | None]  # rejected messages whose sending list exists (v2)


def _all_e164(numbers: JsonArray) -> bool:
    """True when every item is a strict E.164 string, checked in C over the joined numbers."""
    try:
        joined = "\n".join(numbers)
    except TypeError:  # not all of them are strings
        return False
    joined += "\n"
    # A number with a newline inside would split into two valid-looking lines: the count catches it.
    return joined.count("\n") == len(numbers) and _E164_LINES.fullmatch(joined) is not None


def _all_bodies_ok(bodies: JsonArray) -> bool:
    """True when every body is a non-empty string of at most 1,600 code points."""
    if set(map(type, bodies)) != _ONLY_STR:
        return False
    return min(map(len, bodies)) > 0 and max(map(len, bodies)) <= MAX_BODY_CHARS


def normalise_v1_phone(value: object) -> str | None:
    """Return the number as the service queues it (E.164), or None when it is invalid."""
    if type(value) is not str:
        return None
    if E164.fullmatch(value):
        return value
    stripped = value.translate(_FORMATTING)
    if E164.fullmatch(stripped):
        return stripped
    if _NANP_WITHOUT_PLUS.fullmatch(stripped):
        return "+" + stripped
    return None


def v1_message_error(message: object) -> tuple[str | None, object]:
    """Check one v1 message: (error text or None, the phone as given or normalised when valid)."""
    if type(message) is not dict:
        return "Invalid message", None
    phone = message.get("to_msisdn")
    if phone is None:
        phone = message.get("to")  # the legacy name
    if phone is None or phone == "":
        return "Missing phone number", phone
    to = normalise_v1_phone(phone)
    if to is None:
        return "Invalid phone number format", phone
    body = message.get("body")
    if type(body) is not str or not body:
        return "Missing message body", phone
    if len(body) > MAX_BODY_CHARS:
        return BODY_TOO_LONG, phone
    return None, to


def check_v1_messages(messages: JsonArray) -> Accepted:
    """Validate a v1 request's messages (all from the one list the request names)."""
    try:
        tos = [m["to_msisdn"] for m in messages]
        bodies = [m["body"] for m in messages]
    except (KeyError, TypeError):
        pass  # a message that isn't an object, or lacks a field: the slow path says which
    else:
        if _all_e164(tos) and _all_bodies_ok(bodies):
            return Accepted(tos, bodies, None, None, [], Counter())
    return check_v1_one_by_one(messages)


def check_v1_one_by_one(messages: JsonArray) -> Accepted:
    """The reference path of `check_v1_messages`: each message on its own, saying what's wrong."""
    good_tos: list[str] = []
    good_bodies: list[str] = []
    errors: list[JsonObject] = []
    for index, message in enumerate(messages):
        error, phone = v1_message_error(message)
        if error is None:
            good_tos.append(phone)  # type: ignore[arg-type]  # the normalised str when valid
            good_bodies.append(message["body"])
        else:
            errors.append({"index": index, "to_msisdn": phone, "error": error})
    return Accepted(good_tos, good_bodies, None, None, errors, Counter())


def v2_message_error(message: object, lists: frozenset[str]) -> tuple[str, str] | None:
    """Check one v2 message: None when valid, else (code, human text), in the service's order."""
    if type(message) is not dict:
        return "invalid_message", "Message must be an object"
    to = message.get("to")
    if to is None or to == "":
        return "missing_to", "Missing recipient phone number (to)"
    list_number = message.get("list_number")
    if list_number is None or list_number == "":
        return "missing_list_number", "Missing list_number"
    body = message.get("body")
    if type(body) is not str or not body:
        return "missing_body", "Missing message body"
    if type(to) is not str or not E164.fullmatch(to):
        return "invalid_phone", "Invalid phone number format (must be E.164)"
    if type(list_number) is not str or not E164.fullmatch(list_number):
        return "invalid_list_number", "Invalid list_number format (must be E.164)"
    if list_number not in lists:
        return "list_not_found", "List number not found"
    if len(body) > MAX_BODY_CHARS:
        return "body_too_long", BODY_TOO_LONG
    return None


def check_v2_messages(messages: JsonArray, lists: frozenset[str]) -> Accepted:
    """Validate a v2 request's messages; each names its own sending list (`list_number`)."""
    try:
        tos = [m["to"] for m in messages]
        list_numbers = [m["list_number"] for m in messages]
        bodies = [m["body"] for m in messages]
        known = lists.issuperset(list_numbers)  # TypeError for an unhashable list_number
    except (KeyError, TypeError):
        pass
    else:
        if known and _all_e164(tos) and _all_bodies_ok(bodies):
            return Accepted(tos, bodies, list_numbers, messages, [], Counter())
    return check_v2_one_by_one(messages, lists)


def check_v2_one_by_one(messages: JsonArray, lists: frozenset[str]) -> Accepted:
    """The reference path of `check_v2_messages`: each message on its own, saying what's wrong."""
    good_tos: list[str] = []
    good_bodies: list[str] = []
    good_lists: list[str | None] = []
    sources: list[JsonObject] = []
    errors: list[JsonObject] = []
    rejected_by_list: Counter[str | None] = Counter()
    for index, message in enumerate(messages):
        problem = v2_message_error(message, lists)
        if problem is None:
            good_tos.append(message["to"])
            good_lists.append(message["list_number"])
            good_bodies.append(message["body"])
            sources.append(message)
            continue
        code, text = problem
        to = message.get("to") if type(message) is dict else None
        errors.append({"index": index, "to": to, "code": code, "error": text})
        list_number = message.get("list_number") if type(message) is dict else None
        if type(list_number) is str and list_number in lists:
            rejected_by_list[list_number] += 1
    return Accepted(good_tos, good_bodies, good_lists, sources, errors, rejected_by_list)


def accept_unvalidated(messages: JsonArray, *, v2: bool) -> Accepted:
    """With validation off, every message is accepted as given (fields copied for the ledger)."""
    tos: JsonArray = []
    bodies: JsonArray = []
    list_numbers: JsonArray = []
    for message in messages:
        fields = message if type(message) is dict else {}
        tos.append(fields.get("to") if v2 else fields.get("to_msisdn", fields.get("to")))
        bodies.append(fields.get("body"))
        list_number = fields.get("list_number")
        # Only strings can name a list (a non-string one is recorded as null).
        list_numbers.append(list_number if isinstance(list_number, str) else None)
    sources = [m if type(m) is dict else {} for m in messages] if v2 else None
    # The values go in as given, whatever their type: that is what turning validation off means.
    return Accepted(tos, bodies, list_numbers if v2 else None, sources, [], Counter())
