"""The filter language compiled to a parameterised DuckDB WHERE clause over `hub/schema.py`'s table.

    sql, params = compile(parse('status >= 500 and dst.namespace == "shop"'))
    con.execute(f"SELECT id FROM calls WHERE {sql}", params)

Only column names from `hub.schema` and fixed SQL are ever written into the text; every literal,
header name, label key, info path and pattern is a `?` parameter. The result means exactly what
`Filter.matches` means (a property test runs both over random calls and filters):

- SQL's three-valued logic is closed off at every leaf: a comparison is `coalesce(test, false)`, so
  a missing value (NULL) makes it false and `NOT` of it true, as in Python. `!=` and `not in` are
  "has a value and the positive test fails": `(x IS NOT NULL AND NOT coalesce(test, false))`.
- Headers: the values whose name, ASCII-lowercased, equals the key (`strlen(name) = len(key)`
  keeps out names with non-ASCII letters that `lower()` would fold); the test holds if any does.
- Bodies are BLOBs. DuckDB has no substring search on BLOB, so `contains` searches the hex form
  for the needle's hex at an even offset (`^(?:[0-9A-F]{2})*?HEX`, linear in RE2);
  `startswith`/`endswith` compare hex prefixes/suffixes, which are always aligned.
- `info.KEY` reads the JSON text with the built-in json functions (no extension is loaded at run
  time): the JSON pointer of the path is a parameter, and the value's `json_type` decides whether
  a string, integer or boolean literal can match.
- IPs compare through the two UBIGINT halves of their number; a CIDR is one or two range tests.
"""

from __future__ import annotations

from collections.abc import Callable

from dissect.filter import (
    All,
    And,
    BodyField,
    Bool,
    Cidr,
    Comparison,
    Contains,
    EndsWith,
    Eq,
    Field,
    Filter,
    HasFlag,
    HeaderField,
    In,
    InfoField,
    Int,
    Ip,
    IpField,
    IsProtocol,
    LabelField,
    Matches,
    Node,
    Not,
    Or,
    Regex,
    StartsWith,
    Str,
    Value,
)
from hub.schema import FIELD_COLUMNS, IP_COLUMNS

Frag = tuple[str, list[object]]
_U64 = (1 << 64) - 1
_ORDER_SQL = {"==": "=", "!=": "=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def compile(f: Filter | Node) -> tuple[str, list[object]]:
    """A WHERE-clause fragment with `?` placeholders, and its parameters in order."""
    return _node(f.root if isinstance(f, Filter) else f)


def _cat(*parts: str | Frag) -> Frag:
    text: list[str] = []
    params: list[object] = []
    for p in parts:
        if isinstance(p, str):
            text.append(p)
        else:
            text.append(p[0])
            params.extend(p[1])
    return "".join(text), params


def _join(sep: str, frags: list[Frag]) -> Frag:
    parts: list[str | Frag] = []
    for i, fr in enumerate(frags):
        if i:
            parts.append(sep)
        parts.append(fr)
    return _cat(*parts)


def _p(value: object, cast: str = "") -> Frag:
    return ("?" + (f"::{cast}" if cast else "")), [value]


def _node(n: Node) -> Frag:
    if isinstance(n, All):
        return "TRUE", []
    if isinstance(n, Or):
        return _cat("(", _join(" OR ", [_node(i) for i in n.items]), ")")
    if isinstance(n, And):
        return _cat("(", _join(" AND ", [_node(i) for i in n.items]), ")")
    if isinstance(n, Not):
        return _cat("(NOT ", _node(n.item), ")")
    if isinstance(n, IsProtocol):
        return _cat("coalesce(protocol = ", _p(n.name), ", false)")
    if isinstance(n, HasFlag):
        return _cat("coalesce(list_contains(flags, ", _p(n.flag), "), false)")
    if isinstance(n, Comparison):
        return _comparison(n)
    raise TypeError(f"cannot compile {type(n).__name__}")


def _comparison(n: Comparison) -> Frag:
    f = n.field
    values: tuple[Value, ...] = n.value if isinstance(n, In) else (n.value,)
    if isinstance(f, HeaderField):
        return _header(n, f, values)
    if isinstance(f, InfoField):
        return _info(n, f, values)
    if isinstance(f, IpField) and n.numeric_ip():
        hi, lo = IP_COLUMNS[f.name]
        test = _join(" OR ", [_ip_range(hi, lo, v) for v in values])  # type: ignore[arg-type]
        return _wrap(n, (hi, []), _cat("(", test, ")"))
    x = _column(f)
    return _wrap(n, x, _test(n, f, x, values))


def _wrap(n: Comparison, x: Frag, test: Frag) -> Frag:
    if n.NEGATIVE:
        return _cat("(", x, " IS NOT NULL AND NOT coalesce(", test, ", false))")
    return _cat("coalesce(", test, ", false)")


def _column(f: Field) -> Frag:
    if isinstance(f, LabelField):
        return _cat(FIELD_COLUMNS[f"{f.end}.labels"], "[", _p(f.key), "]")
    return FIELD_COLUMNS[f.name], []


def _ip_range(hi: str, lo: str, v: Ip | Cidr) -> Frag:
    a, b = v.lo, v.hi
    if a >> 64 == b >> 64:
        return _cat(
            f"({hi} = ",
            _p(a >> 64, "UBIGINT"),
            f" AND {lo} BETWEEN ",
            _p(a & _U64, "UBIGINT"),
            " AND ",
            _p(b & _U64, "UBIGINT"),
            ")",
        )
    # a prefix of 64 bits or less: the low halves span everything
    return _cat(f"({hi} BETWEEN ", _p(a >> 64, "UBIGINT"), " AND ", _p(b >> 64, "UBIGINT"), ")")


def _lit(f: Field, v: Value) -> object:
    if isinstance(v, Str):
        return v.value.encode() if isinstance(f, BodyField) else v.value
    if isinstance(v, Int | Bool):
        return v.value
    if isinstance(v, Regex):
        return v.re2
    return v.ns  # type: ignore[union-attr]  # Duration, Time


def _test(n: Comparison, f: Field, x: Frag, values: tuple[Value, ...]) -> Frag:
    """The positive test of the operator on the value expression `x`."""
    body = isinstance(f, BodyField)
    if isinstance(n, In):
        cast = "BLOB" if body else ""
        return _cat(x, " IN (", _join(", ", [_p(_lit(f, v), cast) for v in values]), ")")
    lit = _lit(f, values[0])
    if body and isinstance(n, Contains | StartsWith | EndsWith):
        assert isinstance(lit, bytes)
        hexed = lit.hex().upper()
        if isinstance(n, Contains):
            return _cat("regexp_matches(hex(", x, "), ", _p("^(?:[0-9A-F]{2})*?" + hexed), ")")
        name = "starts_with" if isinstance(n, StartsWith) else "ends_with"
        return _cat(f"{name}(hex(", x, "), ", _p(hexed), ")")
    fn = _TEXT_FN.get(type(n))
    if fn is not None:
        return fn(x, lit)
    return _cat(x, f" {_ORDER_SQL[n.SYMBOL]} ", _p(lit, "BLOB" if body else ""))


# -- headers: any value of the named header


def _header(n: Comparison, f: HeaderField, values: tuple[Value, ...]) -> Frag:
    col = FIELD_COLUMNS[f"{f.side}.headers"]
    named = _cat("strlen(hdr.name) = ", _p(len(f.key)), " AND lower(hdr.name) = ", _p(f.key))
    test = _test(n, f, ("hdr.value", []), values)
    hits = _cat(f"len(list_filter({col}, lambda hdr: ", named, " AND coalesce(", test, ", false)))")
    if n.NEGATIVE:
        present = _cat(f"len(list_filter({col}, lambda hdr: ", named, "))")
        return _cat("coalesce(", present, " > 0 AND ", hits, " = 0, false)")
    return _cat("coalesce(", hits, " > 0, false)")


# -- info: JSON values, typed by the literal


def _pointer(path: tuple[str, ...]) -> str:
    return "".join("/" + seg.replace("~", "~0").replace("/", "~1") for seg in path)


def _info(n: Comparison, f: InfoField, values: tuple[Value, ...]) -> Frag:
    ptr = _pointer(f.path)
    if isinstance(n, In):
        test = _join(" OR ", [_info_test(Eq, ptr, v) for v in values])
        test = _cat("(", test, ")")
    else:
        test = _info_test(type(n), ptr, values[0])
    if n.NEGATIVE:
        present = _cat("coalesce(json_type(info, ", _p(ptr), ") <> 'NULL', false)")
        return _cat("(", present, " AND NOT ", test, ")")
    return test


def _info_test(op: type[Comparison], ptr: str, v: Value) -> Frag:
    """coalesce'd: never NULL."""
    if isinstance(v, Str | Regex):
        x = _cat("json_extract_string(info, ", _p(ptr), ")")
        t = _text_test(op, x, v)
        return _cat("coalesce(json_type(info, ", _p(ptr), ") = 'VARCHAR' AND ", t, ", false)")
    if isinstance(v, Bool):
        # TRY_CAST: DuckDB may evaluate both sides of the AND, and "A"::BOOLEAN would be an error
        x = _cat("TRY_CAST(json_extract(info, ", _p(ptr), ") AS BOOLEAN)")
        return _cat(
            "coalesce(json_type(info, ", _p(ptr), ") = 'BOOLEAN' AND ", x, " = ", _p(v.value), ", false)"
        )
    assert isinstance(v, Int)
    sym = _ORDER_SQL[op.SYMBOL]
    return _cat(
        "coalesce(CASE json_type(info, ",
        _p(ptr),
        ") WHEN 'BIGINT' THEN json_extract(info, ",
        _p(ptr),
        f")::HUGEINT {sym} ",
        _p(v.value),
        " WHEN 'UBIGINT' THEN json_extract(info, ",
        _p(ptr),
        f")::HUGEINT {sym} ",
        _p(v.value),
        " WHEN 'DOUBLE' THEN json_extract(info, ",
        _p(ptr),
        f")::DOUBLE {sym} ",
        _p(v.value, "DOUBLE"),
        " ELSE false END, false)",
    )


_TEXT_FN: dict[type[Comparison], Callable[[Frag, object], Frag]] = {
    Matches: lambda x, p: _cat("regexp_matches(", x, ", ", _p(p), ")"),
    Contains: lambda x, p: _cat("contains(", x, ", ", _p(p), ")"),
    StartsWith: lambda x, p: _cat("starts_with(", x, ", ", _p(p), ")"),
    EndsWith: lambda x, p: _cat("ends_with(", x, ", ", _p(p), ")"),
}


def _text_test(op: type[Comparison], x: Frag, v: Str | Regex) -> Frag:
    lit = v.re2 if isinstance(v, Regex) else v.value
    fn = _TEXT_FN.get(op)
    if fn is not None:
        return fn(x, lit)
    return _cat(x, f" {_ORDER_SQL[op.SYMBOL]} ", _p(lit))
