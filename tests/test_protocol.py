"""The wire format (`streamsend._protocol`): what each answer of the service proves.

`WireProtocol.classify` is the one place an HTTP answer becomes a decision, so every status the
service uses (listed in the README and in `_protocol`) is checked here against the exception class
that carries the decision: `Accepted` (read the per-message errors), `RateLimited` and `NotSent`
(retry), `Refused` (don't), `FatalServiceError` (stop the run) and `MaybeSent` (unknown, never
resent silently).
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsend._exceptions import (
    FatalServiceError,
    MaybeSent,
    NotSent,
    RateLimited,
    Refused,
    SendError,
)
from streamsend._protocol import (
    AMBIGUOUS_STATUSES,
    ANSWERS,
    RETRYABLE_STATUSES,
    V1,
    V2,
    Accepted,
    answers_table,
    retry_after_seconds,
)

# Both versions classify answers alike; v1's answers are the ones checked here, and
# test_v2_classifies_as_v1_does checks v2 against them.
classify_response = V1.classify


def v1_error_code(text: str) -> str:
    return V1.error_code({}, text)


REQUEST = 17


def _error_body(code: str | None, text: str = "something went wrong") -> bytes:
    body: dict[str, str] = {"error": text}
    if code is not None:
        body["code"] = code
    return orjson.dumps(body)


def _raised(status: int, body: bytes, retry_after: str | None = None) -> SendError:
    with pytest.raises(SendError) as caught:
        classify_response(status, body, retry_after, request=REQUEST)
    return caught.value


# -- 2xx ---------------------------------------------------------------------------------------


def test_201_without_errors_queues_everything() -> None:
    """A readable 201 with no `errors` is Accepted with no rejected index."""
    body = orjson.dumps({"queued_count": 3, "error_count": 0, "errors": [], "deprecated": True})
    assert classify_response(201, body, None, request=REQUEST) == Accepted({}, 3)


def test_200_is_accepted_like_201() -> None:
    """Any readable 2xx proves acceptance, not only the documented 201."""
    assert classify_response(200, b'{"queued_count": 1}', None, request=REQUEST) == Accepted({}, 1)


def test_201_v1_errors_get_codes_from_their_text() -> None:
    """v1 reports per-message problems as text only: each gets a machine code from that text."""
    body = orjson.dumps(
        {
            "queued_count": 1,
            "error_count": 4,
            "errors": [
                {"index": 1, "to_msisdn": "555", "error": "Invalid phone number format"},
                {"index": 2, "error": "Missing phone number"},
                {"index": 3, "error": "Missing message body"},
                {"index": 4, "error": "Message body exceeds 1600 characters"},
            ],
        }
    )
    accepted = classify_response(201, body, None, request=REQUEST)
    assert accepted.queued_count == 1
    assert accepted.errors == {
        1: ("invalid_phone", "Invalid phone number format"),
        2: ("missing_to", "Missing phone number"),
        3: ("missing_body", "Missing message body"),
        4: ("body_too_long", "Message body exceeds 1600 characters"),
    }


def test_201_v2_errors_keep_the_service_code() -> None:
    """v2 errors carry a `code`: it is kept as is, with the error text beside it."""
    body = orjson.dumps(
        {
            "success": True,
            "queued_count": 0,
            "error_count": 1,
            "errors": [{"index": 0, "to": "+1", "code": "invalid_phone", "error": "Bad number"}],
        }
    )
    accepted = classify_response(201, body, None, request=REQUEST)
    assert accepted.errors == {0: ("invalid_phone", "Bad number")}


def test_201_error_without_text_or_known_phrase_is_rejected() -> None:
    """An error entry with no text and no code still rejects its index, with a generic code."""
    accepted = classify_response(201, b'{"errors": [{"index": 0}]}', None, request=REQUEST)
    assert accepted.errors == {0: ("rejected", "rejected")}
    assert accepted.queued_count is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"queued_count": 2, "error_c', id="cut-off"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(b'"queued"', id="string"),
        pytest.param(b'{"errors": 5}', id="errors-not-a-list"),
        pytest.param(b'{"errors": [{"error": "no index"}]}', id="error-without-index"),
        pytest.param(b'{"errors": [{"index": "first"}]}', id="index-not-a-number"),
        pytest.param(b'{"errors": ["bad"]}', id="error-not-an-object"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_unreadable_2xx_is_maybe_sent(body: bytes) -> None:
    """A 2xx whose body can't be read means the service took the request: ambiguous, not retried."""
    error = _raised(201, body)
    assert type(error) is MaybeSent
    assert (error.code, error.status, error.request) == ("unreadable_response", 201, REQUEST)


# -- 429 ---------------------------------------------------------------------------------------


def test_429_with_retry_after_carries_the_pause() -> None:
    """429 is RateLimited (a NotSent: retried) and carries Retry-After in seconds."""
    error = _raised(429, _error_body("rate_limited", "Too many requests"), "3")
    assert isinstance(error, RateLimited)
    assert isinstance(error, NotSent)
    assert error.retry_after == 3.0
    assert (error.code, error.status, error.request) == ("rate_limited", 429, REQUEST)
    assert str(error) == "Too many requests"


def test_429_without_retry_after_leaves_the_pause_to_backoff() -> None:
    """429 with no Retry-After (and no body code) is RateLimited with retry_after None."""
    error = _raised(429, b"")
    assert isinstance(error, RateLimited)
    assert error.retry_after is None
    assert error.code == "rate_limited"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        pytest.param("0", 0.0, id="zero"),
        pytest.param("120", 120.0, id="integer"),
        pytest.param(" 7 ", 7.0, id="padded"),
        pytest.param("-5", 0.0, id="negative-means-now"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", None, id="http-date"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param("inf", None, id="infinity"),
        pytest.param("nan", None, id="not-a-number"),
        pytest.param("1e400", None, id="overflows-to-infinity"),
    ],
)
def test_retry_after_header_values(header: str, seconds: float | None) -> None:
    """Retry-After is read as seconds; anything that isn't a finite number falls back to backoff.

    An infinite pause (a header of `inf` or `1e400`) would stop a sending number for good.
    """
    assert retry_after_seconds(header) == seconds


def test_retry_after_absent() -> None:
    """No header, no pause of its own."""
    assert retry_after_seconds(None) is None


@given(st.text(max_size=30))
def test_retry_after_is_none_or_a_finite_non_negative_number(header: str) -> None:
    """Whatever the header holds, the pause is None or a usable number of seconds."""
    seconds = retry_after_seconds(header)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@given(st.integers(min_value=0, max_value=10**6))
def test_retry_after_integer_seconds_are_taken_as_given(value: int) -> None:
    """The service's own form, integer seconds, is honoured exactly."""
    assert retry_after_seconds(str(value)) == value


# -- 5xx ---------------------------------------------------------------------------------------


def test_503_is_not_sent_and_pauses_like_a_429() -> None:
    """503 says "not processed, come back later": RateLimited (a NotSent: retried after the
    sending number's pause), with its Retry-After when given and without one otherwise."""
    error = _raised(503, _error_body("service_unavailable", "Try later"), "7")
    assert type(error) is RateLimited
    assert isinstance(error, NotSent)
    assert (error.code, error.status, error.retry_after) == ("service_unavailable", 503, 7.0)
    bare = _raised(503, b"<html>Service Unavailable</html>")
    assert isinstance(bare, RateLimited)
    assert (bare.code, bare.retry_after) == ("service_unavailable", None)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_500_502_504_may_have_been_accepted(status: int) -> None:
    """A 502/504 comes from a gateway, often after the service behind it accepted the request,
    and a 500 can come after part of a batch was queued: MaybeSent (`unknown`, not resent)."""
    error = _raised(status, _error_body("internal_error", "oops"), "3")
    assert type(error) is MaybeSent
    assert (error.code, error.status, error.request) == ("internal_error", status, REQUEST)
    assert status in AMBIGUOUS_STATUSES
    assert status not in RETRYABLE_STATUSES


def test_5xx_without_a_json_body_gets_an_http_code() -> None:
    """A proxy's HTML 502 page still classifies, with a code made from the status."""
    error = _raised(502, b"<html>Bad Gateway</html>")
    assert type(error) is MaybeSent
    assert error.code == "http_502"
    assert str(error) == "HTTP 502"


def test_the_answers_table_covers_each_status_class_once() -> None:
    """Every status the classification singles out appears in exactly one row of ANSWERS."""
    for status in (429, 503, 500, 502, 504, 400, 404, 413, 401, 403):
        rows = [a for a in ANSWERS if str(status) in a.answer.replace(",", " ").split()]
        assert len(rows) == 1, (status, rows)
    assert answers_table().count("\n") == len(ANSWERS) + 2


# -- 4xx ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        pytest.param(400, "missing_messages", id="400-missing-messages"),
        pytest.param(400, "too_many_messages", id="400-too-many"),
        pytest.param(404, "not_found", id="404-other"),
        pytest.param(413, "payload_too_large", id="413"),
        pytest.param(418, None, id="418-undocumented-4xx"),
    ],
)
def test_request_level_4xx_is_refused(status: int, code: str | None) -> None:
    """400, 404 (other than list_not_found) and 413 refuse the request: Refused, not retried,
    but not fatal for the run either."""
    error = _raised(status, _error_body(code))
    assert type(error) is Refused
    assert error.status == status
    assert error.code == (code or f"http_{status}")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        pytest.param(401, "invalid_api_key", id="401-invalid-key"),
        pytest.param(401, "missing_api_key", id="401-missing-key"),
        pytest.param(403, None, id="403-suspended-without-code"),
        pytest.param(403, "account_suspended", id="403-suspended"),
        pytest.param(404, "list_not_found", id="404-list-not-found"),
    ],
)
def test_fatal_answers_stop_the_run(status: int, code: str | None) -> None:
    """401, 403 and list_not_found would fail every later request too: FatalServiceError."""
    error = _raised(status, _error_body(code))
    assert type(error) is FatalServiceError
    assert isinstance(error, Refused)
    assert error.status == status
    assert error.code == (code or f"http_{status}")


def test_error_text_prefers_error_then_message() -> None:
    """The human text is the body's `error`, else its `message`, else the status."""
    assert str(_raised(400, b'{"message": "from message"}')) == "from message"
    assert str(_raised(400, b'{"error": "from error", "message": "x"}')) == "from error"
    assert str(_raised(400, b"[1, 2]")) == "HTTP 400"


# -- outside the contract ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [100, 301, 302, 304, 501, 505, 599])
def test_unexpected_status_is_maybe_sent(status: int) -> None:
    """A status outside the documented contract may mean the request was processed: MaybeSent."""
    error = _raised(status, b"")
    assert type(error) is MaybeSent
    assert (error.code, error.status) == (f"http_{status}", status)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["errors", "index", "error", "code", "queued_count", "message"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.one_of(st.binary(max_size=40), _JSON.map(orjson.dumps)),
    retry_after=st.none() | st.text(max_size=10),
)
def test_classify_never_fails_outside_its_contract(
    status: int, body: bytes, retry_after: str | None
) -> None:
    """Any status and any body end as Accepted or a SendError, never another exception."""
    outcome: Accepted | SendError
    try:
        outcome = classify_response(status, body, retry_after, request=REQUEST)
    except SendError as error:
        outcome = error
    if isinstance(outcome, Accepted):
        assert 200 <= status < 300
        assert all(isinstance(index, int) for index in outcome.errors)
    else:
        assert (outcome.request, outcome.status) == (REQUEST, status)


def test_v1_error_code_falls_back_to_rejected() -> None:
    """An error text the table doesn't know is `rejected`, the generic per-message refusal."""
    assert v1_error_code("Blocked by carrier") == "rejected"
    assert v1_error_code("INVALID PHONE number") == "invalid_phone"


@pytest.mark.parametrize("status", [200, 201, 400, 401, 403, 404, 413, 429, 500, 502, 503, 504])
def test_v2_classifies_as_v1_does(status: int) -> None:
    """The classification is shared: v2 reaches the same decision as v1 for every status."""
    body = _error_body("list_not_found" if status == 404 else None)
    if 200 <= status < 300:
        body = b'{"queued_count": 1, "errors": [{"index": 0, "code": "invalid_phone"}]}'
        assert V2.classify(status, body, None, request=REQUEST) == V1.classify(
            status, body, None, request=REQUEST
        )
        return
    with pytest.raises(SendError) as v1_error:
        V1.classify(status, body, "3", request=REQUEST)
    with pytest.raises(SendError) as v2_error:
        V2.classify(status, body, "3", request=REQUEST)
    assert type(v1_error.value) is type(v2_error.value)
    assert v1_error.value.code == v2_error.value.code


def test_envelopes_and_templates_spell_each_version() -> None:
    """v1 names the sending list once in the envelope; v2 carries list_number on each message,
    and both plain templates make the same JSON the full path makes."""
    assert V1.request_body("pn_a", [b'{"x":1}']) == (
        b'{"from_phone_number_id":"pn_a","messages":[{"x":1}]}'
    )
    assert V2.request_body("+18005551000", [b'{"x":1}']) == b'{"messages":[{"x":1}]}'
    for protocol, sender in ((V1, "pn_a"), (V2, "+18005551000")):
        plain = protocol.plain_message_template(sender) % (b"+14155550000", b"hi")
        full = protocol.message("+14155550000", sender, "hi", {})
        assert orjson.loads(plain) == orjson.loads(full)
        assert plain == full


def test_the_readme_shows_the_answers_table() -> None:
    """The README's table of answers is `ANSWERS`, row for row: the documentation of what each
    answer proves can't drift from the code that decides it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- answers: generated from streamsend._protocol.answers_table() -->")
    end = readme.index("<!-- /answers -->")
    shown = readme[start:end].split("\n", 1)[1]
    assert shown == answers_table()
