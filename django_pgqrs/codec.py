"""JSON encoding of inputs and results, with round-trip for common Python types.

Values are stored as JSON, never pickle. Plain JSON values (str, int, float, bool, None, list,
dict with str keys) are stored as themselves, so the guide's monitoring SQL and ``jsonb``
operators see ordinary JSON. Other supported types are stored as a tagged object
``{"__pgqrs__": kind, "v": ...}`` and come back as the same type: tuple, set, frozenset, bytes,
datetime, date, time, timedelta, Decimal, UUID, Enum members, dataclasses, floats that JSON cannot
spell (nan, inf) or that jsonb would turn into integers (1e+16) or zero (-0.0), strings that UTF-8
cannot encode (lone surrogates, as ``os.fsdecode`` makes of a non-UTF-8 file name), and dicts whose
keys are not all strings. A dict whose key order jsonb would change also stores its order
(``__pgqrs_order__``), so that it comes back in the order it was saved in.

Dataclasses and Enums are found again by import path, so they must be defined at module level.
Decoding imports only modules that are already imported or belong to an installed app, so a row
written by hand cannot make a process import an arbitrary module. A saved value that no longer
decodes (an Enum member removed, a dataclass field added) raises ``PayloadError`` saying why.
Strings holding ``\\x00`` are refused on every database: PostgreSQL's jsonb cannot store them, and a
workflow that runs on SQLite in development must not fail only in production.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import decimal
import enum
import hashlib
import importlib
import json
import sys
import uuid
from collections.abc import Iterable
from typing import Any, TypeAlias

from .exceptions import PayloadError

Json: TypeAlias = bool | int | float | str | list["Json"] | dict[str, "Json"] | None

TAG = "__pgqrs__"
_INF = float("inf")
_PLAIN = (str, int, bool, type(None))
# PostgreSQL's jsonb keeps an object's keys in its own order (shorter first, then bytewise); a
# dict whose keys are in another order carries its order under this key, so that a workflow
# iterating over a dict sees the same order on a replay as on its first run.
ORDER = "__pgqrs_order__"


class _Unencodable(Exception):
    """Internal: a value deep inside a payload cannot be encoded; ``path`` says where."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        self.path: list[str] = []


def dump(value: object, what: str, max_bytes: int | None = None) -> str:
    """Encode ``value`` as JSON text.

    ``what`` names the value in errors ("result of step 'fetch_data'"). Raise ``PayloadError`` if
    the value, or anything inside it, cannot be stored, or if the text exceeds ``max_bytes``.
    """
    try:
        data = to_json(value)
    except _Unencodable as exc:
        where = "".join(reversed(exc.path))
        at = f" at {where}" if where else ""
        kind = type(exc.value)
        raise PayloadError(
            f"The {what} cannot be stored: {exc.reason}{at} "
            f"(type {kind.__module__}.{kind.__qualname__}). Use JSON values, or types that "
            f"django-pgqrs round-trips (datetime, Decimal, UUID, tuple, dataclass, ...); for a "
            f"model instance, its primary key (order.pk)."
        ) from None
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if max_bytes is not None and len(text) * 4 > max_bytes:
        size = len(text.encode())
        if size > max_bytes:
            raise PayloadError(
                f"The {what} is {size} bytes encoded, more than PGQRS['MAX_PAYLOAD_BYTES'] "
                f"({max_bytes}). Store large data elsewhere and pass a reference."
            )
    return text


def loads(text: str | bytes | None) -> Any:
    """Decode JSON text written by ``dump`` back into Python values."""
    if text is None:
        return None
    try:
        return _DECODER.decode(text if isinstance(text, str) else text.decode())
    except json.JSONDecodeError as exc:
        raise PayloadError(f"Saved JSON is not valid JSON: {exc}.") from exc


def digest(value: object) -> str:
    """Return a short fingerprint of ``value`` that is equal for equal values in any process.

    Used to recognise a step call on a replay by its arguments. Dict keys and set members are
    sorted, so neither insertion order nor hash randomisation changes it. Parts that cannot be
    stored count by their type (a model instance by its model and primary key), so any argument
    is accepted.
    """
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _canonical(value: object) -> Any:
    # Containers by what they are, not by their exact type (a namedtuple, a Counter), so that no
    # iteration order (of a set, of a dict built in another order) reaches the digest.
    if value is None or type(value) in (str, int, bool):
        return value
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "cls": type(value).__qualname__, "v": _canonical(value.value)}
    for base in (bool, int, str):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, dict):
        if all(type(key) is str for key in value) and TAG not in value and ORDER not in value:
            return {key: _canonical(item) for key, item in value.items()}
        return {TAG: "dict", "v": _sorted([key, item] for key, item in value.items())}
    if isinstance(value, set | frozenset):
        return {TAG: "set", "v": _sorted(value)}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {TAG: "dataclass", "cls": type(value).__qualname__, "v": _canonical(fields)}
    try:
        return to_json(value)
    except _Unencodable:
        kind = type(value)
        meta = getattr(value, "_meta", None)
        pk = getattr(value, "pk", None)
        if meta is not None and pk is not None:
            return {TAG: "model", "cls": str(meta.label), "pk": str(pk)}
        return {TAG: "object", "cls": f"{kind.__module__}.{kind.__qualname__}"}


def _sorted(items: Iterable[Any]) -> list[Any]:
    canonical = [_canonical(item) for item in items]
    return sorted(canonical, key=lambda item: json.dumps(item, sort_keys=True, default=str))


class PayloadDecoder(json.JSONDecoder):
    """JSON decoder for model fields: rebuilds the values ``dump`` tagged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["object_hook"] = _object_hook
        super().__init__(*args, **kwargs)


class PayloadEncoder(json.JSONEncoder):
    """JSON encoder for model fields: tags non-JSON types the way ``dump`` does."""

    def encode(self, o: Any) -> str:
        try:
            return super().encode(to_json(o))
        except _Unencodable as exc:
            raise TypeError(f"{type(exc.value).__qualname__} cannot be stored as JSON") from None


def to_json(value: object) -> Json:
    """Return ``value`` as JSON data: new containers, tagged objects for non-JSON types."""
    kind = type(value)
    if kind is str:
        return _str(value)  # type: ignore[arg-type]
    if kind in _PLAIN:
        return value  # type: ignore[return-value]
    if kind is float:
        text = repr(value)
        # JSON has no nan or inf; jsonb turns 1e+16 into 10000000000000000, an int, and -0.0
        # into 0.
        if value != value or value in (_INF, -_INF) or "e+" in text or text == "-0.0":
            return {TAG: "float", "v": text}
        return value  # type: ignore[return-value]
    if kind is list:
        return _list(value)
    if kind is dict:
        return _dict(value)  # type: ignore[arg-type]
    return _tagged(value)


def _str(value: str) -> Json:
    if "\x00" in value:
        raise _Unencodable(value, "a string holding the NUL character \\x00")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            # Lone surrogates: no UTF-8 text can hold them, so their code points go as bytes.
            raw = value.encode("utf-8", "surrogatepass")
            return {TAG: "str", "v": base64.b64encode(raw).decode("ascii")}
    return value


def _plain_key(key: object) -> bool:
    """A key that can be a JSON object's key as it is."""
    if type(key) is not str:
        return False
    if "\x00" in key:
        raise _Unencodable(key, "a dict key holding the NUL character \\x00")
    return key.isascii() or type(_str(key)) is str


def _list(items: Any) -> list[Json]:
    out: list[Json] = []
    for index, item in enumerate(items):
        try:
            out.append(to_json(item))
        except _Unencodable as exc:
            exc.path.append(f"[{index}]")
            raise
    return out


def _dict(mapping: dict[Any, Any]) -> Json:
    if TAG in mapping or ORDER in mapping or not all(_plain_key(key) for key in mapping):
        return {TAG: "dict", "v": _list([key, item] for key, item in mapping.items())}
    out: dict[str, Json] = {}
    for key, item in mapping.items():
        try:
            out[key] = to_json(item)
        except _Unencodable as exc:
            exc.path.append(f"[{key!r}]")
            raise
    if len(out) > 1 and not _in_jsonb_order(mapping):
        out[ORDER] = list(mapping)
    return out


def _in_jsonb_order(keys: Iterable[str]) -> bool:
    previous: tuple[int, str] | None = None
    for key in keys:
        # UTF-8 orders like code points, so only the length needs the encoded form.
        current = (len(key) if key.isascii() else len(key.encode()), key)
        if previous is not None and current < previous:
            return False
        previous = current
    return True


def _class_path(value: object) -> str:
    cls = type(value)
    if "<locals>" in cls.__qualname__:
        raise _Unencodable(value, f"{cls.__qualname__} is defined inside a function")
    return f"{cls.__module__}:{cls.__qualname__}"


def _tagged(value: object) -> Json:
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "cls": _class_path(value), "v": to_json(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        return {TAG: "dataclass", "cls": _class_path(value), "v": _dict(fields)}
    if isinstance(value, datetime.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, datetime.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, datetime.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, tuple):
        return {TAG: "tuple", "v": _list(value)}
    if isinstance(value, frozenset):
        return {TAG: "frozenset", "v": _list(value)}
    if isinstance(value, set):
        return {TAG: "set", "v": _list(value)}
    if isinstance(value, bytes | bytearray):
        return {TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    # Subclasses of the plain types (str, int, float, list, dict) that are not Enums.
    for base in (int, float, str):
        if isinstance(value, base):
            return to_json(base(value))
    if isinstance(value, list):
        return _list(value)
    if isinstance(value, dict):
        return _dict(dict(value))
    raise _Unencodable(value, "this type has no JSON form")


def _object_hook(data: dict[str, Any]) -> Any:
    # Called by the JSON parser for every object, innermost first: nested values are decoded.
    tag = data.get(TAG)
    if tag is not None:
        try:
            return _untag(tag, data)
        except PayloadError:
            raise
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            ArithmeticError,
            binascii.Error,
        ) as exc:
            raise PayloadError(
                f"A saved {tag} value ({_excerpt(data)}) can no longer be decoded: "
                f"{type(exc).__name__}: {exc}. Its class or its data changed since it was saved; "
                f"restore what it needs (an Enum member, a dataclass field's default) so that "
                f"saved workflows can be decoded."
            ) from exc
    order = data.pop(ORDER, None)
    if order is None:
        return data
    try:
        ordered = {key: data[key] for key in order}
    except (KeyError, TypeError):
        ordered = {}
    if len(ordered) != len(data):
        raise PayloadError(
            f"A saved dict's key order ({_excerpt({ORDER: order})}) is not its keys."
        )
    return ordered


def _untag(tag: str, data: dict[str, Any]) -> Any:
    raw: Any = data.get("v")
    if tag == "tuple":
        return tuple(raw)
    if tag == "datetime":
        return datetime.datetime.fromisoformat(raw)
    if tag == "date":
        return datetime.date.fromisoformat(raw)
    if tag == "time":
        return datetime.time.fromisoformat(raw)
    if tag == "timedelta":
        return datetime.timedelta(days=raw[0], seconds=raw[1], microseconds=raw[2])
    if tag == "decimal":
        return decimal.Decimal(raw)
    if tag == "uuid":
        return uuid.UUID(raw)
    if tag == "dict":
        return {key: item for key, item in raw}
    if tag == "set":
        return set(raw)
    if tag == "frozenset":
        return frozenset(raw)
    if tag == "bytes":
        return base64.b64decode(raw)
    if tag == "float":
        return float(raw)
    if tag == "str":
        return base64.b64decode(raw).decode("utf-8", "surrogatepass")
    if tag == "enum":
        return load_class(data["cls"], enum.Enum)(raw)
    if tag == "dataclass":
        return _dataclass(load_class(data["cls"], None), raw)
    raise PayloadError(
        f"Saved JSON holds an unknown tagged value {tag!r}; it was not written by this version "
        f"of django-pgqrs."
    )


def load_class(path: str, base: type | None) -> Any:
    """Return the class a saved value names (``module:qualname``): a subclass of ``base``, or a
    dataclass if ``base`` is None. Raise ``PayloadError`` if it is not there any more."""
    module_name, _, qualname = path.partition(":")
    try:
        found: Any = sys.modules.get(module_name)
        if found is None:
            if not _may_import(module_name):
                raise PayloadError(
                    f"Saved JSON names the class {path}, whose module is neither imported nor "
                    f"part of an installed app; it is not imported to decode a value. Import it "
                    f"in your app (e.g. in its workflows module)."
                )
            found = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        raise PayloadError(
            f"Saved JSON names the class {path}, which can no longer be imported. Restore it "
            f"(or keep an alias at that path) so saved workflows can be decoded."
        ) from None
    if not isinstance(found, type) or not (
        issubclass(found, base) if base else dataclasses.is_dataclass(found)
    ):
        kind = base.__name__ if base else "dataclass"
        raise PayloadError(f"Saved JSON names {path}, which is not a {kind} (any more).")
    return found


def _may_import(module_name: str) -> bool:
    """Whether decoding may import ``module_name``: it belongs to an installed app."""
    from django.apps import apps

    return any(
        module_name == config.name or module_name.startswith(config.name + ".")
        for config in apps.get_app_configs()
    )


def _excerpt(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, default=repr)
    return text if len(text) <= 200 else text[:200] + "..."


def _dataclass(cls: type, values: dict[str, Any]) -> Any:
    fields = dataclasses.fields(cls)
    obj = cls(**{f.name: values[f.name] for f in fields if f.init and f.name in values})
    for field in fields:
        if not field.init and field.name in values:
            object.__setattr__(obj, field.name, values[field.name])
    return obj


_DECODER = PayloadDecoder()
