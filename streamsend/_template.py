"""Message templates: `--template 'Hi {first_name}, your code is {code}'`, one body per record.

Promises:
- `{name}` is replaced by the record's field `name` (surrounding spaces in the braces are
  ignored, so a CSV column "First Name" is `{First Name}`); `{{` and `}}` are literal braces.
- A value is inserted as it is: a `{x}` inside a value stays `{x}` (rendering is one pass over
  the template, never over its output).
- A field that is missing, null, empty, or not text/number makes the record `invalid` with code
  `missing_field` naming the field: a message reading "Hi , your code is" is worse than none.
- A malformed template (an unmatched brace, `{}`) is refused when it is read, naming where.

For NDJSON, a line's fields are its top-level values, then (v2) those in `contact_data` and
`contact_data.custom_fields`; the rendered body replaces the line's `body`. CSV records are
rendered by `_csv_source` from their columns.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from streamsend._types import LineBlock

MISSING_FIELD = "missing_field"


class Template:
    """A parsed template; `render(fields)` is the body, or raises MissingField."""

    def __init__(self, text: str) -> None:
        self.text = text
        # Alternating literal text and field names: parts[0] literal, parts[1] name, ...
        self._parts: list[str] = []
        literal: list[str] = []
        i = 0
        n = len(text)
        while i < n:
            ch = text[i]
            if ch == "{":
                if text.startswith("{{", i):
                    literal.append("{")
                    i += 2
                    continue
                end = text.find("}", i + 1)
                opened = text.find("{", i + 1)
                if end < 0 or (0 <= opened < end):
                    raise ValueError(
                        f"unmatched '{{' at character {i + 1} (write {{{{ for a literal brace)"
                    )
                name = text[i + 1 : end].strip()
                if not name:
                    raise ValueError(f"empty field name '{{}}' at character {i + 1}")
                self._parts.append("".join(literal))
                self._parts.append(name)
                literal = []
                i = end + 1
            elif ch == "}":
                if not text.startswith("}}", i):
                    raise ValueError(
                        f"unmatched '}}' at character {i + 1} (write }}}} for a literal brace)"
                    )
                literal.append("}")
                i += 2
            else:
                nxt = min((p for p in (text.find("{", i), text.find("}", i)) if p >= 0), default=n)
                literal.append(text[i:nxt])
                i = nxt
        self._parts.append("".join(literal))
        self.fields: tuple[str, ...] = tuple(self._parts[1::2])

    def render(self, fields: Mapping[str, object]) -> str:
        parts = self._parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            name = parts[i]
            value = fields.get(name)
            if isinstance(value, str):
                if not value:
                    raise MissingField(name, "is empty")
                out.append(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out.append(str(value))
            elif value is None:
                raise MissingField(name, "is missing" if name not in fields else "is null")
            else:
                raise MissingField(name, "is not text or a number")
            out.append(parts[i + 1])
        return "".join(out)


class MissingField(Exception):
    """A record lacks a field the template names."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"the template's field `{name}` {why} in this record")
        self.name = name


def load_template(text: str | None, path: str | None) -> Template | None:
    """The template from --template or --template-file (ValueError naming the problem)."""
    if text is not None and path is not None:
        raise ValueError("give --template or --template-file, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read().removesuffix("\n")
        except OSError as exc:
            raise ValueError(f"can't read --template-file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"--template-file {path} is not UTF-8 text") from None
    if text is None:
        return None
    if not text:
        raise ValueError("the template is empty")
    return Template(text)


def ndjson_fields(obj: dict[str, object]) -> dict[str, object]:
    """A line's template fields: its own values, then v2's contact data and custom fields."""
    fields: dict[str, object] = {}
    contact = obj.get("contact_data")
    if isinstance(contact, dict):
        custom = contact.get("custom_fields")
        if isinstance(custom, dict):
            fields.update(custom)
        fields.update(contact)
    fields.update(obj)
    return fields


def render_ndjson_block(block: LineBlock, template: Template) -> LineBlock:
    """Render each NDJSON line's body; a line missing a field becomes a `missing_field` error.

    A line that isn't a JSON object is left as it is: the validator says what is wrong with it.
    """
    lines = list(block.lines)
    errors = dict(block.errors) if block.errors else {}
    for i, raw in enumerate(lines):
        if not raw or raw.isspace():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        try:
            obj["body"] = template.render(ndjson_fields(obj))
        except MissingField as missing:
            errors[block.first_line + i] = (MISSING_FIELD, str(missing))
            lines[i] = b""
            continue
        lines[i] = orjson.dumps(obj)
    return LineBlock(
        block.source, block.first_line, lines, block.nbytes, errors or None, block.deadlines
    )


__all__ = ["MISSING_FIELD", "MissingField", "Template", "load_template", "render_ndjson_block"]
