"""docs/protocol.md documents the fields of every message; they must match SCHEMA, so the two cannot drift."""
import re
from pathlib import Path

import pytest

from dynafast.net.messages import SCHEMA, Field, Msg, fields_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
HEADING = re.compile(r"^#### ([A-Z_]+) \((\d+)\)$")
SAME = re.compile(r"^Same fields as ([A-Z_]+)\b")
TABLE_HEADER = ["field", "type", "required", "meaning"]


def documented() -> dict[str, tuple[int, list[Field] | str]]:
    """Message name -> (its number, its fields, or the name of the message whose fields it shares)."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### Fields of each message"):]
    section = section[:section.index("\n### ", 1)]  # up to the next h3
    messages: dict[str, tuple[int, list[Field] | str]] = {}
    name = None
    for line in section.splitlines():
        heading = HEADING.match(line)
        if heading:
            name = heading.group(1)
            assert name not in messages, f"{name} is documented twice"
            messages[name] = (int(heading.group(2)), [])
            continue
        if name is None:
            continue
        number, fields = messages[name]
        same = SAME.match(line)
        if same:
            assert fields == [], f"{name}: both a table and 'Same fields as'"
            messages[name] = (number, same.group(1))
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells == TABLE_HEADER or set("".join(cells)) <= set("-: "):
                continue
            assert len(cells) == 4, f"{name}: table row {line!r} needs {TABLE_HEADER}"
            field, type_, required, _ = cells
            assert required in ("yes", "no"), f"{name}.{field}: required is 'yes' or 'no', not {required!r}"
            fields.append(Field(field.strip("`"), type_, required == "yes"))
    return messages


DOCUMENTED = documented()


def resolve(name: str) -> list[Field]:
    seen = []
    fields = DOCUMENTED[name][1]
    while isinstance(fields, str):
        assert fields not in seen, f"'Same fields as' loop at {name}"
        seen.append(fields)
        fields = DOCUMENTED[fields][1]
    return fields


def test_every_message_is_documented_once_with_its_number():
    assert {name: number for name, (number, _) in DOCUMENTED.items()} == {m.name: int(m) for m in Msg}
    assert list(DOCUMENTED) == sorted(DOCUMENTED, key=lambda name: Msg[name]), "sections are in type order"


@pytest.mark.parametrize("msg", list(Msg), ids=lambda m: m.name)
def test_documented_fields_match_the_schema(msg):
    assert resolve(msg.name) == fields_of(SCHEMA[msg])


def test_the_message_type_table_lists_every_message():
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## Message types"):text.index("### Fields of each message")]
    listed = {name: int(number) for number, name in re.findall(r"\|\s*(\d+)\s*\|\s*([A-Z_]+)\s*", table)}
    assert listed == {m.name: int(m) for m in Msg}
