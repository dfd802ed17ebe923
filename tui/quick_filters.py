"""Quick filters from the selected row (`w` same server, `t` same target, `x` errors only),
combined with the filter already active. Pure text building: values are quoted with the filter
language's own `quote`, so any target or name (quotes, backslashes, control characters) reads back
as exactly that value.
"""

from __future__ import annotations

from dissect.filter import ERRORS, quote
from dissect.model import Call


def combine(current: str, extra: str) -> str:
    """`current and extra`, each parenthesised when it has to be; an empty side drops out, and a
    term already applied is not added twice."""
    cur, add = current.strip(), extra.strip()
    if not cur:
        return add
    if not add or _wrap(add) in [_wrap(t) for t in _top_level(cur, "and")]:
        return cur
    return f"{_wrap(cur)} and {_wrap(add)}"


def _wrap(text: str) -> str:
    """Parenthesise `text` when it has a top-level `or` (which binds more loosely than `and`)."""
    return f"({text})" if len(_top_level(text, "or")) > 1 else text


def _top_level(text: str, word: str) -> list[str]:
    """`text` split at the keyword `word` where it stands outside strings and parentheses."""
    parts: list[str] = []
    depth, quote_char, escaped, start, i = 0, "", False, 0, 0
    n = len(text)
    while i < n:
        ch = text[i]
        if quote_char:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote_char:
                quote_char = ""
        elif ch in "\"'":
            quote_char = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif (
            depth == 0
            and text.startswith(word, i)
            and (i == 0 or not _ident(text[i - 1]))
            and (i + len(word) >= n or not _ident(text[i + len(word)]))
        ):
            parts.append(text[start:i].strip())
            i += len(word)
            start = i
            continue
        i += 1
    parts.append(text[start:].strip())
    return parts


def _ident(ch: str) -> bool:
    return ch.isalnum() or ch in "_.[]-"


def same_server(call: Call) -> str | None:
    """Calls to the same server: its workload, else its pod, else its address and port."""
    dst = call.dst
    if dst.workload:
        return f"dst.workload == {quote(dst.workload)}" + _namespace(dst.namespace)
    if dst.pod:
        return f"dst.pod == {quote(dst.pod)}" + _namespace(dst.namespace)
    if dst.ip:
        port = f" and dst.port == {dst.port}" if dst.port is not None else ""
        return f"dst.ip == {quote(dst.ip)}{port}"
    return None


def _namespace(ns: str | None) -> str:
    return f" and dst.namespace == {quote(ns)}" if ns else ""


def same_target(call: Call) -> str | None:
    """Calls of the same protocol to the same target (path, gRPC method, DNS name, topics)."""
    if call.target is None:
        return None
    return f"{call.protocol} and target == {quote(call.target)}"


def errors_only() -> str:
    """`dissect.filter.ERRORS`: 5xx for HTTP, a non-zero status for the others."""
    return ERRORS
