"""The filter language: one grammar for live, history, replay and export.

    http and status >= 500
    dst.namespace == "shop" and latency > 200ms
    method in ("POST", "PUT") and request.headers["content-type"] contains "json"
    src.ip in 10.0.0.0/8 and request_ts > -15m
    response.body contains "error" or "response-missing" in flags

`parse(text)` turns the text into a `Filter` once. `Filter.matches(call)` is the live predicate: the tree
is compiled to nested closures at parse time, so a call costs a few attribute reads and comparisons,
never a walk over the tree. `hub/filter_sql.py` compiles the same tree to parameterised SQL for the
history; a property test holds the two to the same answers.

Grammar (precedence `not` > `and` > `or`; keywords are lower case)::

    filter     := [or]                                 (empty text matches every call)
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | atom
    atom       := "(" or ")" | PROTOCOL | "tls" | STRING ["not"] "in" "flags" | field op value
    field      := NAME | NAME "[" key "]" | "info" ("." NAME | "[" key "]")+
    op         := == != < <= > >= ~ contains startswith endswith in "not in"

Semantics, shared with the SQL compiler (the docstring of each class below says its part):

- A field has no value, one, or (headers) several. A comparison with no value is false and `not` of
  it true. Positive operators match if *any* value does; `!=` and `not in` match when there is a
  value and no value equals (so `x != v` is exactly `not x == v` for a call that has `x`).
- Text is compared case-sensitively, by code point. Header names are matched case-insensitively
  (ASCII) and must be ASCII. Label keys and info keys are exact.
- Bodies are bytes: a string literal is UTF-8 encoded and compared as bytes (`contains` is a byte
  substring search). There is no `~` on bodies.
- `~` is a regular-expression *search* in a subset that Python's `re` and RE2 (DuckDB) read the
  same way: the pattern is parsed here and re-emitted for each engine in a canonical form
  (`\\d` is `[0-9]`, `\\w` is `[0-9A-Za-z_]`, `\\s` is `[ \\t\\n\\r\\f\\v]`, `.` is not newline,
  `$` is the end of the text, `(?i)` folds ASCII letters only). Backreferences, lookaround, atomic
  groups, possessive quantifiers, conditionals, `\\p{..}` and other constructs one engine lacks are
  errors when parsed.
- `info.KEY` compares the value as the literal's type says: a string literal matches string values,
  an integer literal numbers, `true`/`false` booleans; lists and objects have a value (for `!=`)
  but match nothing. Path segments index objects by key and lists by position (`info.answers.0`).
- IP addresses compare as numbers: IPv4 is mapped into IPv6 space (`::ffff:a.b.c.d`), so `==`
  ignores spelling and a CIDR is an integer range. `contains`/`startswith`/`endswith`/`~` on an IP
  field look at its text.
- Relative times (`-15m`) resolve once, when parsed, against `now_ns`.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import difflib
import ipaddress
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, ClassVar

from dissect.model import Call, Flag

Predicate = Callable[[Call], bool]
Test = Callable[[Any], bool]

MAX_LENGTH = 100_000  # characters of filter text
MAX_DEPTH = 64  # nesting of parentheses and `not`
MAX_INT = 2**63 - 1  # integer literals are 64-bit signed (the store's BIGINT)
PROTOCOLS = ("http", "http2", "grpc", "dns", "kafka", "tls")


class FilterError(ValueError):
    """A filter that does not parse: `message` says where and what was expected.

    `position` is the offset in the text (0 = before the first character), for a caret under the
    input; `expected` names what would have been accepted there (e.g. `a value`).
    """

    def __init__(self, message: str, position: int, expected: str = "") -> None:
        self.detail = message
        self.position = position
        self.expected = expected
        self.message = f"at {position}: {message}"
        super().__init__(self.message)


# ---------------------------------------------------------------------------------------------
# values (literals after type checking)


@dataclass(frozen=True, slots=True)
class Str:
    value: str

    def render(self) -> str:
        return quote(self.value)


@dataclass(frozen=True, slots=True)
class Int:
    value: int

    def render(self) -> str:
        return str(self.value)


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool

    def render(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True, slots=True)
class Duration:
    ns: int

    def render(self) -> str:
        return render_duration(self.ns)


@dataclass(frozen=True, slots=True)
class Time:
    ns: int  # since the epoch, UTC

    def render(self) -> str:
        return render_time(self.ns)


@dataclass(frozen=True, slots=True)
class Ip:
    """One address, as its number in IPv6 space (IPv4 mapped to ::ffff:0:0/96)."""

    value: int
    text: str

    def render(self) -> str:
        return self.text

    @property
    def lo(self) -> int:
        return self.value

    @property
    def hi(self) -> int:
        return self.value


@dataclass(frozen=True, slots=True)
class Cidr:
    """A network as the inclusive integer range [lo, hi] in IPv6 space."""

    lo: int
    hi: int
    text: str

    def render(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Regex:
    """A pattern in the shared subset, with its canonical form for each engine."""

    source: str
    python: str  # compile with re.ASCII
    re2: str

    def render(self) -> str:
        return quote(self.source)


Value = Str | Int | Bool | Duration | Time | Ip | Cidr | Regex


# ---------------------------------------------------------------------------------------------
# fields: one class per kind, each knows its values for a call and which operators it takes


class Field:
    """Base of the field kinds. `name` is the canonical text (`src.labels["app"]`)."""

    KIND: ClassVar[str] = ""
    HELP: ClassVar[str] = ""
    NAMES: ClassVar[tuple[str, ...]] = ()
    MULTI: ClassVar[bool] = False  # several values per call (headers)
    EXPECTED: ClassVar[str] = "a value"
    OPS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __hash__(self) -> int:
        return hash((type(self), self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def getter(self) -> Callable[[Call], Any]:
        return operator.attrgetter(self.name)


_ORDER = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not in"})
_TEXT_OPS = _ORDER | {"~", "contains", "startswith", "endswith"}
_ENDPOINT_TEXT = ("pod", "namespace", "workload", "service", "node", "container", "process")


class TextField(Field):
    KIND = "text"
    HELP = (
        "text, compared case-sensitively: id, protocol, transport, method, target, sni, "
        "src.*/dst.* pod, namespace, workload (Kind/name), service, node, container, process"
    )
    NAMES = (
        "id",
        "protocol",
        "transport",
        "method",
        "target",
        "sni",
        *(f"{end}.{k}" for end in ("src", "dst") for k in _ENDPOINT_TEXT),
    )
    EXPECTED = "a quoted string"
    OPS = _TEXT_OPS


class IntField(Field):
    KIND = "int"
    HELP = "integers: status, src.port, dst.port, src.pid, dst.pid, request.body_size, response.body_size"
    NAMES = (
        "status",
        "src.port",
        "dst.port",
        "src.pid",
        "dst.pid",
        "request.body_size",
        "response.body_size",
    )
    EXPECTED = "an integer"
    OPS = _ORDER

    def getter(self) -> Callable[[Call], Any]:
        if self.name.endswith(".body_size"):
            side = operator.attrgetter(self.name.split(".")[0])

            def body_size(c: Call) -> int | None:
                m = side(c)
                return None if m is None else m.body_size

            return body_size
        return operator.attrgetter(self.name)


class DurationField(Field):
    KIND = "duration"
    HELP = "latency: response_ts - request_ts, compared with a duration (250ms, 2s, 5m, 1h, 1m30s)"
    NAMES = ("latency",)
    EXPECTED = "a duration (like 250ms, 2s, 5m, 1h)"
    OPS = frozenset({"==", "!=", "<", "<=", ">", ">="})

    def getter(self) -> Callable[[Call], Any]:
        return operator.attrgetter("latency_ns")


class TimeField(Field):
    KIND = "time"
    HELP = (
        "times: request_ts, response_ts, ingest_ts, compared with RFC 3339 (2025-11-21T04:40:00Z, "
        "quoted or not), a relative time (-15m: resolved once, when the filter is parsed) or epoch ns"
    )
    NAMES = ("request_ts", "response_ts", "ingest_ts")
    EXPECTED = "a time (RFC 3339 like 2025-11-21T04:40:00Z, or relative like -15m)"
    OPS = frozenset({"==", "!=", "<", "<=", ">", ">="})


class BoolField(Field):
    KIND = "bool"
    HELP = 'tls: the conversation was TLS on the wire (bare "tls" means tls == true)'
    NAMES = ("tls",)
    EXPECTED = "true or false"
    OPS = frozenset({"==", "!="})


class IpField(Field):
    KIND = "ip"
    HELP = (
        "src.ip, dst.ip: == and != compare addresses (any spelling), in takes a CIDR (IPv4 or IPv6), "
        "an address or a list of them; contains/startswith/endswith/~ look at the text"
    )
    NAMES = ("src.ip", "dst.ip")
    EXPECTED = "an IP address"
    OPS = frozenset({"==", "!=", "in", "not in", "~", "contains", "startswith", "endswith"})

    def number_getter(self) -> Callable[[Call], Any]:
        text = operator.attrgetter(self.name)

        def number(c: Call) -> int | None:
            t = text(c)
            return None if t is None else ip_to_int(t)

        return number


class LabelField(Field):
    KIND = "label"
    HELP = 'src.labels["k"], dst.labels["k"]: a Kubernetes label of the pod (exact key), as text'
    NAMES = ("src.labels", "dst.labels")
    EXPECTED = "a quoted string"
    OPS = _TEXT_OPS

    def __init__(self, end: str, key: str) -> None:
        super().__init__(f"{end}.labels[{quote(key)}]")
        self.end = end
        self.key = key

    def getter(self) -> Callable[[Call], Any]:
        labels = operator.attrgetter(f"{self.end}.labels")
        key = self.key
        return lambda c: labels(c).get(key)


class HeaderField(Field):
    KIND = "header"
    HELP = (
        'request.headers["h"], response.headers["h"]: header values as text; the name is '
        "case-insensitive (ASCII) and a repeated header matches if any value does"
    )
    NAMES = ("request.headers", "response.headers")
    MULTI = True
    EXPECTED = "a quoted string"
    OPS = _TEXT_OPS

    def __init__(self, side: str, key: str) -> None:
        super().__init__(f"{side}.headers[{quote(key)}]")
        self.side = side
        self.key = key.lower()  # ASCII only (checked when parsed)

    def getter(self) -> Callable[[Call], Any]:
        side = operator.attrgetter(self.side)
        key = self.key
        n = len(key)

        def values(c: Call) -> list[str]:
            m = side(c)
            if m is None:
                return []
            return [v for k, v in m.headers if len(k) == n and k.lower() == key and k.isascii()]

        return values


class BodyField(Field):
    KIND = "body"
    HELP = (
        "request.body, response.body: the decoded body as bytes; a string literal is UTF-8 encoded "
        "and compared byte for byte (contains is a substring search); no ~ on bodies"
    )
    NAMES = ("request.body", "response.body")
    EXPECTED = "a quoted string"
    OPS = frozenset({"==", "!=", "in", "not in", "contains", "startswith", "endswith"})

    def getter(self) -> Callable[[Call], Any]:
        side = operator.attrgetter(self.name.split(".")[0])

        def body(c: Call) -> bytes | None:
            m = side(c)
            return None if m is None else m.body

        return body


class InfoField(Field):
    KIND = "info"
    HELP = (
        'info.KEY, info.a.b, info["any key"]: protocol extras (info.qtype, info.api_key); compared as '
        "text, integer or boolean as the literal is; lists and objects match nothing"
    )
    NAMES = ("info",)
    EXPECTED = "a string, an integer, true or false"
    OPS = _TEXT_OPS

    def __init__(self, path: Sequence[str]) -> None:
        self.path = tuple(path)
        super().__init__("info" + "".join(f".{k}" if _NAME.fullmatch(k) else f"[{quote(k)}]" for k in path))

    def getter(self) -> Callable[[Call], Any]:
        path = self.path

        def value(c: Call) -> Any:
            v: Any = c.info
            for seg in path:
                t = type(v)
                if t is dict:
                    v = v.get(seg)
                elif (t is list or t is tuple) and _INDEX.fullmatch(seg):
                    i = int(seg)
                    v = v[i] if i < len(v) else None
                else:
                    return None
            return _json_scalar(v)

        return value


class FlagsField(Field):
    KIND = "flags"
    HELP = '"name" in flags, "name" not in flags: ' + ", ".join(Flag.ALL)
    NAMES = ("flags",)
    EXPECTED = "a flag name"
    OPS = frozenset()


FIELD_KINDS: tuple[type[Field], ...] = (
    TextField,
    IntField,
    DurationField,
    TimeField,
    BoolField,
    IpField,
    LabelField,
    HeaderField,
    BodyField,
    InfoField,
    FlagsField,
)
_SIMPLE: dict[str, type[Field]] = {
    n: k
    for k in (TextField, IntField, DurationField, TimeField, BoolField, IpField, BodyField)
    for n in k.NAMES
}
FIELD_NAMES: tuple[str, ...] = tuple(n for k in FIELD_KINDS for n in k.NAMES)


def _json_scalar(v: Any) -> Any:
    """A value as the JSON form has it: what the SQL side sees in the stored info column."""
    if type(v) is float and not math.isfinite(v):
        return None  # JSON has no NaN or infinity: msgspec writes null
    if type(v) is bytes:
        return base64.b64encode(v).decode()  # msgspec writes bytes as base64
    return v


# ---------------------------------------------------------------------------------------------
# the tree


class Node:
    """Base of the tree. `predicate()` builds the closure once; `render()` gives canonical text."""

    PREC: ClassVar[int] = 4  # binding strength, for parentheses when rendering
    HELP: ClassVar[str] = ""

    def predicate(self) -> Predicate:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError

    def _child(self, n: Node) -> str:
        s = n.render()
        return f"({s})" if n.PREC < self.PREC else s


@dataclass(frozen=True, slots=True)
class All(Node):
    """The empty filter: every call."""

    HELP: ClassVar[str] = "an empty filter matches every call"

    def predicate(self) -> Predicate:
        return lambda c: True

    def render(self) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class Or(Node):
    items: tuple[Node, ...]
    PREC: ClassVar[int] = 1
    SYMBOL: ClassVar[str] = "or"
    HELP: ClassVar[str] = "a or b: either (binds weakest)"

    def predicate(self) -> Predicate:
        ps = [i.predicate() for i in self.items]
        if len(ps) == 2:
            a, b = ps
            return lambda c: a(c) or b(c)
        return lambda c: any(p(c) for p in ps)

    def render(self) -> str:
        return " or ".join(self._child(i) for i in self.items)


@dataclass(frozen=True, slots=True)
class And(Node):
    items: tuple[Node, ...]
    PREC: ClassVar[int] = 2
    SYMBOL: ClassVar[str] = "and"
    HELP: ClassVar[str] = "a and b: both (binds tighter than or)"

    def predicate(self) -> Predicate:
        ps = [i.predicate() for i in self.items]
        if len(ps) == 2:
            a, b = ps
            return lambda c: a(c) and b(c)
        return lambda c: all(p(c) for p in ps)

    def render(self) -> str:
        return " and ".join(self._child(i) for i in self.items)


@dataclass(frozen=True, slots=True)
class Not(Node):
    item: Node
    PREC: ClassVar[int] = 3
    SYMBOL: ClassVar[str] = "not"
    HELP: ClassVar[str] = "not a: the opposite (binds tightest); not of a comparison with no value is true"

    def predicate(self) -> Predicate:
        p = self.item.predicate()
        return lambda c: not p(c)

    def render(self) -> str:
        return "not " + self._child(self.item)


@dataclass(frozen=True, slots=True)
class IsProtocol(Node):
    name: str
    HELP: ClassVar[str] = (
        "http, http2, grpc, dns, kafka: bare protocol names, true when protocol is that name "
        '(bare "tls" is the tls field: TLS on the wire, which every protocol "tls" call is)'
    )

    def predicate(self) -> Predicate:
        name = self.name
        return lambda c: c.protocol == name

    def render(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class HasFlag(Node):
    flag: str
    HELP: ClassVar[str] = '"response-missing" in flags: the call carries that flag'

    def predicate(self) -> Predicate:
        flag = self.flag
        return lambda c: flag in c.flags

    def render(self) -> str:
        return f"{quote(self.flag)} in flags"


@dataclass(frozen=True, slots=True)
class Comparison(Node):
    """`field OP value`: subclasses are the operators, each with its symbol and help."""

    field: Field
    value: Any  # a Value, or a tuple of them for `in`
    SYMBOL: ClassVar[str] = ""
    NEGATIVE: ClassVar[bool] = False  # true when there is a value and the positive form fails

    def test(self) -> Test:
        """The positive test of one value (the field's values are checked by `predicate`)."""
        raise NotImplementedError

    def predicate(self) -> Predicate:
        f = self.field
        get = f.number_getter() if isinstance(f, IpField) and self.numeric_ip() else f.getter()
        t = self.test()
        if f.MULTI:
            if self.NEGATIVE:
                return lambda c: bool(vs := get(c)) and not any(map(t, vs))
            return lambda c: any(map(t, get(c)))
        if self.NEGATIVE:
            return lambda c: (v := get(c)) is not None and not t(v)
        return lambda c: (v := get(c)) is not None and t(v)

    def numeric_ip(self) -> bool:
        vals = self.value if isinstance(self.value, tuple) else (self.value,)
        return all(isinstance(v, Ip | Cidr) for v in vals)

    def render(self) -> str:
        return f"{self.field.name} {self.SYMBOL} {self.value.render()}"


def _typed(v: Value, t: Test, tf: Test | None = None) -> Test:
    """For info values (any JSON type): apply `t` only to values of the literal's type."""
    if isinstance(v, Str | Regex):
        return lambda x: type(x) is str and t(x)
    if isinstance(v, Bool):
        return lambda x: type(x) is bool and t(x)
    assert tf is not None
    return lambda x: (type(x) is int and t(x)) or (type(x) is float and tf(x))


def _literal(field: Field, v: Value) -> Any:
    if isinstance(v, Str):
        return v.value.encode() if isinstance(field, BodyField) else v.value
    if isinstance(v, Int | Bool):
        return v.value
    if isinstance(v, Duration | Time):
        return v.ns
    if isinstance(v, Ip):
        return v.value
    raise TypeError(v)


class _Compare(Comparison):
    OP: ClassVar[Callable[[Any, Any], bool]]

    def test(self) -> Test:
        op = type(self).OP
        lit = _literal(self.field, self.value)
        if isinstance(self.field, InfoField):
            fl = float(lit) if type(lit) is int else lit
            return _typed(self.value, lambda x: op(x, lit), lambda x: op(x, fl))
        return lambda x: op(x, lit)


class Eq(_Compare):
    SYMBOL = "=="
    OP = operator.eq
    HELP = "== equal"


class Ne(_Compare):
    SYMBOL = "!="
    OP = operator.eq
    NEGATIVE = True
    HELP = "!= not equal (needs a value: a call without the field matches neither == nor !=)"


class Lt(_Compare):
    SYMBOL = "<"
    OP = operator.lt
    HELP = "<  less than (numbers, durations, times; text by code point)"


class Le(_Compare):
    SYMBOL = "<="
    OP = operator.le
    HELP = "<= at most"


class Gt(_Compare):
    SYMBOL = ">"
    OP = operator.gt
    HELP = ">  greater than"


class Ge(_Compare):
    SYMBOL = ">="
    OP = operator.ge
    HELP = ">= at least"


class Matches(Comparison):
    SYMBOL = "~"
    HELP = (
        '~  regular-expression search: target ~ "^/api/v[12]/" (the subset Python and RE2 share; '
        "(?i) folds ASCII letters)"
    )

    def test(self) -> Test:
        search = re.compile(self.value.python, re.ASCII).search
        t: Test = lambda x: search(x) is not None  # noqa: E731
        return _typed(self.value, t) if isinstance(self.field, InfoField) else t


class Contains(Comparison):
    SYMBOL = "contains"
    HELP = "contains  substring (bytes for bodies)"

    def test(self) -> Test:
        lit = _literal(self.field, self.value)
        t: Test = lambda x: lit in x  # noqa: E731
        return _typed(self.value, t) if isinstance(self.field, InfoField) else t


class StartsWith(Comparison):
    SYMBOL = "startswith"
    HELP = "startswith  prefix"

    def test(self) -> Test:
        lit = _literal(self.field, self.value)
        t: Test = lambda x: x.startswith(lit)  # noqa: E731
        return _typed(self.value, t) if isinstance(self.field, InfoField) else t


class EndsWith(Comparison):
    SYMBOL = "endswith"
    HELP = "endswith  suffix"

    def test(self) -> Test:
        lit = _literal(self.field, self.value)
        t: Test = lambda x: x.endswith(lit)  # noqa: E731
        return _typed(self.value, t) if isinstance(self.field, InfoField) else t


class In(Comparison):
    SYMBOL = "in"
    HELP = 'in  one of a list: method in ("POST", "PUT"); an IP in a CIDR: src.ip in 10.0.0.0/8'

    def test(self) -> Test:
        tests = [self._one(v) for v in self.value]
        if len(tests) == 1:
            return tests[0]
        return lambda x: any(t(x) for t in tests)

    def _one(self, v: Value) -> Test:
        if isinstance(v, Cidr | Ip):
            lo, hi = v.lo, v.hi
            return lambda x: lo <= x <= hi
        lit = _literal(self.field, v)
        if isinstance(self.field, InfoField):
            fl = float(lit) if type(lit) is int else lit
            return _typed(v, lambda x: x == lit, lambda x: x == fl)
        return lambda x: x == lit

    def render(self) -> str:
        vals = self.value
        if len(vals) == 1 and isinstance(vals[0], Cidr):
            return f"{self.field.name} {self.SYMBOL} {vals[0].render()}"
        return f"{self.field.name} {self.SYMBOL} ({', '.join(v.render() for v in vals)})"


class NotIn(In):
    SYMBOL = "not in"
    NEGATIVE = True
    HELP = "not in  none of a list (needs a value, like !=)"


OPERATORS: dict[str, type[Comparison]] = {
    c.SYMBOL: c for c in (Eq, Ne, Lt, Le, Gt, Ge, Matches, Contains, StartsWith, EndsWith, In, NotIn)
}


class Filter:
    """A parsed filter: `matches(call)` is the compiled predicate; `str()` the canonical text."""

    __slots__ = ("matches", "now_ns", "root", "text")

    def __init__(self, root: Node, text: str = "", now_ns: int = 0) -> None:
        self.root = root
        self.text = text
        self.now_ns = now_ns
        self.matches: Predicate = root.predicate()

    def __str__(self) -> str:
        return self.root.render()

    def __repr__(self) -> str:
        return f"Filter({self.root.render()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Filter) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)


# ---------------------------------------------------------------------------------------------
# tokenizer

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_INDEX = re.compile(r"0|[1-9][0-9]*")
_WORD = re.compile(r"[A-Za-z0-9_.:/+\-]+")
_SYMBOLS = ("==", "!=", "<=", ">=", "<", ">", "~", "(", ")", "[", "]", ",")
_HINTS = {
    "=": 'use "==" to compare',
    "&": 'use "and"',
    "|": 'use "or"',
    "!": 'use "not" (or "!=")',
}
KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "startswith", "endswith", "true", "false"})


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "word", "string", "sym", "end"
    text: str  # the word, the decoded string, or the symbol
    pos: int
    end: int

    def show(self) -> str:
        if self.kind == "end":
            return "the end"
        if self.kind == "string":
            return f"the string {quote(self.text)}"
        return f'"{self.text}"'


_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            out.append(Token("end", "", n, n))
            return out
        ch = text[i]
        if ch in "\"'":
            s, j = _string(text, i)
            out.append(Token("string", s, i, j))
            i = j
            continue
        m = _WORD.match(text, i)
        if m:
            out.append(Token("word", m.group(), i, m.end()))
            i = m.end()
            continue
        for sym in _SYMBOLS:
            if text.startswith(sym, i):
                out.append(Token("sym", sym, i, i + len(sym)))
                i += len(sym)
                break
        else:
            hint = _HINTS.get(ch)
            shown = ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"U+{ord(ch):04X}"
            msg = f'unexpected "{shown}"' + (f" ({hint})" if hint else "")
            raise FilterError(msg, i, "a field, an operator or a value")


def _string(text: str, start: int) -> tuple[str, int]:
    """A quoted string from `start`; returns (value, end). Unknown escapes keep their backslash,
    so regular expressions need no doubling: "\\d+" is the pattern \\d+."""
    q = text[start]
    buf: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        ch = text[i]
        if ch == q:
            return "".join(buf), i + 1
        if ch == "\\" and i + 1 < n:
            e = text[i + 1]
            if e in _ESCAPES:
                buf.append(_ESCAPES[e])
                i += 2
                continue
            width = {"x": 2, "u": 4, "U": 8}.get(e)
            if width:
                digits = text[i + 2 : i + 2 + width]
                if len(digits) == width and all(c in "0123456789abcdefABCDEF" for c in digits):
                    cp = int(digits, 16)
                    if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                        raise FilterError(f"\\{e}{digits} is not a character", i, "a character")
                    buf.append(chr(cp))
                    i += 2 + width
                    continue
            buf.append("\\")  # unknown escape: kept for the regular expression
            i += 1
            continue
        buf.append(ch)
        i += 1
    raise FilterError(f"unterminated string (expected a closing {q})", start, q)


def quote(s: str) -> str:
    """A string literal that `tokenize` reads back as `s`."""
    out = ['"']
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable() or 0xD800 <= ord(ch) <= 0xDFFF:
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# literals: durations, times, addresses

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)")
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2}))?"
)


def parse_duration(s: str) -> int | None:
    """`250ms`, `2s`, `1.5h`, `1h30m` -> ns, or None when `s` is not a duration."""
    if not _DURATION.fullmatch(s):
        return None
    total = Fraction(0)
    for num, unit in _DURATION_PART.findall(s):
        total += Fraction(num) * _UNITS[unit]
    return int(total)


def render_duration(ns: int) -> str:
    for unit in ("d", "h", "m", "s", "ms", "us"):
        if ns and ns % _UNITS[unit] == 0:
            return f"{ns // _UNITS[unit]}{unit}"
    return f"{ns}ns"


def parse_time(s: str) -> int | None:
    """RFC 3339 (or a bare date, midnight UTC) -> ns since the epoch, or None."""
    m = _TIME.fullmatch(s)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    fields = (int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0))
    try:
        datetime.datetime(*fields[:5], min(fields[5], 59))  # validates the calendar (60 is a leap second)
    except ValueError:
        return None
    secs = calendar.timegm((*fields, 0, 0, 0))
    if tz and tz not in "Zz":
        off = int(tz[1:3]) * 3600 + int(tz[4:6]) * 60
        secs -= off if tz[0] == "+" else -off
    ns = secs * 1_000_000_000
    if frac:
        ns += int(frac[1:].ljust(9, "0"))
    return ns


def render_time(ns: int) -> str:
    """RFC 3339 in UTC with nanoseconds when any; epoch ns outside years 1..9999."""
    secs, frac = divmod(ns, 1_000_000_000)
    try:
        t = time.gmtime(secs)
    except (OverflowError, OSError, ValueError):
        return str(ns)
    if not 1 <= t.tm_year <= 9999:
        return str(ns)
    base = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f"{base}.{frac:09d}Z" if frac else f"{base}Z"


@lru_cache(maxsize=65536)
def ip_to_int(text: str) -> int | None:
    """An address as a number in IPv6 space (IPv4 as ::ffff:a.b.c.d); None when not an address.
    hub/schema.py stores the same number, so == and CIDR agree between the predicate and SQL."""
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return None
    if a.version == 4:
        return 0xFFFF_0000_0000 | int(a)
    return int(a)


def parse_network(text: str) -> Cidr | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    lo, hi = int(net.network_address), int(net.broadcast_address)
    if net.version == 4:
        lo |= 0xFFFF_0000_0000
        hi |= 0xFFFF_0000_0000
    return Cidr(lo, hi, str(net))


# ---------------------------------------------------------------------------------------------
# regular expressions: the subset both engines read alike, re-emitted for each

_MAXCP = 0x10FFFF
_DIGIT = ((0x30, 0x39),)
_WORDC = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
_SPACE = ((0x09, 0x0D), (0x20, 0x20))  # \t \n \v \f \r and space
_CLASS_ESC = {"d": (_DIGIT, False), "D": (_DIGIT, True), "w": (_WORDC, False), "W": (_WORDC, True)}
_CLASS_ESC |= {"s": (_SPACE, False), "S": (_SPACE, True)}
_CHAR_ESC = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_REFUSED = {
    "lookaround": "lookahead and lookbehind are not supported (RE2 lacks them)",
    "backref": "backreferences are not supported (RE2 lacks them)",
    "atomic": "atomic groups are not supported (RE2 lacks them)",
    "possessive": "possessive quantifiers are not supported (RE2 lacks them)",
}


class _RegexError(Exception):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


Ranges = list[tuple[int, int]]


def _norm(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    nxt = 0
    for lo, hi in _norm(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAXCP:
        out.append((nxt, _MAXCP))
    return out


def _fold(ranges: Ranges) -> Ranges:
    """Add the other case of every ASCII letter in `ranges` (the (?i) of this language)."""
    extra = []
    for lo, hi in ranges:
        for a, b, delta in ((0x61, 0x7A, -32), (0x41, 0x5A, 32)):
            s, e = max(lo, a), min(hi, b)
            if s <= e:
                extra.append((s + delta, e + delta))
    return _norm([*ranges, *extra])


def _py_char(cp: int) -> str:
    c = chr(cp)
    if c.isascii() and c.isalnum():
        return c
    if c in _PUNCT:
        return "\\" + c
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def _re2_char(cp: int) -> str:
    c = chr(cp)
    if c.isascii() and c.isalnum():
        return c
    if c in _PUNCT:
        return "\\" + c
    return f"\\x{{{cp:x}}}"


def _emit_class(ranges: Ranges, negated: bool) -> tuple[str, str]:
    # surrogates never occur in stored text (it is UTF-8); RE2 refuses them as class ends
    clipped: Ranges = []
    for lo, hi in _norm(ranges):
        if lo <= 0xDFFF and hi >= 0xD800:
            if lo < 0xD800:
                clipped.append((lo, 0xD7FF))
            if hi > 0xDFFF:
                clipped.append((0xE000, hi))
        else:
            clipped.append((lo, hi))
    if not clipped:  # an empty set: match nothing (or, negated, anything)
        clipped, negated = [(0, _MAXCP)], not negated
    parts = []
    for enc in (_py_char, _re2_char):
        body = "".join(enc(lo) if lo == hi else f"{enc(lo)}-{enc(hi)}" for lo, hi in clipped)
        parts.append(f"[{'^' if negated else ''}{body}]")
    return parts[0], parts[1]


class _RegexParser:
    """Recursive descent over a pattern. Each piece comes back as (python, re2, repeatable, product),
    where product is the largest product of nested {n,m} counts inside it (RE2 refuses > 1000)."""

    def __init__(self, src: str) -> None:
        self.s = src
        self.i = 0
        self.flags = {"i": False, "s": False}

    def err(self, msg: str, at: int | None = None) -> _RegexError:
        return _RegexError(msg, self.i if at is None else at)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def parse(self) -> tuple[str, str]:
        while m := _FLAGS_AT_START.match(self.s, self.i):
            self._set_flags(m.group(1), self.i)
            self.i = m.end()
        py, r2, _, _ = self.alt()
        if self.i < len(self.s):
            raise self.err('unbalanced ")"')
        return py, r2

    def _set_flags(self, letters: str, at: int) -> None:
        for ch in letters:
            if ch not in self.flags:
                raise self.err(f'flag "{ch}" is not supported (only i and s are)', at)
            self.flags[ch] = True

    def alt(self) -> Piece:
        first = self.seq()
        if self.peek() != "|":
            return first
        pys, r2s, prod = [first[0]], [first[1]], first[3]
        while self.peek() == "|":
            self.i += 1
            py, r2, _, p = self.seq()
            pys.append(py)
            r2s.append(r2)
            prod = max(prod, p)
        return "|".join(pys), "|".join(r2s), True, prod

    def seq(self) -> Piece:
        pys: list[str] = []
        r2s: list[str] = []
        prod = 1
        repeatable = False
        while self.i < len(self.s) and self.peek() not in "|)":
            py, r2, repeatable, p = self.item()
            pys.append(py)
            r2s.append(r2)
            prod = max(prod, p)
        return "".join(pys), "".join(r2s), repeatable and len(pys) == 1, prod

    def item(self) -> Piece:
        start = self.i
        py, r2, repeatable, prod = self.atom()
        while (q := self.quantifier()) is not None:
            text, count = q
            if not repeatable:
                raise self.err("nothing to repeat", start)
            if self.peek() == "+":
                raise self.err(_REFUSED["possessive"])
            if self.peek() == "?":
                text += "?"
                self.i += 1
            if self.peek() in ("*", "+", "?") or self._at_quantifier():
                raise self.err("a quantifier cannot follow a quantifier (use a group)")
            prod *= count
            if prod > 1000:
                raise self.err("nested repetition counts multiply past 1000 (RE2's limit)", start)
            py, r2 = f"(?:{py}){text}", f"(?:{r2}){text}"
            repeatable = False
        return py, r2, True, prod

    def _at_quantifier(self) -> bool:
        m = _COUNTED.match(self.s, self.i)
        return m is not None and bool(m.group(1) or m.group(3))

    def quantifier(self) -> tuple[str, int] | None:
        ch = self.peek()
        if ch in ("*", "+", "?"):
            self.i += 1
            return ch, 1
        if ch != "{" or not self._at_quantifier():
            return None  # a brace that is no quantifier is a literal, as in Python
        m = _COUNTED.match(self.s, self.i)
        assert m is not None
        lo_s, comma, hi_s = m.groups()
        lo = int(lo_s or "0")
        hi = (int(hi_s) if hi_s else None) if comma else lo
        if lo > 1000 or (hi is not None and hi > 1000):
            raise self.err("a repetition count is at most 1000 (RE2's limit)")
        if hi is not None and hi < lo:
            raise self.err(f"bad repetition {{{lo},{hi}}}: the maximum is below the minimum")
        self.i = m.end()
        text = f"{{{lo}}}" if hi == lo else f"{{{lo},}}" if hi is None else f"{{{lo},{hi}}}"
        return text, max(hi if hi is not None else lo, 1)

    def atom(self) -> Piece:
        ch = self.peek()
        if ch == "(":
            return self.group()
        if ch == "[":
            return (*self.char_class(), True, 1)
        if ch == ".":
            self.i += 1
            if self.flags["s"]:
                return (*_emit_class([(0, _MAXCP)], False), True, 1)
            return (*_emit_class([(0x0A, 0x0A)], True), True, 1)
        if ch == "^":
            self.i += 1
            return "\\A", "\\A", False, 1
        if ch == "$":
            self.i += 1
            return "\\Z", "\\z", False, 1
        if ch in ("*", "+", "?") or self._at_quantifier():
            raise self.err("nothing to repeat")
        if ch == "\\":
            return self.escape()
        self.i += 1
        cp = ord(ch)
        if 0xD800 <= cp <= 0xDFFF:
            raise self.err("surrogate code points are not characters")
        return (*self.literal(cp), True, 1)

    def literal(self, cp: int) -> tuple[str, str]:
        if self.flags["i"] and chr(cp).isascii() and chr(cp).isalpha():
            return _emit_class(_fold([(cp, cp)]), False)
        return _py_char(cp), _re2_char(cp)

    def group(self) -> Piece:
        start = self.i
        self.i += 1
        saved = dict(self.flags)
        if self.peek() == "?":
            rest = self.s[self.i + 1 : self.i + 40]
            if rest.startswith(("=", "!", "<=", "<!")):
                raise self.err(_REFUSED["lookaround"], start)
            if rest.startswith(">"):
                raise self.err(_REFUSED["atomic"], start)
            if rest.startswith("P="):
                raise self.err(_REFUSED["backref"], start)
            if rest.startswith(":"):
                self.i += 2
            elif m := _NAMED_GROUP.match(rest):
                self.i += 1 + m.end()
            elif m := _FLAG_GROUP.match(rest):
                self._set_flags(m.group(1), start)
                self.i += 1 + m.end()
            elif _FLAGS_AT_START.match("(?" + rest):
                raise self.err("flags like (?i) go at the start of the pattern (or use (?i:...))", start)
            else:
                raise self.err("this group is not supported (use (...), (?:...) or (?P<name>...))", start)
        py, r2, _, prod = self.alt()
        self.flags = saved
        if self.peek() != ")":
            raise self.err('missing ")"', start)
        self.i += 1
        return f"(?:{py})", f"(?:{r2})", True, prod

    def escape(self) -> Piece:
        at = self.i
        e = self.peek(1)
        if not e:
            raise self.err("a pattern cannot end with a backslash")
        self.i += 2
        if e in _CLASS_ESC:
            rng, neg = _CLASS_ESC[e]
            return (*_emit_class(list(rng), neg), True, 1)
        if e == "b":
            return "\\b", "\\b", False, 1
        if e == "B":
            raise self.err("\\B is not supported (Python and RE2 disagree on empty text)", at)
        if e == "A":
            return "\\A", "\\A", False, 1
        if e in "zZ":
            return "\\Z", "\\z", False, 1
        return (*self.literal(self._char_escape(e, at)), True, 1)

    def _char_escape(self, e: str, at: int) -> int:
        """A backslash escape that stands for one character (the two characters are read)."""
        if e in _CHAR_ESC:
            return ord(_CHAR_ESC[e])
        if e.isdigit():
            raise self.err(_REFUSED["backref"] if e != "0" else "octal escapes are not supported", at)
        if e in "xuU":
            if e == "x" and self.peek() == "{":
                m = _BRACED_HEX.match(self.s, self.i)
                digits = m.group(1) if m else None
                end = m.end() if m else self.i
            else:
                width = {"x": 2, "u": 4, "U": 8}[e]
                digits = self.s[self.i : self.i + width]
                if len(digits) != width or not all(c in _HEX for c in digits):
                    digits = None
                end = self.i + width
            if digits is None:
                raise self.err(f"bad \\{e} escape", at)
            cp = int(digits, 16)
            if cp > _MAXCP or 0xD800 <= cp <= 0xDFFF:
                raise self.err(f"\\{e} escape is not a character", at)
            self.i = end
            return cp
        if e in "pP":
            raise self.err("Unicode classes (\\p{...}) are not supported (Python lacks them)", at)
        if e in "gk":
            raise self.err(_REFUSED["backref"], at)
        if e in _PUNCT or e == " ":
            return ord(e)
        raise self.err(f"\\{e} is not supported in both Python and RE2", at)

    def char_class(self) -> tuple[str, str]:
        start = self.i
        self.i += 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        ranges: Ranges = []
        first = True
        while True:
            ch = self.peek()
            if not ch:
                raise self.err('missing "]" to close the class', start)
            if ch == "]" and not first:
                self.i += 1
                break
            first = False
            if ch == "[":
                raise self.err('write "\\[" for a bracket inside a class (POSIX classes are not supported)')
            lo = self.class_char(ranges)
            if lo is None:
                continue
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                dash = self.i
                self.i += 1
                if self.peek() == "[":
                    raise self.err('write "\\[" for a bracket inside a class')
                hi = self.class_char(ranges)
                if hi is None:
                    raise self.err("a range cannot end in a class escape", dash)
                if hi < lo:
                    raise self.err("bad range in class: the end is below the start", dash)
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        if self.flags["i"]:
            ranges = _fold(ranges)
        return _emit_class(ranges, negated)

    def class_char(self, ranges: Ranges) -> int | None:
        """One member of a class: its code point, or None when an escape added a set."""
        ch = self.peek()
        if ch != "\\":
            self.i += 1
            cp = ord(ch)
            if 0xD800 <= cp <= 0xDFFF:
                raise self.err("surrogate code points are not characters")
            return cp
        at = self.i
        e = self.peek(1)
        if not e:
            raise self.err("a pattern cannot end with a backslash")
        self.i += 2
        if e in _CLASS_ESC:
            rng, neg = _CLASS_ESC[e]
            ranges.extend(_complement(list(rng)) if neg else rng)
            return None
        if e == "b":
            raise self.err("\\b inside a class is backspace in Python only; write \\x08", at)
        return self._char_escape(e, at)


Piece = tuple[str, str, bool, int]
_HEX = frozenset("0123456789abcdefABCDEF")
_COUNTED = re.compile(r"\{(\d*)(,)?(\d*)\}")
_BRACED_HEX = re.compile(r"\{([0-9a-fA-F]{1,6})\}")
_FLAGS_AT_START = re.compile(r"\(\?([a-zA-Z]+)\)")
_FLAG_GROUP = re.compile(r"([a-zA-Z]+):")
_NAMED_GROUP = re.compile(r"P<[A-Za-z_][A-Za-z0-9_]*>")


def compile_regex(src: str) -> Regex:
    """Check a pattern against the shared subset and emit it for both engines.
    Raises _RegexError (with an offset into the pattern) for anything outside the subset."""
    py, r2 = _RegexParser(src).parse()
    return Regex(src, py, r2)


# ---------------------------------------------------------------------------------------------
# the parser


class _Parser:
    def __init__(self, text: str, now_ns: int) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.k = 0
        self.now_ns = now_ns
        self.depth = 0

    # -- helpers

    @property
    def tok(self) -> Token:
        return self.toks[self.k]

    def next(self) -> Token:
        t = self.toks[self.k]
        if t.kind != "end":
            self.k += 1
        return t

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == "word" and self.tok.text in words

    def is_sym(self, sym: str) -> bool:
        return self.tok.kind == "sym" and self.tok.text == sym

    def fail(self, expected: str, after: Token | None = None, extra: str = "") -> FilterError:
        t = self.tok
        where = f" after {after.show()}" if after is not None else ""
        got = "" if t.kind == "end" else f", found {t.show()}"
        msg = (
            f"expected {expected}{where}{got}" if not extra else f"expected {expected}{where} ({extra}){got}"
        )
        return FilterError(msg, t.pos, expected)

    # -- grammar

    def parse(self) -> Node:
        if self.tok.kind == "end":
            return All()
        node = self.or_()
        if self.tok.kind != "end":
            if self.is_sym(")"):
                raise FilterError('unbalanced ")"', self.tok.pos, "and, or or the end")
            raise self.fail('"and", "or" or the end', self.toks[self.k - 1])
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while self.is_word("or"):
            self._term_follows(self.next())
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(_flat(Or, items))

    def and_(self) -> Node:
        items = [self.not_()]
        while self.is_word("and"):
            self._term_follows(self.next())
            items.append(self.not_())
        return items[0] if len(items) == 1 else And(_flat(And, items))

    def _term_follows(self, op: Token) -> None:
        if self.tok.kind == "end" or self.is_sym(")"):
            raise self.fail("a filter term", op)

    def not_(self) -> Node:
        if self.is_word("not"):
            op = self.next()
            self._enter(op)
            self._term_follows(op)
            node = Not(self.not_())
            self.depth -= 1
            return node
        return self.atom()

    def _enter(self, t: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"nested more than {MAX_DEPTH} deep", t.pos, "a simpler filter")

    def atom(self) -> Node:
        t = self.tok
        if self.is_sym("("):
            self.next()
            self._enter(t)
            if self.is_sym(")"):
                raise self.fail("a filter term", t)
            node = self.or_()
            if not self.is_sym(")"):
                raise self.fail('")"', self.toks[self.k - 1], f'to close the "(" at {t.pos}')
            self.next()
            self.depth -= 1
            return node
        if t.kind == "string":
            return self.flag_test()
        if t.kind == "word" and t.text not in KEYWORDS:
            return self.comparison()
        raise self.fail('a filter term (a field, a protocol name, "not" or "(")')

    def flag_test(self) -> Node:
        s = self.next()
        negated = False
        if self.is_word("not"):
            self.next()
            negated = True
        if not self.is_word("in"):
            raise self.fail('"in flags"', s, 'a string starts a term only in: "gap" in flags')
        op = self.next()
        if not self.is_word("flags"):
            raise self.fail('"flags"', op)
        self.next()
        if s.text not in Flag.ALL:
            close = difflib.get_close_matches(s.text, Flag.ALL, n=1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            raise FilterError(
                f"unknown flag {quote(s.text)} ({hint}flags are {', '.join(Flag.ALL)})", s.pos, "a flag name"
            )
        node: Node = HasFlag(s.text)
        return Not(node) if negated else node

    def field(self) -> Field:
        t = self.next()
        name = t.text
        if name in _SIMPLE:
            return _SIMPLE[name](name)
        if name in ("src.labels", "dst.labels", "request.headers", "response.headers"):
            key, kt = self.bracket_key(t)
            if name.endswith("labels"):
                return LabelField(name.split(".")[0], key)
            if not key or not key.isascii() or not key.isprintable() or " " in key:
                raise FilterError("a header name is printable ASCII without spaces", kt.pos, "a header name")
            return HeaderField(name.split(".")[0], key)
        if name == "info" or name.startswith("info."):
            path = name.split(".")[1:]
            if any(not seg for seg in path):
                raise FilterError('empty key in "info." path', t.pos, "a key")
            while self.is_sym("["):
                path.append(self.bracket_key(t)[0])
            if not path:
                raise FilterError('expected a key after "info" (info.KEY or info["KEY"])', t.end, "a key")
            return InfoField(path)
        if name == "flags":
            raise FilterError('flags is tested with "name" in flags', t.pos, "a string before in flags")
        close = difflib.get_close_matches(name, [*FIELD_NAMES, *PROTOCOLS], n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise FilterError(f'unknown field "{name}"{hint}', t.pos, "a field or a protocol name")

    def bracket_key(self, after: Token) -> tuple[str, Token]:
        if not self.is_sym("["):
            raise self.fail('"[" and a key', after)
        b = self.next()
        kt = self.tok
        if kt.kind not in ("string", "word"):
            raise self.fail("a key (a quoted string)", b)
        self.next()
        if not self.is_sym("]"):
            raise self.fail('"]"', kt)
        self.next()
        return kt.text, kt

    def comparison(self) -> Node:
        t = self.tok
        if t.text in PROTOCOLS and t.text != "tls":
            self.next()
            if self._op_follows():
                raise FilterError(
                    f"{t.text} is a protocol name, true for {t.text} calls; "
                    f'to compare, use the field: protocol == "{t.text}"',
                    self.tok.pos,
                    '"and", "or" or the end',
                )
            return IsProtocol(t.text)
        field = self.field()
        if not self._op_follows():
            if isinstance(field, BoolField):
                return Eq(field, Bool(True))
            raise self.fail("an operator" + _ops_hint(field), self.toks[self.k - 1])
        op_tok = self.next()
        symbol = op_tok.text
        if symbol == "not":
            if not self.is_word("in"):
                raise self.fail('"in"', op_tok, '"not" after a field starts "not in"')
            self.next()
            symbol = "not in"
        if isinstance(field, FlagsField) or symbol not in field.OPS:
            raise FilterError(
                f'"{symbol}" does not apply to {field.name}' + _ops_hint(field), op_tok.pos, "an operator"
            )
        cls = OPERATORS[symbol]
        if cls is In or cls is NotIn:
            return cls(field, self.in_values(field, op_tok))
        return cls(field, self.value(field, op_tok, cls))

    def _op_follows(self) -> bool:
        t = self.tok
        if t.kind == "sym":
            return t.text in ("==", "!=", "<", "<=", ">", ">=", "~")
        return (
            t.kind == "word"
            and t.text in ("contains", "startswith", "endswith", "in", "not")
            and (t.text != "not" or self.toks[self.k + 1].text == "in")
        )

    def in_values(self, field: Field, op: Token) -> tuple[Value, ...]:
        if isinstance(field, IpField) and not self.is_sym("("):
            return (self.ip_value(field, op, cidr=True),)
        if not self.is_sym("("):
            hint = f'like ("a", "b"); {field.name} takes {field.EXPECTED}'
            raise self.fail('"(" and a list of values', op, hint)
        lp = self.next()
        vals: list[Value] = []
        prev = lp
        while True:
            if self.is_sym(")") and vals:
                self.next()
                return tuple(vals)
            if isinstance(field, IpField):
                vals.append(self.ip_value(field, prev, cidr=True))
            else:
                vals.append(self.value(field, prev, Eq))
            if self.is_sym(","):
                prev = self.next()
                continue
            if not self.is_sym(")"):
                raise self.fail('"," or ")"', self.toks[self.k - 1])

    def ip_value(self, field: Field, after: Token, cidr: bool) -> Value:
        t = self.tok
        if t.kind not in ("word", "string") or (t.kind == "word" and t.text in KEYWORDS):
            raise self.fail("an IP address" + (" or a CIDR" if cidr else ""), after)
        self.next()
        if "/" in t.text:
            net = parse_network(t.text) if cidr else None
            if net is None:
                raise FilterError(f"{quote(t.text)} is not a CIDR", t.pos, "a CIDR like 10.0.0.0/8")
            return net
        n = ip_to_int(t.text)
        if n is None:
            raise FilterError(f"{quote(t.text)} is not an IP address", t.pos, "an IP address")
        return Ip(n, str(ipaddress.ip_address(t.text)))

    def value(self, field: Field, after: Token, cls: type[Comparison]) -> Value:
        t = self.tok
        expected = field.EXPECTED
        if (
            t.kind == "end"
            or (t.kind == "sym" and t.text != "(")
            or (t.kind == "word" and t.text in ("and", "or"))
        ):
            raise FilterError(f"expected a value after {after.show()} ({expected})", t.pos, "a value")
        if isinstance(field, IpField) and cls is not Matches and cls not in (Contains, StartsWith, EndsWith):
            return self.ip_value(field, after, cidr=False)
        if cls is Matches or cls in (Contains, StartsWith, EndsWith):
            if t.kind != "string":
                raise FilterError(f'expected a quoted string after "{cls.SYMBOL}"', t.pos, "a quoted string")
            self.next()
            if cls is not Matches:
                return Str(t.text)
            try:
                return compile_regex(t.text)
            except _RegexError as e:
                raw = self.text[t.pos + 1 : t.end - 1]
                at = t.pos + 1 + e.offset if raw == t.text else t.pos  # exact when nothing was escaped
                raise FilterError(f"in the regular expression: {e}", at, "a pattern") from None
        self.next()
        if isinstance(field, TextField | LabelField | HeaderField | BodyField):
            if t.kind == "string":
                return Str(t.text)
        elif isinstance(field, IntField):
            if t.kind == "word" and re.fullmatch(r"-?\d+", t.text):
                return Int(self._int(t))
        elif isinstance(field, DurationField):
            if t.kind == "word" and (ns := parse_duration(t.text)) is not None:
                return Duration(ns)
        elif isinstance(field, TimeField):
            return self._time(t)
        elif isinstance(field, BoolField):
            if t.kind == "word" and t.text in ("true", "false"):
                return Bool(t.text == "true")
        elif isinstance(field, InfoField):
            if t.kind == "string":
                return Str(t.text)
            if t.kind == "word" and t.text in ("true", "false"):
                if cls not in (Eq, Ne):
                    raise FilterError(f'"{cls.SYMBOL}" does not order booleans', t.pos, "a string or integer")
                return Bool(t.text == "true")
            if t.kind == "word" and re.fullmatch(r"-?\d+", t.text):
                return Int(self._int(t))
        raise FilterError(f"expected {expected} after {after.show()}, found {t.show()}", t.pos, expected)

    def _int(self, t: Token) -> int:
        n = int(t.text)
        if not -MAX_INT - 1 <= n <= MAX_INT:
            raise FilterError(f"integer {t.text} is out of range (64-bit)", t.pos, "an integer")
        return n

    def _time(self, t: Token) -> Time:
        s = t.text
        if t.kind == "word" and s.startswith("-") and (ns := parse_duration(s[1:])) is not None:
            return Time(self.now_ns - ns)
        if t.kind == "word" and re.fullmatch(r"-?\d+", s):
            return Time(self._int(t))  # ns since the epoch
        ns2 = parse_time(s)
        if ns2 is None:
            raise FilterError(f"expected {TimeField.EXPECTED}, found {t.show()}", t.pos, "a time")
        return Time(ns2)


def _flat(kind: type[Or] | type[And], items: list[Node]) -> tuple[Node, ...]:
    """(a or b) or c is a or b or c: one n-ary node, so the canonical text reads back the same."""
    out: list[Node] = []
    for i in items:
        out.extend(i.items if isinstance(i, kind) else (i,))
    return tuple(out)


def _ops_hint(field: Field) -> str:
    ops = [o for o in OPERATORS if o in field.OPS]
    return f" ({field.name} takes {', '.join(ops)})" if ops else ""


def parse(text: str, now_ns: int | None = None) -> Filter:
    """Parse filter text once. Raises FilterError naming the position and what was expected.
    Relative times (`-15m`) resolve against `now_ns` (default: now)."""
    if len(text) > MAX_LENGTH:
        raise FilterError(f"filter longer than {MAX_LENGTH} characters", MAX_LENGTH, "a shorter filter")
    now = time.time_ns() if now_ns is None else now_ns
    root = _Parser(text, now).parse()
    return Filter(root, text, now)


def _help() -> str:
    lines = [
        "Filter language (one for live, history, replay and export):",
        "",
        "  http and status >= 500",
        '  dst.namespace == "shop" and latency > 200ms',
        '  method in ("POST", "PUT") and request.headers["content-type"] contains "json"',
        "  src.ip in 10.0.0.0/8 and request_ts > -15m",
        '  response.body contains "error" or "response-missing" in flags',
        "",
        "Fields:",
    ]
    lines += [f"  {k.HELP}" for k in FIELD_KINDS]
    lines += ["", "Operators:"]
    lines += [f"  {c.HELP}" for c in OPERATORS.values()]
    lines += ["", "Terms and logic:"]
    lines += [f"  {c.HELP}" for c in (IsProtocol, HasFlag, Not, And, Or)]
    lines += [
        "  ( ... ) groups",
        "",
        'Literals: "strings" or \'strings\' (\\" \\\\ \\n \\t \\xHH \\uHHHH; other backslashes are kept, so',
        '  "\\d+" is the pattern \\d+), integers, true/false, durations (250ms, 2s, 5m, 1h, 1m30s),',
        "  times (RFC 3339 like 2025-11-21T04:40:00Z, or relative like -15m), IPs and CIDRs unquoted.",
        "A comparison with no value (no response, no such header) is false, and not of it true.",
    ]
    return "\n".join(lines)


HELP = _help()

# Calls that failed: HTTP 5xx, and for every other protocol a non-zero status, where 0 is success
# (gRPC, DNS rcode, Kafka error code). The same definition as the `5xx` and `error` classes of
# `dissect.model.status_class`; the TUI's "errors only" and the hub's error rates use it.
ERRORS = "((http or http2) and status >= 500 and status <= 599) or (not (http or http2) and status != 0)"
