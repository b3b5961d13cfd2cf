"""The emulator's API over real HTTP: every documented error, header and validation rule."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from streamsend.emulator import RunningEmulator
from streamsend.testing import (
    API_KEY,
    V1_LIST,
    V2_LIST,
    EmulatorFactory,
    Reply,
    post,
    read_ledger,
)

GOOD = "+14155551234"


def v1_bulk(messages: Any, list_id: object = V1_LIST) -> dict[str, Any]:
    return {"from_phone_number_id": list_id, "messages": messages}


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply
    assert reply.headers["Content-Type"].startswith("application/json")
    answer = reply.json()
    assert answer["code"] == code
    assert isinstance(answer["error"], str)
    assert answer["error"]


def assert_v1_headers(reply: Reply) -> None:
    assert reply.headers["Deprecation"] == "true"
    assert reply.headers["X-API-Deprecated"] == "v1 is deprecated"


@pytest.fixture
async def emu(emulator: EmulatorFactory) -> RunningEmulator:
    return await emulator()


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages/bulk", "/v1/messages", "/v2/send/bulk"])
async def test_missing_api_key_is_401_missing_api_key(
    emu: RunningEmulator, session: aiohttp.ClientSession, path: str
) -> None:
    """A request without X-Api-Key is refused with 401 missing_api_key on every endpoint
    (v1 errors carry the deprecation headers too, v2 ones don't)."""
    reply = await post(session, emu.base_url + path, v1_bulk([]), key=None)
    assert_error(reply, 401, "missing_api_key")
    if path.startswith("/v1"):
        assert_v1_headers(reply)
    else:
        assert "Deprecation" not in reply.headers


async def test_wrong_api_key_is_401_invalid_api_key(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A key that isn't configured is refused with 401 invalid_api_key, and nothing is queued."""
    reply = await post(
        session,
        emu.base_url + "/v1/messages/bulk",
        v1_bulk([{"to_msisdn": GOOD, "body": "x"}]),
        key="trk_" + "0" * 32,
    )
    assert_error(reply, 401, "invalid_api_key")
    assert emu.stats()["messages_queued"] == 0


async def test_authorization_header_is_not_an_api_key(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """The key goes in X-Api-Key; a Bearer token in Authorization counts as no key at all."""
    reply = await post(
        session,
        emu.base_url + "/v2/send/bulk",
        {"messages": []},
        key=None,
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert_error(reply, 401, "missing_api_key")


async def test_any_configured_key_is_accepted(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """With several keys configured, each of them authenticates."""
    other = "trk_" + "Z" * 32
    emu = await emulator(api_keys=(API_KEY, other))
    for key in (API_KEY, other):
        reply = await post(
            session,
            emu.base_url + "/v1/messages/bulk",
            v1_bulk([{"to_msisdn": GOOD, "body": "x"}]),
            key=key,
        )
        assert reply.status == 201


async def test_auth_is_checked_before_the_body(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """An unauthenticated request with a broken body gets 401, not 400: auth comes first."""
    reply = await post(session, emu.base_url + "/v1/messages/bulk", data=b"{nope", key="bad")
    assert_error(reply, 401, "invalid_api_key")


# -- body-level errors ------------------------------------------------------------------------


async def test_invalid_json_is_400_invalid_json(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A body that isn't JSON is refused with 400 invalid_json (v1 keeps its headers)."""
    reply = await post(session, emu.base_url + "/v1/messages/bulk", data=b'{"messages": [')
    assert_error(reply, 400, "invalid_json")
    assert_v1_headers(reply)


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"17", b"null"])
async def test_json_that_is_not_an_object_is_400_invalid_json(
    emu: RunningEmulator, session: aiohttp.ClientSession, body: bytes
) -> None:
    """Valid JSON that isn't an object is refused with 400 invalid_json."""
    reply = await post(session, emu.base_url + "/v2/send/bulk", data=body)
    assert_error(reply, 400, "invalid_json")


def padded_v1_body(size: int) -> bytes:
    """A valid one-message v1 body of exactly `size` bytes (an ignored field pads it)."""
    head = b'{"from_phone_number_id":"%s","messages":[{"to_msisdn":"%s","body":"x"}],"pad":"' % (
        V1_LIST.encode(),
        GOOD.encode(),
    )
    return head + b"a" * (size - len(head) - 2) + b'"}'


async def test_body_of_exactly_5_000_000_bytes_is_accepted(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """The payload limit is 5,000,000 bytes inclusive: a body of exactly that size is served."""
    body = padded_v1_body(5_000_000)
    assert len(body) == 5_000_000
    reply = await post(session, emu.base_url + "/v1/messages/bulk", data=body)
    assert reply.status == 201
    assert emu.stats()["largest_request_bytes"] == 5_000_000


async def test_body_over_5_000_000_bytes_is_413_payload_too_large(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """One byte over the limit (announced by Content-Length) is refused with 413, nothing queued."""
    reply = await post(session, emu.base_url + "/v1/messages/bulk", data=padded_v1_body(5_000_001))
    assert_error(reply, 413, "payload_too_large")
    assert_v1_headers(reply)
    assert emu.stats()["messages_queued"] == 0


async def test_chunked_body_over_the_limit_is_413(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A chunked body (no Content-Length) is counted as it arrives and refused past the limit."""
    body = padded_v1_body(5_200_000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    headers = {"X-Api-Key": API_KEY, "Content-Type": "application/json"}
    async with session.post(
        emu.base_url + "/v2/send/bulk", data=chunks(), headers=headers
    ) as response:
        assert response.headers.get("Content-Length") != "5200000"
        reply = Reply(response.status, dict(response.headers), await response.read())
    assert_error(reply, 413, "payload_too_large")


# -- v1 bulk -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [{"messages": [{"to_msisdn": GOOD, "body": "x"}]}, v1_bulk([{"to_msisdn": GOOD}], list_id="")],
    ids=["absent", "empty"],
)
async def test_v1_missing_from_is_400(
    emu: RunningEmulator, session: aiohttp.ClientSession, payload: dict[str, Any]
) -> None:
    """No from_phone_number_id (absent or empty) is refused with 400 missing_from."""
    reply = await post(session, emu.base_url + "/v1/messages/bulk", payload)
    assert_error(reply, 400, "missing_from")
    assert_v1_headers(reply)


@pytest.mark.parametrize("messages", [None, [], "abc", {"to_msisdn": GOOD}], ids=repr)
async def test_v1_missing_messages_is_400(
    emu: RunningEmulator, session: aiohttp.ClientSession, messages: object
) -> None:
    """`messages` absent, empty or not an array is refused with 400 missing_messages."""
    payload = v1_bulk(messages) if messages is not None else {"from_phone_number_id": V1_LIST}
    reply = await post(session, emu.base_url + "/v1/messages/bulk", payload)
    assert_error(reply, 400, "missing_messages")


async def test_v1_more_than_1000_messages_is_400_too_many_messages(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """1,000 messages are accepted; 1,001 are refused with 400 (v1's status) too_many_messages."""
    message = {"to_msisdn": GOOD, "body": "x"}
    url = emu.base_url + "/v1/messages/bulk"
    assert (await post(session, url, v1_bulk([message] * 1000))).json()["queued_count"] == 1000
    reply = await post(session, url, v1_bulk([message] * 1001))
    assert_error(reply, 400, "too_many_messages")
    assert_v1_headers(reply)
    assert emu.stats()["messages_queued"] == 1000


async def test_v1_unknown_list_is_404_list_not_found(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A from_phone_number_id that isn't configured is refused with 404 list_not_found."""
    reply = await post(
        session,
        emu.base_url + "/v1/messages/bulk",
        v1_bulk([{"to_msisdn": GOOD, "body": "x"}], list_id="pn_doesnotexist"),
    )
    assert_error(reply, 404, "list_not_found")
    assert_v1_headers(reply)


async def test_v1_all_valid_is_201_with_deprecation(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A valid v1 bulk request is answered 201 with the documented body and both headers."""
    messages = [{"to_msisdn": f"+1415555{n:04d}", "body": f"Hello {n}"} for n in range(3)]
    reply = await post(session, emu.base_url + "/v1/messages/bulk", v1_bulk(messages))
    assert reply.status == 201
    assert_v1_headers(reply)
    assert reply.json() == {"queued_count": 3, "error_count": 0, "errors": [], "deprecated": True}


async def test_v1_per_message_errors_are_in_band_and_valid_ones_queued(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """Each per-message problem is reported with its index and text; the rest are queued."""
    messages: list[object] = [
        {"to_msisdn": GOOD, "body": "ok 0"},
        {"body": "no phone"},
        {"to_msisdn": "555", "body": "short"},
        {"to_msisdn": GOOD},
        {"to_msisdn": GOOD, "body": ""},
        {"to_msisdn": GOOD, "body": 42},
        {"to_msisdn": GOOD, "body": "x" * 1601},
        "not an object",
        {"to_msisdn": "+14155550007", "body": "ok 8"},
        {"to_msisdn": 14155551234, "body": "number, not string"},
        {"to_msisdn": "", "body": "empty phone"},
    ]
    reply = await post(session, emu.base_url + "/v1/messages/bulk", v1_bulk(messages))
    assert reply.status == 201
    answer = reply.json()
    assert answer["queued_count"] == 2
    assert answer["error_count"] == 9
    assert answer["deprecated"] is True
    assert answer["errors"] == [
        {"index": 1, "to_msisdn": None, "error": "Missing phone number"},
        {"index": 2, "to_msisdn": "555", "error": "Invalid phone number format"},
        {"index": 3, "to_msisdn": GOOD, "error": "Missing message body"},
        {"index": 4, "to_msisdn": GOOD, "error": "Missing message body"},
        {"index": 5, "to_msisdn": GOOD, "error": "Missing message body"},
        {"index": 6, "to_msisdn": GOOD, "error": "Message body exceeds 1600 characters"},
        {"index": 7, "to_msisdn": None, "error": "Invalid message"},
        {"index": 9, "to_msisdn": 14155551234, "error": "Invalid phone number format"},
        {"index": 10, "to_msisdn": "", "error": "Missing phone number"},
    ]
    assert [(r["to"], r["body"]) for r in read_ledger(emu.ledger_path)] == [
        (GOOD, "ok 0"),
        ("+14155550007", "ok 8"),
    ]
    stats = emu.stats()
    assert (stats["messages_queued"], stats["messages_rejected"]) == (2, 9)


@pytest.mark.parametrize(
    ("given", "queued_as"),
    [
        ("+14155551234", "+14155551234"),
        ("14155551234", "+14155551234"),
        ("1 (415) 555-1234", "+14155551234"),
        ("+44 20.7946.0958", "+442079460958"),
        ("+1234567", None),  # 7 digits: too short
        ("+1234567890123456", None),  # 16 digits: too long
        ("+0123456789", None),  # country code can't start with 0
        ("(415) 555-1234", None),  # no country code
        ("4155551234", None),
        ("24155551234", None),  # 11 digits not starting with 1, no plus
        ("+1 415 555 12a4", None),
        ("+١٤١٥٥٥٥١٢٣٤", None),  # non-ASCII digits
    ],
)
async def test_v1_phone_rule(
    emu: RunningEmulator, session: aiohttp.ClientSession, given: str, queued_as: str | None
) -> None:
    """v1 strips formatting, accepts E.164 or 11 digits starting with 1, and queues E.164."""
    message = {"to_msisdn": given, "body": "x"}
    answer = (await post(session, emu.base_url + "/v1/messages/bulk", v1_bulk([message]))).json()
    if queued_as is None:
        assert answer["errors"] == [
            {"index": 0, "to_msisdn": given, "error": "Invalid phone number format"}
        ]
    else:
        assert answer["queued_count"] == 1
        assert read_ledger(emu.ledger_path)[-1]["to"] == queued_as


async def test_v1_legacy_to_field_and_extra_fields(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """The legacy `to` name is accepted, and unknown fields such as `ref` are ignored."""
    messages = [
        {"to": GOOD, "body": "legacy", "ref": 7},
        {"to_msisdn": GOOD, "body": "x", "ref": "a"},
    ]
    answer = (await post(session, emu.base_url + "/v1/messages/bulk", v1_bulk(messages))).json()
    assert (answer["queued_count"], answer["errors"]) == (2, [])


async def test_v1_body_length_counts_code_points(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """1,600 characters are accepted even when each is several bytes (or two UTF-16 units)."""
    messages = [{"to_msisdn": GOOD, "body": "😀" * 1600}, {"to_msisdn": GOOD, "body": "é" * 1601}]
    answer = (await post(session, emu.base_url + "/v1/messages/bulk", v1_bulk(messages))).json()
    assert answer["queued_count"] == 1
    assert [e["index"] for e in answer["errors"]] == [1]


# -- v1 single send ----------------------------------------------------------------------------


async def test_v1_single_send(emu: RunningEmulator, session: aiohttp.ClientSession) -> None:
    """A single send is answered 201 with message id, segments and encoding, and is queued."""
    payload = {
        "from_phone_number_id": V1_LIST,
        "to_msisdn": "14155551234",
        "body": "Grüße 👋",
        "metadata": {"campaign": "spring"},
    }
    reply = await post(session, emu.base_url + "/v1/messages", payload)
    assert reply.status == 201
    assert_v1_headers(reply)
    answer = reply.json()
    assert answer["message_id"].startswith("msg_")
    assert answer["id"] == answer["message_id"]
    assert (answer["status"], answer["segments"], answer["gsm7"], answer["deprecated"]) == (
        "queued",
        1,
        False,
        True,
    )
    [record] = read_ledger(emu.ledger_path)
    assert record["to"] == "+14155551234"
    assert record["metadata"] == {"campaign": "spring"}


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"to_msisdn": GOOD, "body": "x"}, 400, "missing_from"),
        (
            {"from_phone_number_id": "pn_nope", "to_msisdn": GOOD, "body": "x"},
            404,
            "list_not_found",
        ),
        ({"from_phone_number_id": V1_LIST, "to_msisdn": "555", "body": "x"}, 400, "invalid_phone"),
        ({"from_phone_number_id": V1_LIST, "body": "x"}, 400, "missing_phone"),
        ({"from_phone_number_id": V1_LIST, "to_msisdn": GOOD}, 400, "missing_body"),
        (
            {"from_phone_number_id": V1_LIST, "to_msisdn": GOOD, "body": "x" * 1601},
            400,
            "body_too_long",
        ),
    ],
)
async def test_v1_single_send_errors(
    emu: RunningEmulator,
    session: aiohttp.ClientSession,
    payload: dict[str, Any],
    status: int,
    code: str,
) -> None:
    """A single send's problems are request-level errors (it has no `errors` array)."""
    reply = await post(session, emu.base_url + "/v1/messages", payload)
    assert_error(reply, status, code)
    assert_v1_headers(reply)
    assert read_ledger(emu.ledger_path) == []


async def test_v1_single_send_counts_gsm7_segments(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """The single-send answer's segments follow the GSM-7 rule (161 characters take two)."""
    payload = {"from_phone_number_id": V1_LIST, "to_msisdn": GOOD, "body": "a" * 161}
    answer = (await post(session, emu.base_url + "/v1/messages", payload)).json()
    assert (answer["segments"], answer["gsm7"]) == (2, True)


# -- v2 ---------------------------------------------------------------------------------------


def v2_message(**fields: object) -> dict[str, object]:
    return {"to": GOOD, "list_number": V2_LIST, "body": "hello", **fields}


async def test_v2_all_valid_is_201_without_deprecation(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """A valid v2 bulk request is answered 201 with success true and no deprecation headers."""
    reply = await post(session, emu.base_url + "/v2/send/bulk", {"messages": [v2_message()] * 2})
    assert reply.status == 201
    assert "Deprecation" not in reply.headers
    assert "X-API-Deprecated" not in reply.headers
    assert reply.json() == {"success": True, "queued_count": 2, "error_count": 0, "errors": []}


@pytest.mark.parametrize("payload", [{}, {"messages": []}, {"messages": None}], ids=repr)
async def test_v2_missing_messages_is_400(
    emu: RunningEmulator, session: aiohttp.ClientSession, payload: dict[str, Any]
) -> None:
    """v2 without messages is refused with 400 missing_messages."""
    reply = await post(session, emu.base_url + "/v2/send/bulk", payload)
    assert_error(reply, 400, "missing_messages")
    assert "Deprecation" not in reply.headers


async def test_v2_more_than_1000_messages_is_413_too_many_messages(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """v2 refuses 1,001 messages with 413 (not v1's 400) too_many_messages."""
    reply = await post(session, emu.base_url + "/v2/send/bulk", {"messages": [v2_message()] * 1001})
    assert_error(reply, 413, "too_many_messages")
    assert emu.stats()["largest_request_messages"] == 1001


async def test_v2_per_message_codes(emu: RunningEmulator, session: aiohttp.ClientSession) -> None:
    """Each v2 per-message problem gets its code; `to` is strict E.164; valid ones are queued."""
    messages: list[object] = [
        v2_message(),
        {"list_number": V2_LIST, "body": "x"},
        {"to": GOOD, "body": "x"},
        v2_message(body=""),
        v2_message(to="14155551234"),
        v2_message(to="+1 415 555 1234"),
        v2_message(list_number="18005551000"),
        v2_message(list_number="+18005559999"),
        v2_message(body="y" * 1601),
        7,
    ]
    reply = await post(session, emu.base_url + "/v2/send/bulk", {"messages": messages})
    assert reply.status == 201
    answer = reply.json()
    assert (answer["success"], answer["queued_count"], answer["error_count"]) == (True, 1, 9)
    assert [(e["index"], e["code"]) for e in answer["errors"]] == [
        (1, "missing_to"),
        (2, "missing_list_number"),
        (3, "missing_body"),
        (4, "invalid_phone"),
        (5, "invalid_phone"),
        (6, "invalid_list_number"),
        (7, "list_not_found"),
        (8, "body_too_long"),
        (9, "invalid_message"),
    ]
    assert answer["errors"][3]["to"] == "14155551234"
    assert answer["errors"][0]["to"] is None
    assert all(isinstance(e["error"], str) and e["error"] for e in answer["errors"])
    per_list = emu.stats()["per_list"]
    # Rejected messages count against their list when it exists (indexes 1, 3, 4, 5 and 8).
    assert per_list[V2_LIST] == {"queued": 1, "rejected": 5, "dropped_stale": 0, "requests": 1}
    assert emu.stats()["messages_rejected"] == 9


async def test_v2_contact_data_and_metadata_reach_the_ledger(
    emu: RunningEmulator, session: aiohttp.ClientSession
) -> None:
    """contact_data and metadata are accepted and recorded in the ledger when present."""
    contact = {"first_name": "Ana", "custom_fields": {"tier": "gold"}, "timezone": "UTC"}
    messages = [v2_message(contact_data=contact, metadata={"id": 1}), v2_message(body="plain")]
    reply = await post(session, emu.base_url + "/v2/send/bulk", {"messages": messages})
    assert reply.json()["queued_count"] == 2
    first, second = read_ledger(emu.ledger_path)
    assert (first["contact_data"], first["metadata"], first["api"]) == (contact, {"id": 1}, "v2")
    assert "contact_data" not in second
    assert "metadata" not in second


async def test_v2_single_send(emu: RunningEmulator, session: aiohttp.ClientSession) -> None:
    """POST /v2/send queues one message and answers success with a message id."""
    reply = await post(session, emu.base_url + "/v2/send", v2_message())
    assert reply.status == 201
    answer = reply.json()
    assert (answer["success"], answer["status"]) == (True, "queued")
    assert answer["message_id"]
    bad = await post(session, emu.base_url + "/v2/send", v2_message(to="555"))
    assert_error(bad, 400, "invalid_phone")


async def test_messages_to_several_v2_lists_are_counted_per_list(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """One v2 request may name several list numbers; each list counts its own messages."""
    other = "+18005552000"
    emu = await emulator(v2_lists=(V2_LIST, other))
    messages = [v2_message(), v2_message(list_number=other), v2_message(list_number=other)]
    assert (
        await post(session, emu.base_url + "/v2/send/bulk", {"messages": messages})
    ).status == 201
    per_list = emu.stats()["per_list"]
    assert (per_list[V2_LIST]["queued"], per_list[other]["queued"]) == (1, 2)
    assert [r["list"] for r in read_ledger(emu.ledger_path)] == [V2_LIST, other, other]


async def test_validation_off_accepts_everything(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """With validate=False every message is queued as given (request-level checks remain)."""
    emu = await emulator(validate=False)
    messages = [{"to_msisdn": "555", "body": ""}, {"body": "x"}]
    answer = (await post(session, emu.base_url + "/v1/messages/bulk", v1_bulk(messages))).json()
    assert (answer["queued_count"], answer["error_count"]) == (2, 0)
    assert [r["to"] for r in read_ledger(emu.ledger_path)] == ["555", None]
    missing = await post(session, emu.base_url + "/v1/messages/bulk", {"messages": messages})
    assert_error(missing, 400, "missing_from")
