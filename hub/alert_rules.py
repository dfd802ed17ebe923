"""The alert rules file (`podshark hub --alerts FILE`): YAML in, validated `RulesFile` out.

    webhook:                        # optional: without it alerts are in the API, the TUI and /metrics
      url: http://alerts.example/hook
      headers: {Authorization: "Bearer xyz"}
      timeout: 5s                   # per attempt
      retries: 6                    # attempts after the first (backoff 1 s, 2 s, 4 s ... at most 60 s)
    evaluate_every: 10s
    rules:
      - name: api-retry-storm
        description: clients hammer the api
        filter: 'dst.workload == "Deployment/api"'   # call measures only
        measure: calls_per_s
        window: 1m
        baseline: {factor: 3, over: 24h, min: 5}      # or: above: 50
        for: 30s
      - name: egress
        measure: bytes_per_s
        edges: {dst: "external/*"}                    # flow measures only: globs on map node ids
        above: 100000

Why validation is this strict: a rules file is read once, when the hub starts, by someone who is not
watching the hub's log, and a rule that silently means something else (a threshold given as a
string, a typo'd key, a window shorter than the data's resolution) never fires when it should. So
every problem is refused, and refused in one line naming the rule, the key and what was expected —
`podshark hub` prints it and exits 2. Unknown keys are errors (with the nearest known key), numbers
need units where they are durations (YAML reads `1:30` as the integer 90), booleans are not numbers.

Hostile input stays bounded: the file is read up to `MAX_FILE_BYTES`, YAML aliases cannot make the
checks walk more than the keys they look for (nothing is traversed generically), values shown in
messages go through `reprlib` (a few dozen characters, however deep or recursive the value), and
every exception the YAML library or the filter parser raises becomes a `RulesError`.

Measures: the call measures (`CALL_MEASURES`) are computed from the stored calls that match the
rule's `filter` (the call filter language, the same as the API's); the flow measures
(`FLOW_MEASURES`) from the per-minute aggregates (`hub/aggregates.py`: bytes and packets both ways,
connections opened) of the map edges whose node ids (`hub/nodes.py`: `shop/Deployment/web`,
`external/1.2.3.4`, ...) match `edges`' globs. Aggregates count whole minutes, so a flow rule's
window is at least a minute.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
import reprlib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dissect.filter import FilterError, parse, parse_duration

__all__ = [
    "CALL_MEASURES",
    "FLOW_MEASURES",
    "MEASURES",
    "Baseline",
    "EdgeSelector",
    "Rule",
    "RulesError",
    "RulesFile",
    "WebhookConfig",
    "load_rules",
    "parse_rules",
]

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
DAY = 86_400 * SECOND

CALL_MEASURES = ("calls_per_s", "errors_per_s", "error_rate", "p50_latency_ms", "p99_latency_ms")
FLOW_MEASURES = ("bytes_per_s", "packets_per_s", "connections_per_s")
MEASURES = CALL_MEASURES + FLOW_MEASURES

MAX_FILE_BYTES = 1 << 20
MAX_RULES = 1000
MAX_TEXT = 4096  # a filter, a description, a header value
MAX_NAME = 128
MAX_GLOB = 512
MAX_HEADERS = 64
MAX_RETRIES = 100
DEFAULT_EVALUATE_EVERY_NS = 10 * SECOND
DEFAULT_WINDOW_NS = MINUTE
DEFAULT_TIMEOUT_NS = 5 * SECOND
DEFAULT_RETRIES = 6

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_TOP_KEYS = ("webhook", "evaluate_every", "rules")
_WEBHOOK_KEYS = ("url", "headers", "timeout", "retries")
_RULE_KEYS = ("name", "description", "filter", "measure", "edges", "window", "above", "baseline", "for")
_BASELINE_KEYS = ("factor", "over", "min")
_EDGE_KEYS = ("src", "dst")

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlist = _short.maxdict = _short.maxtuple = _short.maxset = 4
_short.maxlevel = 2


class RulesError(ValueError):
    """A rules file that cannot be used; the message is one line naming where and what is wrong."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """Fire when the value exceeds `factor` times max(the measure over `over` before the window, `min`)."""

    factor: float
    over_ns: int
    min: float


@dataclass(frozen=True, slots=True)
class EdgeSelector:
    """Which aggregate edges a flow rule sums: glob patterns (`fnmatch`, case-sensitive, `*` crosses
    `/`) on the client's and the server's map node ids."""

    src: str = "*"
    dst: str = "*"

    def matches(self, src_id: str, dst_id: str) -> bool:
        return fnmatch.fnmatchcase(src_id, self.src) and fnmatch.fnmatchcase(dst_id, self.dst)

    def to_dict(self) -> dict[str, str]:
        return {"src": self.src, "dst": self.dst}


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    measure: str
    window_ns: int
    for_ns: int
    above: float | None = None
    baseline: Baseline | None = None
    filter: str = ""  # call measures: the filter-language text ("" selects every call)
    edges: EdgeSelector | None = None  # flow measures: which edges (None for call measures)
    description: str = ""

    @property
    def flow(self) -> bool:
        """Is the measure computed from the aggregates' flows (not from the calls)?"""
        return self.measure in FLOW_MEASURES

    def condition(self) -> str:
        """How the API shows the condition: `above 50` or `3x baseline (min 5)`."""
        if self.baseline is not None:
            b = self.baseline
            return f"{_num(b.factor)}x baseline (min {_num(b.min)})"
        return f"above {_num(self.above or 0.0)}"

    def threshold(self, baseline_value: float | None) -> float:
        """The value the measure must exceed; `baseline_value` None means no history."""
        if self.baseline is None:
            assert self.above is not None
            return self.above
        b = self.baseline
        return b.factor * max(baseline_value or 0.0, b.min)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_ns: int = DEFAULT_TIMEOUT_NS
    retries: int = DEFAULT_RETRIES


@dataclass(frozen=True, slots=True)
class RulesFile:
    rules: tuple[Rule, ...]
    webhook: WebhookConfig | None = None
    evaluate_every_ns: int = DEFAULT_EVALUATE_EVERY_NS
    source: str = "<rules>"


def _num(v: float) -> str:
    return f"{v:g}"


def _show(value: object) -> str:
    """A value for a message: short whatever it is (deep, recursive, huge)."""
    try:
        return _short.repr(value)
    except Exception:  # a hostile object's repr; YAML's safe loader makes none, but stay safe
        return f"a {type(value).__name__}"


class _Where:
    """Builds the messages: `alerts file F: rule 'x': key 'window': ...`."""

    def __init__(self, source: str, rule: str | None = None) -> None:
        self.source = source
        self.rule = rule

    def error(self, key: str | None, message: str) -> RulesError:
        parts = [f"alerts file {self.source}"]
        if self.rule is not None:
            parts.append(f"rule {self.rule}")
        if key is not None:
            parts.append(f"key {key!r}")
        return RulesError(": ".join([*parts, message]))


def _mapping(where: _Where, key: str | None, value: object, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.error(key, f"wants a mapping of {', '.join(known)}; found {_show(value)}")
    for k in value:
        if not isinstance(k, str):
            raise where.error(key, f"keys are names like {known[0]!r}, not {_show(k)}")
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
            name = f"{key}.{k}" if key else k
            raise where.error(name, f"is not a known key{hint}")
    return value


def _text(where: _Where, key: str, value: object, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, int | float | bool) or value is None else ""
        raise where.error(key, f"wants text; found {_show(value)}{hint}")
    if len(value) > limit:
        raise where.error(key, f"is {len(value)} characters; at most {limit}")
    return value


def _duration(where: _Where, key: str, value: object, lo: int, hi: int) -> int:
    """A duration with a unit (`30s`, `1m`, `24h`, `1h30m`), or 0."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise where.error(key, f"wants a duration like 30s, 1m or 24h; found {_show(value)}")
    if isinstance(value, int | float):
        if value != 0:  # YAML reads 1:30 as 90, and nobody can tell seconds from minutes here
            raise where.error(
                key, f"wants a duration with a unit like 30s, 1m or 24h, not {_show(value)} (a bare number)"
            )
        ns = 0
    else:
        parsed = parse_duration(value.strip()) if len(value) <= 64 else None
        if parsed is None:
            raise where.error(key, f"wants a duration like 30s, 1m or 24h, not {_show(value)}")
        ns = parsed
    if not lo <= ns <= hi:
        raise where.error(key, f"must be between {_show_ns(lo)} and {_show_ns(hi)}, not {value}")
    return ns


def _show_ns(ns: int) -> str:
    for unit, size in (("d", DAY), ("h", 3600 * SECOND), ("m", MINUTE), ("s", SECOND)):
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / SECOND:g}s"


def _number(where: _Where, key: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise where.error(key, f"wants a number; found {_show(value)}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0) or v > 1e18:
        need = "a finite number above 0" if positive else "a finite number, 0 or more"
        raise where.error(key, f"wants {need} (at most 1e18), not {_show(value)}")
    return v


def _int(where: _Where, key: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise where.error(key, f"wants a whole number from {lo} to {hi}; found {_show(value)}")
    return value


def _webhook(where: _Where, raw: object) -> WebhookConfig:
    m = _mapping(where, "webhook", raw, _WEBHOOK_KEYS)
    if "url" not in m:
        raise where.error("webhook.url", "is missing: where to POST each alert event")
    url = _text(where, "webhook.url", m["url"], 2048)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise where.error("webhook.url", f"is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise where.error("webhook.url", f"wants an http:// or https:// URL with a host, not {_show(url)}")
    if any(c in url for c in "\r\n\t ") or (port is not None and not 0 < port < 65536):
        raise where.error("webhook.url", f"is not a usable URL: {_show(url)}")
    headers: dict[str, str] = {}
    raw_headers = m.get("headers", {})
    if raw_headers is None:
        raw_headers = {}
    if not isinstance(raw_headers, dict) or len(raw_headers) > MAX_HEADERS:
        raise where.error(
            "webhook.headers", f"wants a mapping of at most {MAX_HEADERS} header names to values"
        )
    for name, value in raw_headers.items():
        if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name) or len(name) > 256:
            raise where.error("webhook.headers", f"{_show(name)} is not a header name")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise where.error(f"webhook.headers.{name}", f"wants text; found {_show(value)}")
        text = str(value)
        if len(text) > MAX_TEXT or any(c in text for c in "\r\n\0"):
            raise where.error(f"webhook.headers.{name}", f"must be one line of at most {MAX_TEXT} characters")
        if name.lower() in ("content-type", "content-length", "host"):
            raise where.error(f"webhook.headers.{name}", "is set by the hub; leave it out")
        headers[name] = text
    timeout = DEFAULT_TIMEOUT_NS
    if "timeout" in m:
        timeout = _duration(where, "webhook.timeout", m["timeout"], 100_000_000, 300 * SECOND)
    retries = DEFAULT_RETRIES
    if "retries" in m:
        retries = _int(where, "webhook.retries", m["retries"], 0, MAX_RETRIES)
    return WebhookConfig(url=url, headers=headers, timeout_ns=timeout, retries=retries)


def _rule(source: str, index: int, raw: object) -> Rule:
    where = _Where(source, f"#{index + 1}")
    if isinstance(raw, dict):
        named = raw.get("name")
        if isinstance(named, str) and len(named) <= MAX_NAME and _NAME_RE.fullmatch(named):
            where = _Where(source, repr(named))  # messages name the rule as soon as it has a name
    m = _mapping(where, None, raw, _RULE_KEYS)
    if "name" not in m:
        raise where.error("name", "is missing: every rule needs a unique name ([A-Za-z0-9_.-]+)")
    name = _text(where, "name", m["name"], MAX_NAME)
    if not _NAME_RE.fullmatch(name):
        raise where.error("name", f"wants letters, digits and _.- only, not {_show(name)}")
    where = _Where(source, repr(name))
    if "measure" not in m:
        raise where.error("measure", f"is missing: one of {', '.join(MEASURES)}")
    measure = m["measure"]
    if measure not in MEASURES:
        close = difflib.get_close_matches(str(measure)[:64], MEASURES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise where.error("measure", f"{_show(measure)} is not one of {', '.join(MEASURES)}{hint}")
    flow = measure in FLOW_MEASURES
    description = _text(where, "description", m["description"]) if m.get("description") is not None else ""

    flt = ""
    if m.get("filter") is not None:
        if flow:
            raise where.error(
                "filter",
                f"{measure} comes from the per-minute aggregates, which no call filter can select: "
                'choose edges with `edges: {src: "...", dst: "..."}`',
            )
        flt = _text(where, "filter", m["filter"])
        try:
            parse(flt)
        except FilterError as e:
            expected = f" (expected {e.expected})" if e.expected and e.expected not in e.message else ""
            raise where.error("filter", f"{e.message}{expected}") from None
        except (RecursionError, ValueError) as e:
            raise where.error("filter", f"does not parse: {_show(str(e))}") from None
    edges = None
    if "edges" in m:
        if not flow:
            raise where.error(
                "edges",
                f"selects aggregate edges for the flow measures ({', '.join(FLOW_MEASURES)}); "
                f"{measure} takes a call `filter` instead",
            )
        globs = _mapping(where, "edges", m["edges"], _EDGE_KEYS)
        edges = EdgeSelector(
            src=_text(where, "edges.src", globs.get("src", "*"), MAX_GLOB),
            dst=_text(where, "edges.dst", globs.get("dst", "*"), MAX_GLOB),
        )
    elif flow:
        edges = EdgeSelector()

    window = DEFAULT_WINDOW_NS
    if "window" in m:
        window = _duration(where, "window", m["window"], SECOND, 30 * DAY)
        if flow and window < MINUTE:
            raise where.error(
                "window", f"{measure} comes from per-minute aggregates: the window is at least 1m"
            )
    for_ns = _duration(where, "for", m["for"], 0, DAY) if "for" in m else 0

    has_above, has_baseline = m.get("above") is not None, m.get("baseline") is not None
    if has_above == has_baseline:
        raise where.error(
            "above" if has_above else None,
            "give exactly one condition: `above: N` (a fixed threshold) or "
            "`baseline: {factor: N, over: 24h, min: M}`",
        )
    above = None
    baseline = None
    if has_above:
        above = _number(where, "above", m["above"])
    else:
        b = _mapping(where, "baseline", m["baseline"], _BASELINE_KEYS)
        for k in ("factor", "min"):
            if k not in b:
                raise where.error(
                    f"baseline.{k}",
                    "is missing: "
                    + (
                        "how many times the baseline the value must exceed"
                        if k == "factor"
                        else "the least baseline to compare with (without it an empty history "
                        "would make any traffic fire)"
                    ),
                )
        over = _duration(where, "baseline.over", b["over"], MINUTE, 30 * DAY) if "over" in b else DAY
        baseline = Baseline(
            factor=_number(where, "baseline.factor", b["factor"], positive=True),
            over_ns=over,
            min=_number(where, "baseline.min", b["min"]),
        )
    return Rule(
        name=name,
        measure=str(measure),
        window_ns=window,
        for_ns=for_ns,
        above=above,
        baseline=baseline,
        filter=flt,
        edges=edges,
        description=description,
    )


def parse_rules(text: str | bytes, source: str = "<rules>") -> RulesFile:
    """Validate a rules file's text; `RulesError` (one line) when it cannot be used."""
    where = _Where(source)
    if len(text) > MAX_FILE_BYTES:
        raise where.error(None, f"is {len(text)} bytes; at most {MAX_FILE_BYTES}")
    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise where.error(None, f"is not valid YAML{at}: {problem}") from None
    except (RecursionError, MemoryError, ValueError, OverflowError) as e:
        raise where.error(None, f"cannot be read as YAML: {type(e).__name__}") from None
    if doc is None:
        raise where.error(None, "is empty: it needs `rules:` (a list of rules)")
    top = _mapping(where, None, doc, _TOP_KEYS)
    webhook = _webhook(where, top["webhook"]) if top.get("webhook") is not None else None
    every = DEFAULT_EVALUATE_EVERY_NS
    if "evaluate_every" in top:
        every = _duration(where, "evaluate_every", top["evaluate_every"], SECOND, 3600 * SECOND)
    raw_rules = top.get("rules")
    if raw_rules is None:
        raw_rules = []
    if not isinstance(raw_rules, list):
        raise where.error("rules", f"wants a list of rules (each a mapping); found {_show(raw_rules)}")
    if len(raw_rules) > MAX_RULES:
        raise where.error("rules", f"has {len(raw_rules)} rules; at most {MAX_RULES}")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = _rule(source, i, raw)
        if rule.name in seen:
            again = _Where(source, repr(rule.name))
            raise again.error("name", "is used by an earlier rule; names are unique")
        seen.add(rule.name)
        rules.append(rule)
    return RulesFile(rules=tuple(rules), webhook=webhook, evaluate_every_ns=every, source=source)


def load_rules(path: str | Path) -> RulesFile:
    """Read and validate a rules file; `RulesError` names the file in every message."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise RulesError(f"alerts file {p}: cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RulesError(f"alerts file {p}: is not UTF-8 text (byte {e.start})") from None
    return parse_rules(text, str(p))
