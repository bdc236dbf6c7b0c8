"""Encoding values as JSON and decoding them back as the same types."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from django_pgqrs import PayloadError
from django_pgqrs.codec import digest, dump, loads

ROOT = Path(__file__).resolve().parent.parent


class Color(enum.Enum):
    RED = "red"
    BLUE = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Item:
    name: str
    price: decimal.Decimal
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Coordinates:
    lat: float
    lon: float


@dataclasses.dataclass
class Order:
    id: uuid.UUID
    items: list[Item]
    where: Coordinates
    placed: datetime.datetime
    color: Color
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def typed(value: Any) -> Any:
    """Describe ``value`` with the type of every part, so that equal descriptions mean equal types."""
    kind = type(value)
    if kind in (list, tuple):
        return kind, tuple(typed(item) for item in value)
    if kind in (set, frozenset):
        return kind, frozenset(typed(item) for item in value)
    if kind is dict:
        # Key order is checked where it is the point (PostgreSQL's jsonb does not keep it).
        return kind, frozenset((typed(key), typed(item)) for key, item in value.items())
    if dataclasses.is_dataclass(value):
        fields = tuple(
            (field.name, typed(getattr(value, field.name))) for field in dataclasses.fields(value)
        )
        return kind, fields
    if kind is float and math.isnan(value):
        return kind, "nan"
    if kind is decimal.Decimal:
        return kind, str(value)  # Decimal("1.10") == Decimal("1.1"); the digits must survive
    if kind in (datetime.datetime, datetime.time):
        return kind, value.isoformat(), value.tzinfo is None
    return kind, value


def round_trip(value: Any) -> Any:
    return loads(dump(value, "value"))


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2024, 5, 17, 13, 45, 12, 123456, tzinfo=datetime.UTC),
        datetime.datetime(
            2024, 5, 17, 13, 45, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
        ),
        datetime.datetime(2024, 5, 17, 13, 45, 12, 7),
        datetime.date(1999, 12, 31),
        datetime.time(23, 59, 58, 999999),
        datetime.time(8, 30, tzinfo=datetime.UTC),
        datetime.timedelta(days=-3, seconds=5, microseconds=17),
        datetime.timedelta(0),
        decimal.Decimal("1.10"),
        decimal.Decimal("-0.000001"),
        decimal.Decimal("1E+3"),
        decimal.Decimal("12345678901234567890.123456789"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        (1, "a", None),
        (),
        (1, (2, (3, (4,))), [5, (6,)]),
        {1, 2, 3},
        set(),
        {(1, 2), (3, 4)},
        frozenset({"a", "b"}),
        b"\x00\xffbytes",
        b"",
        Color.RED,
        Color.BLUE,
        Level.HIGH,
        Item("pen", decimal.Decimal("2.50"), ("blue", "cheap")),
        Coordinates(48.85, 2.35),
        Order(
            id=uuid.UUID(int=1),
            items=[Item("pen", decimal.Decimal("2.50")), Item("ink", decimal.Decimal("9.99"))],
            where=Coordinates(-33.9, 151.2),
            placed=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
            color=Color.BLUE,
            extra={"gift": True, "note": (1, 2)},
        ),
        float("inf"),
        float("-inf"),
        [1.5, float("inf"), {"x": float("-inf")}],
        {1: "one", 2: "two"},
        {(1, 2): "pair", (3,): "single"},
        {1: "int", "1": "str", None: "none", 2.5: "float"},
        {"outer": {10: [datetime.date(2020, 1, 1)]}},
        {"__pgqrs__": "decimal", "v": "1.10"},
        {"__pgqrs__": "tuple"},
        [{"__pgqrs__": 1, "other": [2]}],
        {"deep": [{"__pgqrs__": {"__pgqrs__": "set", "v": []}}]},
        [True, 1, 1.0, 0, False, None, "", "é\u2028"],
    ],
    ids=repr,
)
def test_value_comes_back_equal_and_of_the_same_types(value: Any) -> None:
    decoded = round_trip(value)
    assert decoded == value
    assert typed(decoded) == typed(value)


def test_nan_comes_back_as_nan() -> None:
    decoded = round_trip([float("nan"), {"x": float("nan")}])
    assert type(decoded[0]) is float and math.isnan(decoded[0])
    assert math.isnan(decoded[1]["x"])


def test_an_aware_datetime_keeps_its_offset_and_a_naive_one_stays_naive() -> None:
    offset = datetime.timezone(datetime.timedelta(hours=-7))
    aware = round_trip(datetime.datetime(2024, 3, 1, 12, 0, tzinfo=offset))
    naive = round_trip(datetime.datetime(2024, 3, 1, 12, 0))
    assert aware.utcoffset() == datetime.timedelta(hours=-7)
    assert naive.tzinfo is None


def test_a_frozen_dataclass_comes_back_frozen_and_hashable() -> None:
    decoded = round_trip({Coordinates(1.0, 2.0)})
    (point,) = decoded
    assert type(point) is Coordinates
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.lat = 3.0  # type: ignore[misc]


def test_bytearray_comes_back_as_bytes() -> None:
    assert round_trip(bytearray(b"ab\x00")) == b"ab\x00"
    assert type(round_trip(bytearray(b"ab"))) is bytes


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"a": [1, "x", None, True, 1.5]}, '{"a":[1,"x",null,true,1.5]}'),
        ([], "[]"),
        ("plain", '"plain"'),
        (42, "42"),
        (None, "null"),
        ({"nested": {"list": [{"k": "v"}]}}, '{"nested":{"list":[{"k":"v"}]}}'),
        ("é", '"é"'),
    ],
    ids=repr,
)
def test_a_plain_json_value_is_stored_as_itself(value: Any, text: str) -> None:
    assert dump(value, "value") == text
    assert json.loads(dump(value, "value")) == value


def test_non_json_values_are_stored_as_tagged_objects() -> None:
    assert json.loads(dump(decimal.Decimal("1.10"), "value")) == {
        "__pgqrs__": "decimal",
        "v": "1.10",
    }
    assert json.loads(dump({1: "a"}, "value")) == {"__pgqrs__": "dict", "v": [[1, "a"]]}


def test_a_user_dict_holding_the_tag_key_is_not_taken_for_a_tagged_value() -> None:
    value = {"__pgqrs__": "decimal", "v": "1.10"}
    stored = json.loads(dump(value, "value"))
    assert stored != value  # wrapped, so that decoding cannot mistake it for a Decimal
    decoded = loads(dump(value, "value"))
    assert decoded == value
    assert type(decoded) is dict


# --- Values that cannot be stored ---------------------------------------------------------------


def test_an_arbitrary_object_is_refused_naming_its_type_and_path() -> None:
    with pytest.raises(PayloadError) as caught:
        dump({"a": [1, object()]}, "result of step 'fetch'")
    message = str(caught.value)
    assert "result of step 'fetch'" in message
    assert "(type builtins.object)" in message
    assert "at ['a'][1]" in message


def test_an_object_inside_a_tuple_and_a_dataclass_is_refused_with_its_path() -> None:
    with pytest.raises(PayloadError) as caught:
        dump((0, Item("pen", decimal.Decimal(1), ("a", object()))), "value")  # type: ignore[arg-type]
    message = str(caught.value)
    assert "(type builtins.object)" in message
    assert "at [1]['tags'][1]" in message


def test_a_dataclass_defined_inside_a_function_is_refused() -> None:
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(PayloadError) as caught:
        dump({"rows": [Local(1)]}, "result of step 'local'")
    message = str(caught.value)
    assert "result of step 'local'" in message
    assert "Local is defined inside a function" in message
    assert f"(type {Local.__module__}.{Local.__qualname__})" in message
    assert "at ['rows'][0]" in message


def test_an_enum_defined_inside_a_function_is_refused() -> None:
    class Local(enum.Enum):
        A = 1

    with pytest.raises(PayloadError, match="Local is defined inside a function"):
        dump([Local.A], "value")


def test_a_string_holding_nul_is_refused() -> None:
    with pytest.raises(PayloadError) as caught:
        dump({"names": ["ok", "a\x00b"]}, "input of workflow 'w'")
    message = str(caught.value)
    assert "input of workflow 'w'" in message
    assert "NUL" in message
    assert "(type builtins.str)" in message
    assert "at ['names'][1]" in message


def test_a_dict_key_holding_nul_is_refused() -> None:
    with pytest.raises(PayloadError) as caught:
        dump({"outer": {"a\x00b": 1}}, "value")
    message = str(caught.value)
    assert "dict key holding the NUL character" in message
    assert "(type builtins.str)" in message
    assert "at ['outer']" in message


def test_a_nul_inside_a_non_string_keyed_dict_is_refused() -> None:
    with pytest.raises(PayloadError, match="NUL"):
        dump({1: "a\x00"}, "value")


def test_a_payload_larger_than_the_limit_is_refused() -> None:
    with pytest.raises(PayloadError) as caught:
        dump(["é" * 30], "result of step 'big'", max_bytes=60)
    message = str(caught.value)
    assert "result of step 'big'" in message
    assert "64 bytes encoded" in message  # 30 two-byte characters, quotes and brackets
    assert "MAX_PAYLOAD_BYTES'] (60)" in message


def test_a_payload_of_exactly_the_limit_is_accepted() -> None:
    text = dump("x" * 8, "value", max_bytes=10)
    assert len(text.encode()) == 10


def test_minus_zero_keeps_its_sign() -> None:
    decoded = round_trip([-0.0, 0.0])
    assert [math.copysign(1, x) for x in decoded] == [-1, 1]


def test_strings_that_utf8_cannot_encode_come_back_as_they_were() -> None:
    name = os.fsdecode(b"report-\xff\xfe.csv")  # a file name that is not UTF-8
    value = {name: [name, "plain"], "k": name}
    decoded = round_trip(value)
    assert decoded == value
    dump(value, "value").encode()  # the stored text is valid UTF-8, as PostgreSQL needs
    assert json.loads(dump(name, "value"))["__pgqrs__"] == "str"


def test_an_enum_member_that_no_longer_exists_raises_payload_error_saying_so() -> None:
    text = dump(Color.RED, "value").replace('"red"', '"purple"')
    with pytest.raises(PayloadError, match="'purple' is not a valid Color"):
        loads(text)


def test_a_dataclass_that_gained_a_required_field_raises_payload_error() -> None:
    text = dump(Coordinates(1.0, 2.0), "value").replace(',"lon":2.0', "")
    with pytest.raises(PayloadError, match="lon"):
        loads(text)


def test_text_that_is_not_json_raises_payload_error() -> None:
    with pytest.raises(PayloadError, match="not valid JSON"):
        loads('{"a": ')


def test_decoding_never_imports_a_module_outside_the_installed_apps() -> None:
    assert "antigravity" not in sys.modules
    text = json.dumps({"__pgqrs__": "enum", "cls": "antigravity:Thing", "v": 1})
    with pytest.raises(PayloadError, match="neither imported nor part of an installed app"):
        loads(text)
    assert "antigravity" not in sys.modules


def test_the_digest_of_equal_values_is_equal_whatever_their_order() -> None:
    assert digest({"b": 1, "a": {"x", "y", "z"}}) == digest({"a": {"z", "y", "x"}, "b": 1})
    assert digest({1: "a", 2: "b"}) == digest({2: "b", 1: "a"})
    assert digest([1, 2]) != digest([2, 1])
    assert digest({"a": 1}) != digest({"a": 1.5})


def test_the_digest_takes_any_value() -> None:
    assert digest({"obj": object()}) == digest({"obj": object()})
    assert digest(Coordinates(1.0, 2.0)) == digest(Coordinates(1.0, 2.0))
    assert digest(Coordinates(1.0, 2.0)) != digest(Coordinates(1.0, 3.0))


def test_the_digest_does_not_depend_on_the_hash_seed(tmp_path) -> None:
    """Sets inside namedtuples, Counters, defaultdicts iterate in a seed-dependent order."""
    script = tmp_path / "digest.py"
    script.write_text(
        "import collections, sys\n"
        "from django_pgqrs.codec import digest\n"
        "Job = collections.namedtuple('Job', 'name tags')\n"
        "words = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta']\n"
        "by_letter = collections.defaultdict(set)\n"
        "for word in words: by_letter[word[0]].add(word)\n"
        "value = [Job('j', frozenset(words)), collections.Counter(set(words)), by_letter]\n"
        "print(digest(value))\n"
    )
    digests = set()
    for seed in ("1", "2", "3", "4"):
        done = subprocess.run(
            [sys.executable, str(script)],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(done.stdout)
    assert len(digests) == 1


def test_the_digest_tells_apart_what_only_looks_alike() -> None:
    assert digest({"__pgqrs__": "set", "v": [1, 2]}) != digest({1, 2})
    assert digest(collections.Counter(a=1, b=2)) == digest(collections.Counter(b=2, a=1))
