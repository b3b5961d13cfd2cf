"""Templates: rendering against a reference built from the template's parts, brace escapes,
values inserted literally, and the refusals (missing field, malformed template)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsend._template import MissingField, Template, load_template, render_ndjson_block
from streamsend._types import LineBlock

_names = st.sampled_from(["a", "first_name", "code", "First Name"])
_literal = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
_value = st.text(min_size=1, max_size=8)  # may hold braces: they must stay as they are


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.tuples(_literal, _names), max_size=5),
    tail=_literal,
    values=st.fixed_dictionaries(dict.fromkeys(["a", "first_name", "code", "First Name"], _value)),
)
def test_render_is_the_literals_and_the_values(
    parts: list[tuple[str, str]], tail: str, values: dict[str, str]
) -> None:
    """A template of escaped literals and fields renders as the literals with each field's
    value in place, values inserted as they are (a `{x}` in a value is not expanded)."""
    text = "".join(_escape(lit) + "{" + name + "}" for lit, name in parts) + _escape(tail)
    expected = "".join(lit + values[name] for lit, name in parts) + tail
    template = Template(text)
    assert template.render(values) == expected
    assert template.fields == tuple(name for _, name in parts)


def test_spaces_inside_braces_and_numbers() -> None:
    """`{ name }` names `name`; numbers are written as JSON numbers read back."""
    assert Template("{ n } x {m}").render({"n": 3, "m": 2.5}) == "3 x 2.5"


@pytest.mark.parametrize(
    ("fields", "why"),
    [({}, "is missing"), ({"code": ""}, "is empty"), ({"code": None}, "is null")],
)
def test_a_missing_or_empty_field_names_it(fields: dict[str, object], why: str) -> None:
    """A field the record lacks, has empty or null is MissingField naming the field."""
    with pytest.raises(MissingField, match=f"`code` {why}"):
        Template("your code is {code}").render(fields)


@pytest.mark.parametrize(
    ("text", "message"),
    [("Hi {name", "unmatched '{'"), ("Hi name}", "unmatched '}'"), ("{}", "empty field")],
)
def test_a_malformed_template_is_refused(text: str, message: str) -> None:
    """An unmatched brace or an empty `{}` is refused when the template is read."""
    with pytest.raises(ValueError, match=message):
        Template(text)


def test_template_file_and_conflicts(tmp_path: object) -> None:
    """--template-file reads the file (without its final newline); both flags is an error."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = tmp_path / "t.txt"
    path.write_text("Hi {n}\n", encoding="utf-8")
    template = load_template(None, str(path))
    assert template is not None
    assert template.render({"n": "Al"}) == "Hi Al"
    with pytest.raises(ValueError, match="not both"):
        load_template("x", str(path))


def test_ndjson_lines_render_from_their_fields() -> None:
    """An NDJSON line's body is rendered from its own fields and v2 custom fields; a missing
    field blanks the line and records `missing_field`; a non-JSON line is left for the
    validator."""
    lines: list[bytes | None] = [
        b'{"to":"+14155550001","name":"Ann"}',
        b'{"to":"+14155550002","contact_data":{"custom_fields":{"name":"Bo"}}}',
        b'{"to":"+14155550003"}',
        b"{not json",
    ]
    block = render_ndjson_block(LineBlock("in", 1, lines, 0), Template("Hi {name}"))
    assert orjson.loads(block.lines[0] or b"")["body"] == "Hi Ann"
    assert orjson.loads(block.lines[1] or b"")["body"] == "Hi Bo"
    assert block.lines[2] == b""
    assert block.errors is not None
    assert block.errors[3][0] == "missing_field"
    assert block.lines[3] == b"{not json"
