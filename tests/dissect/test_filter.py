"""The filter language: parser, errors with positions, the predicate on hand-built calls."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dissect import filter as flt
from dissect.filter import HELP, Filter, FilterError, compile_regex, parse
from dissect.model import Call, Endpoint, Flag, Message

NOW = 1_763_700_000_000_000_000  # 2025-11-21T04:40:00Z
MS = 1_000_000


def call(**kw: object) -> Call:
    base: dict[str, object] = {
        "id": "node-a/1",
        "protocol": "http",
        "src": Endpoint(
            ip="10.1.0.7",
            port=51234,
            pod="web-5d9c7-abcde",
            namespace="shop",
            workload="Deployment/web",
            node="node-a",
            process="node",
            pid=812,
            labels={"app": "frontend"},
        ),
        "dst": Endpoint(ip="10.96.0.12", port=8080, namespace="shop", service="api", labels={"app": "api"}),
        "request_ts": NOW - 60_000 * MS,
        "response_ts": NOW - 60_000 * MS + 45 * MS,
        "method": "POST",
        "target": "/v1/orders?x=1",
        "status": 201,
        "request": Message(
            headers=[("Host", "api"), ("Content-Type", "application/json")], body=b'{"item": 1}', body_size=11
        ),
        "response": Message(
            headers=[("Content-Type", "application/json")], body=b'{"ok": true}', body_size=12
        ),
    }
    base.update(kw)
    return Call(**base).finish()  # type: ignore[arg-type]


def m(text: str, c: Call) -> bool:
    return parse(text, now_ns=NOW).matches(c)


# ---------------------------------------------------------------------------------------------
# the design's examples parse and mean what they say


def test_design_examples() -> None:
    web = call()
    assert not m("http and status >= 500", web)
    assert m("http and status >= 500", call(status=503))
    assert not m("http and status >= 500", call(protocol="http2", status=503))

    grpc = call(protocol="grpc", target="/shop.Checkout/Pay", status=2)
    assert m('grpc and target ~ "Checkout" and status != 0', grpc)
    assert not m(
        'grpc and target ~ "Checkout" and status != 0',
        call(protocol="grpc", target="/x.Checkout/P", status=0),
    )
    # no grpc-status: != 0 needs a value
    assert not m(
        'grpc and target ~ "Checkout" and status != 0',
        call(protocol="grpc", target="/a.Checkout/B", status=None),
    )

    assert not m('dst.namespace == "shop" and latency > 200ms', web)
    assert m('dst.namespace == "shop" and latency > 200ms', call(response_ts=NOW))

    assert m('method in ("POST", "PUT") and request.headers["content-type"] contains "json"', web)
    assert not m(
        'method in ("POST", "PUT") and request.headers["content-type"] contains "json"', call(method="GET")
    )

    assert m('src.workload == "Deployment/web" and not dns', web)
    assert not m('src.workload == "Deployment/web" and not dns', call(protocol="dns"))

    assert m("src.ip in 10.0.0.0/8 and request_ts > -15m", call(request_ts=NOW - 5 * 60_000 * MS))
    assert not m("src.ip in 10.0.0.0/8 and request_ts > -15m", call(request_ts=NOW - 20 * 60_000 * MS))
    assert not m("src.ip in 10.0.0.0/8 and request_ts > -15m", call(src=Endpoint(ip="192.168.1.1")))

    assert m(
        'response.body contains "error" or "response-missing" in flags',
        call(response=None, flags=["response-missing"]),
    )
    assert m(
        'response.body contains "error" or "response-missing" in flags',
        call(response=Message(body=b'{"error":1}')),
    )
    assert not m('response.body contains "error" or "response-missing" in flags', web)

    assert m('src.labels["app"] == "frontend"', web)
    assert not m('dst.labels["app"] == "frontend"', web)


DESIGN_EXAMPLES = [
    "http and status >= 500",
    'grpc and target ~ "Checkout" and status != 0',
    'dst.namespace == "shop" and latency > 200ms',
    'method in ("POST", "PUT") and request.headers["content-type"] contains "json"',
    'src.workload == "Deployment/web" and not dns',
    "src.ip in 10.0.0.0/8 and request_ts > -15m",
    'response.body contains "error" or "response-missing" in flags',
    'src.labels["app"] == "frontend"',
]


@pytest.mark.parametrize("text", DESIGN_EXAMPLES)
def test_examples_round_trip_through_canonical_text(text: str) -> None:
    f = parse(text, now_ns=NOW)
    again = parse(str(f), now_ns=0)  # relative times were resolved: the canonical text is absolute
    assert again == f
    assert str(again) == str(f)


# ---------------------------------------------------------------------------------------------
# grammar


def test_precedence_not_and_or() -> None:
    f = parse("http or dns and not grpc")
    assert f.root == flt.Or(
        (flt.IsProtocol("http"), flt.And((flt.IsProtocol("dns"), flt.Not(flt.IsProtocol("grpc")))))
    )
    g = parse("(http or dns) and grpc")
    assert isinstance(g.root, flt.And)
    assert str(g) == "(http or dns) and grpc"
    assert str(parse("not (http and dns)")) == "not (http and dns)"
    assert str(parse("not not http")) == "not not http"


def test_empty_filter_matches_everything() -> None:
    assert parse("").matches(call())
    assert parse("   ").matches(call(protocol="dns"))
    assert str(parse("")) == ""


def test_operators_without_spaces_and_single_quotes() -> None:
    assert m("status>=201", call())
    assert m("status==201 and method=='POST'", call())
    with pytest.raises(FilterError, match='found "201and"'):
        parse("status==201and http")  # a word glued to a keyword is one word


def test_all_field_names_parse() -> None:
    for name in flt.FIELD_NAMES:
        if name in ("src.labels", "dst.labels", "request.headers", "response.headers"):
            parse(f'{name}["k"] == "v"')
        elif name == "info":
            parse('info.k == "v"')
        elif name == "flags":
            parse('"gap" in flags')
        else:
            kind = flt._SIMPLE[name]
            lit = {
                "text": '"v"',
                "int": "1",
                "duration": "1s",
                "time": "-1h",
                "bool": "true",
                "ip": "10.0.0.1",
            }
            body = '"v"'
            parse(f"{name} == {lit.get(kind.KIND, body)}")


def test_tls_is_the_field_and_covers_tls_calls() -> None:
    f = parse("tls")
    assert str(f) == "tls == true"
    assert f.matches(call(protocol="tls", tls=True, method="TLS"))
    assert f.matches(call(protocol="http", tls=True))
    assert not f.matches(call())
    assert parse("tls == false").matches(call())
    assert parse('protocol == "tls"').matches(call(protocol="tls", tls=True))


# ---------------------------------------------------------------------------------------------
# errors name the position and what was expected

ERRORS = [
    ("status >= ", 10, 'expected a value after ">=" (an integer)'),
    ('method == "GET" and status ==', 29, 'expected a value after "=="'),
    ("status = 5", 7, 'use "=="'),
    ("foo == 1", 0, 'unknown field "foo"'),
    ("stauts == 1", 0, 'did you mean "status"'),
    ('status == "x"', 10, "expected an integer"),
    ("latency > 5", 10, "expected a duration"),
    ("request_ts > 15m", 13, "expected a time"),
    ("(http", 5, 'expected ")"'),
    ("http)", 4, 'unbalanced ")"'),
    ("http and", 8, 'expected a filter term after "and"'),
    ("not", 3, "expected a filter term"),
    ("http dns", 5, 'expected "and", "or" or the end'),
    ('"gapp" in flags', 0, 'did you mean "gap"'),
    ('"gap" in flagz', 9, 'expected "flags"'),
    ("http == 1", 5, 'protocol == "http"'),
    ('target == "abc', 10, "unterminated string"),
    ("src.ip == 1.2.3", 10, "not an IP address"),
    ("src.ip in 1.2.3.4/33", 10, "not a CIDR"),
    ('status ~ "5.."', 7, '"~" does not apply to status'),
    ('request.body ~ "x"', 13, '"~" does not apply to request.body'),
    ("status == 99999999999999999999", 10, "out of range"),
    ('request.headers["é"] == "x"', 16, "ASCII"),
    ("method in ()", 11, "expected a value"),
    ('method in ("a" "b")', 15, 'expected "," or ")"'),
    ('method in "a"', 10, 'expected "(" and a list of values'),
    ("x && y", 2, 'use "and"'),
    ("tls == 1", 7, "expected true or false"),
    ("info.x < true", 9, "does not order booleans"),
    ("info. == 1", 0, "empty key"),
    ("src.labels == 1", 11, 'expected "[" and a key'),
    ("flags", 0, '"name" in flags'),
]


@pytest.mark.parametrize(("text", "pos", "fragment"), ERRORS)
def test_error_position_and_message(text: str, pos: int, fragment: str) -> None:
    with pytest.raises(FilterError) as ei:
        parse(text)
    e = ei.value
    assert e.position == pos, e.message
    assert fragment in e.message
    assert e.message.startswith(f"at {pos}: ")
    assert str(e) == e.message
    assert e.expected


def test_error_names_the_value_kinds() -> None:
    with pytest.raises(FilterError, match=r'at 10: expected a value after "==" \(a quoted string\)'):
        parse("method == ")
    with pytest.raises(FilterError, match=r"at 15: expected a value after \"==\" \(a time"):
        parse("response_ts == ")


def test_nesting_is_bounded() -> None:
    parse("(" * 60 + "http" + ")" * 60)
    with pytest.raises(FilterError, match="nested more than"):
        parse("(" * 100 + "http" + ")" * 100)
    with pytest.raises(FilterError, match="nested more than"):
        parse("not " * 100 + "http")
    with pytest.raises(FilterError, match="longer than"):
        parse("http or " * 20000 + "http")


@given(st.text(max_size=60))
def test_arbitrary_text_parses_or_raises_filter_error(text: str) -> None:
    try:
        f = parse(text)
    except FilterError as e:
        assert 0 <= e.position <= len(text)
        return
    assert parse(str(f), now_ns=f.now_ns) == f


@given(st.text(max_size=40))
def test_quoted_strings_round_trip(s: str) -> None:
    f = parse(f"target == {flt.quote(s)}")
    assert f.root == flt.Eq(flt.TextField("target"), flt.Str(s))
    assert f.matches(call(target=s))
    assert not f.matches(call(target=s + "x"))


def test_string_escapes_keep_unknown_backslashes_for_patterns() -> None:
    assert flt.tokenize(r'"a\"b\\c\n\x41\u00e9\d"')[0].text == 'a"b\\c\nAé\\d'
    assert flt.tokenize(r"'it\'s'")[0].text == "it's"
    assert m(r'target ~ "^/v\d/"', call(target="/v1/orders"))


# ---------------------------------------------------------------------------------------------
# semantics


def test_missing_values_are_false_and_not_of_them_true() -> None:
    c = call(status=None, response=None, response_ts=None)
    for text in (
        "status == 201",
        "status != 201",
        "status < 1",
        "latency > 0s",
        "response.body_size >= 0",
        'response.headers["content-type"] != "x"',
        'response.body != "x"',
        "status not in (1, 2)",
        'src.labels["nope"] != "x"',
        "info.missing != 1",
    ):
        assert not m(text, c), text
        assert m(f"not ({text})", c), text


def test_not_equal_is_the_negation_for_present_values() -> None:
    assert m("status != 500", call())
    assert not m("status != 201", call())
    assert m('method not in ("GET", "PUT")', call())
    assert not m('method not in ("GET", "POST")', call())


def test_text_is_case_sensitive() -> None:
    assert not m('method == "post"', call())
    assert m('method == "POST"', call())
    assert not m('target contains "ORDERS"', call())
    assert m('target startswith "/v1/" and target endswith "x=1"', call())
    assert m('method < "PUT" and method > "GET"', call())


def test_headers_case_insensitive_names_and_any_value() -> None:
    c = call(request=Message(headers=[("X-Tag", "a"), ("x-tag", "b"), ("X-TAG", "c")]))
    assert m('request.headers["x-tag"] == "b"', c)
    assert m('request.headers["X-Tag"] == "c"', c)
    assert not m('request.headers["x-tag"] == "B"', c)  # values are case-sensitive
    assert m('request.headers["x-tag"] != "z"', c)
    assert not m('request.headers["x-tag"] != "b"', c)  # one value equals: != fails
    assert m('request.headers["x-tag"] in ("z", "c")', c)
    assert not m('request.headers["x-other"] != "b"', c)
    # names fold ASCII only: the Kelvin sign is not a K
    k = call(request=Message(headers=[("\u212aey", "v")]))
    assert not m('request.headers["key"] == "v"', k)


def test_bodies_are_bytes_and_literals_utf8() -> None:
    c = call(response=Message(body=b"\xff\xfe caf\xc3\xa9 error\x00", body_size=12))
    assert m('response.body contains "café"', c)
    assert m('response.body contains "\\x00"', c)
    assert m('response.body startswith "\\xff"', c) is False  # "\xff" is U+00FF: UTF-8 c3 bf
    assert m('response.body endswith "error\\x00"', c)
    assert m('response.body == "" ', call(response=Message(body=b"")))
    assert m('response.body contains ""', call(response=Message(body=b"")))
    assert not m('response.body contains ""', call(response=None))


def test_regex_is_a_search_in_the_shared_subset() -> None:
    assert m('target ~ "orders"', call())
    assert m('target ~ "^/v1"', call())
    assert not m('target ~ "x=1$"', call(target="/a?x=1\n"))  # $ is the end of the text
    assert m('target ~ "x=1$"', call(target="/a?x=1"))
    assert m('target ~ "(?i)ORDERS"', call())
    assert not m('target ~ "(?i)k"', call(target="\u212a"))  # (?i) folds ASCII only
    assert not m('target ~ "a.b"', call(target="a\nb"))
    assert m('target ~ "(?s)a.b"', call(target="a\nb"))
    assert m('target ~ "\\d{2}"', call(target="/v12"))
    assert not m('target ~ "\\d"', call(target="/v\u0663"))  # Arabic-Indic three is no \d here


REFUSED = [
    ("(a)\\1", "backreferences"),
    ("(?P<n>a)(?P=n)", "backreferences"),
    ("(?=a)", "lookahead"),
    ("(?!a)", "lookahead"),
    ("(?<=a)b", "lookahead"),
    ("(?<!a)b", "lookahead"),
    ("(?>a)", "atomic"),
    ("a++", "possessive"),
    ("a*+", "possessive"),
    ("\\p{L}", "Unicode classes"),
    ("(?(1)a|b)", "not supported"),
    ("a**", "cannot follow"),
    ("*a", "nothing to repeat"),
    ("a{1001}", "at most 1000"),
    ("(?:a{10}){101}", "multiply past 1000"),
    ("(a", 'missing ")"'),
    ("a)", 'unbalanced ")"'),
    ("[a", 'missing "]"'),
    ("[z-a]", "bad range"),
    ("a(?i)b", "at the start"),
    ("(?m)^a", 'flag "m"'),
    ("(?x)a", 'flag "x"'),
    ("\\Qa\\E", "not supported"),
    ("\\G", "not supported"),
    ("[[:alpha:]]", "POSIX"),
    ("\\0", "octal"),
    ("(?#c)", "not supported"),
    ("a\\Bb", "disagree on empty text"),
]


@pytest.mark.parametrize(("pattern", "why"), REFUSED)
def test_regex_outside_the_subset_is_refused(pattern: str, why: str) -> None:
    with pytest.raises(FilterError, match=re.escape(why)) as ei:
        parse(f"target ~ {flt.quote(pattern)}")
    assert ei.value.position >= 9


def test_regex_error_position_points_into_the_pattern() -> None:
    with pytest.raises(FilterError) as ei:
        parse('target ~ "abc(?=x)"')
    assert ei.value.position == 10 + 3


ACCEPTED = [
    "",
    "a|b|",
    "^$",
    "[]a]",
    "[a-]",
    "[^\\]]",
    "\\.",
    "a{,3}",
    "a{2,}?",
    "x{",
    "(?P<name>a)b",
    "(?is:A.)",
    "[\\w.-]+@",
    "\\bapi\\b",
    "\\Aa\\z",
    "\\x41\\u00e9\\x{1F600}",
    "é+",
    "[\\d\\s]",
    "[^\\D]",
    "(?:)*",
]


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_regex_inside_the_subset_compiles_for_both(pattern: str) -> None:
    r = compile_regex(pattern)
    re.compile(r.python, re.ASCII)
    assert bool(r.re2) == bool(pattern)


def test_relative_time_resolves_once_at_parse() -> None:
    f = parse("request_ts > -15m", now_ns=NOW)
    assert f.root == flt.Gt(flt.TimeField("request_ts"), flt.Time(NOW - 15 * 60_000 * MS))
    assert f.now_ns == NOW
    assert str(f) == "request_ts > 2025-11-21T04:25:00Z"
    g = parse("request_ts > -1h30m", now_ns=NOW)
    assert g.root.value.ns == NOW - 90 * 60_000 * MS  # type: ignore[attr-defined]


def test_times_rfc3339_and_epoch() -> None:
    a = parse("request_ts >= 2025-11-21T04:40:00.5+01:00").root.value.ns  # type: ignore[attr-defined]
    assert a == NOW - 3600 * 10**9 + 500 * MS
    assert parse('request_ts == "2025-11-21T04:40:00Z"').root.value.ns == NOW  # type: ignore[attr-defined]
    assert parse(f"request_ts == {NOW}").root.value.ns == NOW  # type: ignore[attr-defined]
    assert parse("request_ts == 2025-11-21").root.value.ns == NOW - (4 * 3600 + 40 * 60) * 10**9  # type: ignore[attr-defined]
    with pytest.raises(FilterError):
        parse("request_ts == 2025-02-30T00:00:00Z")


def test_durations() -> None:
    assert flt.parse_duration("250ms") == 250 * MS
    assert flt.parse_duration("1.5s") == 1500 * MS
    assert flt.parse_duration("1h30m") == 90 * 60_000 * MS
    assert flt.parse_duration("7us") == 7000
    assert flt.parse_duration("5") is None
    assert m("latency == 45ms", call())
    assert m("latency < 1s and latency >= 45000us", call())


def test_ip_equality_ignores_spelling_and_cidr_is_a_range() -> None:
    v6 = call(src=Endpoint(ip="fd00::0:1"))
    assert m("src.ip == fd00::1", v6)
    assert m('src.ip == "fd00:0::1"', v6)
    assert m("src.ip in fd00::/8", v6)
    assert not m("src.ip in 10.0.0.0/8", v6)
    assert m("src.ip in (192.168.0.0/16, 10.1.0.7)", call())
    assert m("src.ip in 10.1.0.0/16 and dst.ip in 10.96.0.0/12", call())
    assert m("src.ip in ::ffff:10.0.0.0/104", call())  # IPv4 lives in ::ffff:0:0/96
    assert m("src.ip != 10.1.0.8", call())
    assert not m("src.ip != 10.1.0.8", call(src=Endpoint(ip="bogus")))
    assert m('src.ip startswith "10.1."', call())
    assert m("src.ip in 0.0.0.0/0", call()) and not m("src.ip in 0.0.0.0/0", v6)
    assert m("src.ip in ::/0", v6) and m("src.ip in ::/0", call())


def test_info_compares_as_the_literal_says() -> None:
    c = call(
        info={
            "qtype": "AAAA",
            "api_key": 3,
            "ratio": 0.5,
            "ok": True,
            "answers": [{"ip": "1.2.3.4"}],
            "a/b": {"~x": 7},
            "none": None,
            "3": "three",
        }
    )
    assert m('info.qtype == "AAAA"', c)
    assert m('info.qtype ~ "A{4}"', c)
    assert not m('info.api_key == "3"', c)  # a string literal matches strings only
    assert m("info.api_key == 3 and info.api_key >= 3 and info.api_key in (1, 3)", c)
    assert m("info.ratio < 1 and info.ratio > 0", c)
    assert m("info.ok == true and info.ok != false", c)
    assert not m("info.ok == 1", c)  # booleans are not numbers
    assert m('info.answers.0.ip == "1.2.3.4"', c)
    assert m('info["a/b"]["~x"] == 7', c)
    assert m('info["3"] == "three"', c)
    assert not m('info.answers == "x"', c) and m('info.answers != "x"', c)  # a list has a value
    assert not m("info.none != 1", c)  # JSON null is no value
    assert not m("info.nope == 1", c)


def test_flags() -> None:
    c = call(flags=["gap", "truncated"])
    assert m('"gap" in flags', c)
    assert not m('"reset" in flags', c)
    assert m('"reset" not in flags', c)
    assert m('not "reset" in flags', c)


def test_bare_protocols() -> None:
    for p in ("http", "http2", "grpc", "dns", "kafka"):
        assert m(p, call(protocol=p))
        assert not m(p, call(protocol="other"))


def test_help_lists_every_operator_field_kind_and_flag() -> None:
    for cls in flt.OPERATORS.values():
        assert cls.HELP in HELP
    for kind in flt.FIELD_KINDS:
        assert kind.HELP in HELP
    for f in Flag.ALL:
        assert f in HELP
    for name in ("status", "latency", "request_ts", "src.ip", "info.KEY", "request.body"):
        assert name in HELP


def test_filter_is_a_value() -> None:
    a, b = parse("http and status == 1"), parse("http  and  status==1")
    assert a == b and hash(a) == hash(b)
    assert isinstance(a, Filter)
    assert repr(a) == "Filter('http and status == 1')"


def test_predicate_is_compiled_once() -> None:
    """The tree is not walked per call: matches is a closure, and rebinding the tree does nothing."""
    f = parse("status >= 500")
    c = call(status=503)
    assert f.matches(c)
    object.__setattr__(f.root, "value", flt.Int(600))
    assert f.matches(c)
