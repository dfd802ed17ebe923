"""TLS secrets in the NSS key log format, as browsers, curl, OpenSSL and Go write them.

``SSLKEYLOGFILE`` makes a TLS library write one line per secret::

    CLIENT_RANDOM <64 hex: the ClientHello random> <96 hex: the TLS <= 1.2 master secret>
    CLIENT_HANDSHAKE_TRAFFIC_SECRET <64 hex> <hex>    (TLS 1.3; likewise SERVER_…,
    CLIENT_TRAFFIC_SECRET_0 <64 hex> <hex>             CLIENT_EARLY_TRAFFIC_SECRET, EXPORTER_SECRET)

The same lines travel inside a pcapng Decryption Secrets Block (type ``TLSK``), which is how
``editcap --inject-secrets`` and Wireshark ship a capture with its keys. Both feed one `KeyLog`;
the TLS dissector looks a session up by its client random when it needs the keys (after the
ServerHello), so a block read before the session's packets is in time.

A key log is user input and, inside a pcapng, hostile input: a line that is not a secret (comments,
blank lines, bad hex, a label we do not use, the ``RSA`` pre-master form, which is keyed by the
encrypted pre-master rather than the random) is counted in `KeyLogStats` and skipped, never an error.
The number of sessions kept is bounded by ``max_sessions``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

__all__ = ["LABELS", "SECRETS_TYPE_TLS", "KeyLog", "KeyLogError", "KeyLogStats"]

SECRETS_TYPE_TLS = 0x544C534B  # "TLSK": a Decryption Secrets Block holding NSS key log lines

#: The labels podshark uses, with the secret's length range in bytes (TLS 1.3 secrets are a hash long).
LABELS: dict[str, tuple[int, int]] = {
    "CLIENT_RANDOM": (48, 48),
    "CLIENT_EARLY_TRAFFIC_SECRET": (32, 64),
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": (32, 64),
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": (32, 64),
    "CLIENT_TRAFFIC_SECRET_0": (32, 64),
    "SERVER_TRAFFIC_SECRET_0": (32, 64),
    "EXPORTER_SECRET": (32, 64),
    "EARLY_EXPORTER_SECRET": (32, 64),
}
MAX_LINE = 1024  # longer lines cannot be key log lines: skipped without parsing
MAX_SESSIONS = 1_000_000


class KeyLogError(Exception):
    """The key log file cannot be read at all (missing, a directory, unreadable)."""


@dataclass(slots=True)
class KeyLogStats:
    """What was read, so `podshark dissect` can say why a session stayed encrypted."""

    lines: int = 0  # non-blank, non-comment lines
    secrets: int = 0  # lines accepted
    sessions: int = 0  # distinct client randoms
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> lines

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class KeyLog:
    """Secrets by client random. Mutable: a pcapng's secrets blocks are added while it is read."""

    __slots__ = ("_by_random", "max_sessions", "sources", "stats")

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._by_random: dict[bytes, dict[str, bytes]] = {}
        self.max_sessions = max_sessions
        self.stats = KeyLogStats()
        self.sources: list[str] = []  # where secrets came from ("file keys.txt", "pcapng block")

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> KeyLog:
        """Read a key log file. Raises `KeyLogError` with a message that says what to do."""
        name = os.fspath(path)
        try:
            with open(name, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise KeyLogError(
                f"{name}: no such key log file (write one with SSLKEYLOGFILE={name} before starting "
                "the client)"
            ) from None
        except IsADirectoryError:
            raise KeyLogError(f"{name}: is a directory, not a key log file") from None
        except OSError as e:
            raise KeyLogError(f"{name}: cannot read the key log ({e.strerror or e})") from None
        log = cls()
        log.add_text(data, source=f"file {name}")
        return log

    def add_text(self, data: bytes | str, source: str = "") -> int:
        """Add every secret line in ``data``; returns how many were accepted."""
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        if source and source not in self.sources:
            self.sources.append(source)
        accepted = 0
        for raw in data.splitlines():
            if accepted_line := self._line(raw):
                accepted += accepted_line
        return accepted

    def _line(self, raw: bytes) -> int:
        line = raw.strip()
        if not line or line.startswith(b"#"):
            return 0
        st = self.stats
        st.lines += 1
        if len(line) > MAX_LINE:
            st.skip("line too long")
            return 0
        parts = line.split()
        if len(parts) != 3:
            st.skip("not three fields")
            return 0
        try:
            label = parts[0].decode("ascii")
        except UnicodeDecodeError:
            st.skip("label not ASCII")
            return 0
        bounds = LABELS.get(label)
        if bounds is None:
            st.skip("RSA pre-master (not supported)" if label == "RSA" else f"unknown label {label[:40]}")
            return 0
        try:
            random = bytes.fromhex(parts[1].decode("ascii"))
            secret = bytes.fromhex(parts[2].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            st.skip("bad hex")
            return 0
        if len(random) != 32:
            st.skip("client random is not 32 bytes")
            return 0
        lo, hi = bounds
        if not lo <= len(secret) <= hi:
            st.skip(f"{label} of the wrong length")
            return 0
        entry = self._by_random.get(random)
        if entry is None:
            if len(self._by_random) >= self.max_sessions:
                st.skip("too many sessions")
                return 0
            entry = self._by_random[random] = {}
            st.sessions += 1
        entry[label] = secret
        st.secrets += 1
        return 1

    def lookup(self, client_random: bytes) -> dict[str, bytes] | None:
        """The secrets logged for the session with this ClientHello random, or None."""
        return self._by_random.get(client_random)

    def __len__(self) -> int:
        return len(self._by_random)

    def fingerprint(self) -> bytes:
        """A digest of every secret held, independent of line order and of skipped lines."""
        h = hashlib.sha256()
        for random in sorted(self._by_random):
            for label, secret in sorted(self._by_random[random].items()):
                h.update(b"%s %s %s\n" % (label.encode(), random.hex().encode(), secret.hex().encode()))
        return h.digest()

    def summary(self) -> str:
        """One line for the command line: sessions known and lines skipped, with why."""
        st = self.stats
        text = f"{st.sessions} TLS session{'s' if st.sessions != 1 else ''} in the key log"
        if st.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(st.skipped.items(), key=lambda kv: -kv[1]))
            text += f" ({sum(st.skipped.values())} lines skipped: {reasons})"
        return text
