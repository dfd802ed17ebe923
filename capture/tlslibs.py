"""Which processes' TLS the uprobe tracer can read, and which library files it must attach to.

The TLS tracer puts uprobes on ``SSL_read``/``SSL_write`` (and friends) of OpenSSL. A uprobe is
attached to a *file* (an inode) and then fires in every process that maps that file, whichever
path or mount namespace the process reached it through. So the worker needs, every few seconds:

- the set of distinct files that define those functions and are mapped by some process now
  (`Scan.libraries`): one attachment each, added and removed as processes come and go (`diff`);
- per process, an honest verdict (`Scan.processes`): traced, or why not — Go's crypto/tls and
  BoringSSL/OpenSSL built into a stripped executable (Envoy) do not go through any shared
  ``SSL_read``, and saying so beats silently missing their traffic.

How, with /proc only (no eBPF, no new dependencies):

- ``/proc/PID/maps`` lists each process's executable mappings with the device and inode the kernel
  mapped. A file is reachable from the worker's root as ``/proc/PID/root/<path from maps>``
  (containers have their own root), or, if it was deleted or replaced since (a library upgraded
  under a running process), as ``/proc/PID/map_files/<start>-<end>``. A path is used only after
  ``os.stat`` confirms it still reaches the mapped (dev, ino).
- Each distinct mapped file is read once with our own ELF reader (``struct``, bounded positional
  reads, no mmap: a file truncated while we read it must not SIGBUS the worker): the dynamic symbol
  table (exported ``SSL_read``…), the full symbol table when present (static builds), the SONAME,
  Go's sections (``.go.buildinfo``, ``.gopclntab``), and markers in the read-only data: the TLS 1.3
  suite name ``TLS_AES_128_GCM_SHA256`` (present in every TLS stack's cipher table — libssl,
  BoringSSL, Go, GnuTLS, NSS — and absent from libcrypto or from programs that merely link
  libssl), ``BoringSSL``, ``crypto/tls.``, OpenSSL's ``ssl/statem/`` source paths (named in its
  error records, so present even in a stripped static build) and its version text. What decides
  coverage is the symbol table, not the file name: libssl.so.1.1, a BoringSSL libssl.so and a
  Node.js executable that exports OpenSSL's symbols are all attachable. Results are cached per
  (dev, ino, mtime, size).
- Distinct files are keyed by `FileKey` (st_dev, st_ino) — the inode a uprobe lands on. Overlayfs
  (every container image layer) needs one more step: the kernel attaches uprobes to the *real*
  inode under the overlay (``d_real_inode``), while stat and maps report the overlay's own device.
  Two containers of one image map the same layer file through two overlay mounts; attaching once
  per overlay path would fire every probe twice. So for an overlay mount (found in the process's
  ``mountinfo``) the file is looked up in the upper and lower directories and keyed by the layer
  file itself; when that fails (an unusual mount), the overlay key is kept and counted
  (``overlay_unresolved``).

Cost: a rescan with a warm cache reads ``maps``, ``comm`` and ``exe`` of each process and stats
each distinct mapped file once — measured on a 2-core VM, 500 processes: ~33 ms (~65 µs per process,
half of it the kernel printing ``maps``). A file seen for the first time costs its analysis once:
~2 ms for libssl.so.3, ~70-100 ms for a 40-100 MB Go binary (only its data sections are searched).

Not thread-safe: one `Scanner` is driven by one thread (the worker's TLS loop).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from capture.procs import container_id

log = logging.getLogger("capture.tlslibs")

#: Functions the tracer probes. SSL_read and SSL_write make a file attachable; the others are
#: attached where present (SSL_read_ex/SSL_write_ex exist from OpenSSL 1.1.1 on, not in BoringSSL).
PROBE_SYMBOLS = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "SSL_set_fd", "SSL_free")
REQUIRED_SYMBOLS = ("SSL_read", "SSL_write")

# Verdicts, one per process (ProcTls.verdict)
TRACED = "traced"  # maps a file whose SSL_read/SSL_write are probed
STATIC_GO = "static-go"  # Go binary using crypto/tls: not covered
STATIC_BORINGSSL = "static-boringssl"  # BoringSSL built in without symbols (Envoy, gRPC's cygrpc)
STATIC_OPENSSL = "static-openssl"  # OpenSSL built in without symbols (stripped static binary)
OTHER_TLS = "other-tls"  # a TLS stack without SSL_read/SSL_write (GnuTLS, NSS): not covered
NO_TLS = "no-tls"  # no TLS stack mapped or built in
UNREADABLE = "unreadable"  # /proc/PID/maps or the executable could not be read
VERDICTS = (TRACED, STATIC_GO, STATIC_BORINGSSL, STATIC_OPENSSL, OTHER_TLS, NO_TLS, UNREADABLE)

_FLAVOR_NAMES = {"openssl": "OpenSSL", "boringssl": "BoringSSL"}
DEFAULT_LINGER = 300.0  # seconds a library stays listed (attached) after its last mapper exited

# Bounds: what a hostile or absurd file can make us read or do.
MAX_TABLE_BYTES = 64 << 20  # one symbol or string table; bigger tables are skipped (noted)
MAX_SCAN_BYTES = 512 << 20  # read-only data searched for markers, per file
MAX_SECTIONS = 1 << 16
MAX_NAME_HITS = 64  # occurrences of one symbol name in a string table that are followed up
MAX_ENTRY_HITS = 4096  # 4-byte matches of a name offset examined in one symbol table
MAX_PROC_FILE = 64 << 20  # /proc/PID/maps of a huge process (Java) is a few MiB
CHUNK = 1 << 20
FILE_CACHE_ENTRIES = 16384

_TLS13 = b"TLS_AES_128_GCM_SHA256"
_BORING = b"BoringSSL"
_GO_TLS = b"crypto/tls."
_GO_BUILDINFO = b"\xff Go buildinf:"
_OPENSSL_STATEM = b"ssl/statem/"  # OpenSSL's (1.1.0+) TLS state machine sources, named in its errors
_OPENSSL_PREFIX = b"OpenSSL "
_OPENSSL_VERSION = re.compile(rb"OpenSSL (\d+\.\d+\.\d+[a-z]?)")
_MARKERS = (_TLS13, _BORING, _GO_TLS, _GO_BUILDINFO, _OPENSSL_STATEM)
_OVERLAP = max(len(m) for m in (*_MARKERS, b"OpenSSL 123.123.123z")) - 1
_GO_SECTIONS = frozenset({".go.buildinfo", ".gopclntab", ".note.go.buildid"})

# ELF constants
_ET_EXEC, _ET_DYN = 2, 3
_PT_LOAD = 1
_SHT_SYMTAB, _SHT_DYNAMIC, _SHT_NOBITS, _SHT_DYNSYM = 2, 6, 8, 11
_SHF_ALLOC, _SHF_EXECINSTR = 0x2, 0x4
_SHN_UNDEF, _SHN_XINDEX = 0, 0xFFFF
_STT_FUNC = 2
_DT_NULL, _DT_SONAME = 0, 14


class FileKey(NamedTuple):
    """A file as the kernel knows it: (st_dev, st_ino). Uprobes attach once per FileKey."""

    dev: int
    ino: int

    def __str__(self) -> str:
        return f"{os.major(self.dev)}:{os.minor(self.dev)}/{self.ino}"


# --- reading ELF files ----------------------------------------------------------------------------


class ElfError(Exception):
    """The bytes are not an ELF file this reader accepts; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """What one ELF file says about TLS. `error` is set (and the rest empty) when it is unreadable."""

    error: str | None = None
    soname: str | None = None
    exports: dict[str, int] = field(default_factory=dict)  # .dynsym: probe symbol -> file offset
    statics: dict[str, int] = field(default_factory=dict)  # .symtab: probe symbol -> file offset
    go: bool = False  # a Go binary (Go sections or build-info magic)
    go_tls: bool = False  # ... that contains crypto/tls
    tls13: bool = False  # contains a TLS implementation (the TLS 1.3 cipher suite table)
    boringssl: bool = False  # contains BoringSSL
    openssl: bool = False  # contains OpenSSL's libssl (its state machine's source paths)
    openssl_version: str | None = None  # OpenSSL's version text, e.g. "3.0.19" (libcrypto has it)
    notes: tuple[str, ...] = ()  # parts skipped for size, scan cut short

    @property
    def probe_offsets(self) -> dict[str, int]:
        """Probe symbol -> file offset for uprobes, from the dynamic table first, else the full one."""
        return {**self.statics, **self.exports}

    @property
    def probe_ready(self) -> bool:
        """Defines SSL_read and SSL_write where a uprobe can be placed."""
        return all(name in self.exports or name in self.statics for name in REQUIRED_SYMBOLS)

    @property
    def flavor(self) -> str:
        return "boringssl" if self.boringssl else "openssl"


class _Layout(NamedTuple):
    """struct layouts of one ELF class and byte order."""

    order: str
    header: struct.Struct
    segment: struct.Struct
    section: struct.Struct
    symbol: struct.Struct
    dynamic: struct.Struct
    is64: bool


def _layout(is64: bool, little: bool) -> _Layout:
    o = "<" if little else ">"
    if is64:
        return _Layout(
            o,
            struct.Struct(o + "16sHHIQQQIHHHHHH"),
            struct.Struct(o + "IIQQQQQQ"),
            struct.Struct(o + "IIQQQQIIQQ"),
            struct.Struct(o + "IBBHQQ"),
            struct.Struct(o + "qQ"),
            True,
        )
    return _Layout(
        o,
        struct.Struct(o + "16sHHIIIIIHHHHHH"),
        struct.Struct(o + "IIIIIIII"),
        struct.Struct(o + "IIIIIIIIII"),
        struct.Struct(o + "IIIBBH"),
        struct.Struct(o + "iI"),
        False,
    )


_LAYOUTS = {(c, d): _layout(c == 2, d == 1) for c in (1, 2) for d in (1, 2)}


class _Section(NamedTuple):
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    entsize: int


class _Source:
    """Bounded positional reads of a file descriptor or a bytes object."""

    def __init__(self, size: int, pread: Callable[[int, int], bytes]) -> None:
        self.size = size
        self._pread = pread

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError(
                f"{what} ({length} bytes at {offset}) lies beyond the end of the file ({self.size})"
            )
        data = self._pread(offset, length)
        if len(data) != length:
            raise ElfError(f"{what}: the file shrank while being read")
        return data


def _fd_pread(fd: int) -> Callable[[int, int], bytes]:
    def pread(offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            part = os.pread(fd, min(length, 1 << 30), offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
            length -= len(part)
        return b"".join(parts)

    return pread


def inspect_elf_bytes(data: bytes) -> ElfInfo:
    """`inspect_elf` for bytes in memory (tests, fuzzing)."""
    return _inspect(_Source(len(data), lambda offset, length: data[offset : offset + length]))


def inspect_elf(path: str) -> ElfInfo:
    """What the ELF file at `path` says about TLS; a file that cannot be read or parsed gives an
    ElfInfo with `error` set, never an exception."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return ElfInfo(error=f"cannot open: {exc.strerror or exc}")
    try:
        size = os.fstat(fd).st_size
        return _inspect(_Source(size, _fd_pread(fd)))
    except OSError as exc:
        return ElfInfo(error=f"read failed: {exc.strerror or exc}")
    finally:
        os.close(fd)


def _inspect(src: _Source) -> ElfInfo:
    try:
        return _parse(src)
    except ElfError as exc:
        return ElfInfo(error=str(exc))
    except (struct.error, ValueError, IndexError, OverflowError, MemoryError) as exc:  # defence in depth
        return ElfInfo(error=f"malformed ELF: {type(exc).__name__}: {exc}")


def _parse(src: _Source) -> ElfInfo:
    ident = src.read(0, 16, "ELF identification") if src.size >= 16 else b""
    if ident[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    layout = _LAYOUTS.get((ident[4], ident[5]))
    if layout is None:
        raise ElfError(f"unknown ELF class {ident[4]} or byte order {ident[5]}")
    (_, e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = (
        layout.header.unpack(src.read(0, layout.header.size, "ELF header"))
    )
    if e_type not in (_ET_EXEC, _ET_DYN):
        raise ElfError(f"ELF type {e_type} is neither an executable nor a shared object")
    segments = _load_segments(src, layout, phoff, phentsize, phnum)
    sections = _sections(src, layout, shoff, shentsize, shnum, shstrndx)
    notes: list[str] = []

    exports: dict[str, int] = {}
    statics: dict[str, int] = {}
    soname: str | None = None
    for sec in sections:
        if sec.type in (_SHT_DYNSYM, _SHT_SYMTAB):
            found = _probe_symbols(src, layout, sections, sec, segments, notes)
            (exports if sec.type == _SHT_DYNSYM else statics).update(found)
        elif sec.type == _SHT_DYNAMIC and soname is None:
            soname = _soname(src, layout, sections, sec, notes)

    go = any(sec.name in _GO_SECTIONS for sec in sections)
    regions = _data_regions(src.size, sections)
    found_markers, openssl_version = _scan_markers(src, regions, notes)
    go = go or _GO_BUILDINFO in found_markers
    return ElfInfo(
        soname=soname,
        exports=exports,
        statics=statics,
        go=go,
        go_tls=go and _GO_TLS in found_markers,
        tls13=_TLS13 in found_markers,
        boringssl=_BORING in found_markers,
        openssl=_OPENSSL_STATEM in found_markers,
        openssl_version=openssl_version,
        notes=tuple(notes),
    )


def _load_segments(
    src: _Source, layout: _Layout, phoff: int, phentsize: int, phnum: int
) -> list[tuple[int, int, int]]:
    """(vaddr, filesz, offset) of the PT_LOAD segments: how symbol addresses map to file offsets."""
    if phnum == 0 or phoff == 0:
        return []
    if phentsize != layout.segment.size:
        raise ElfError(f"program header entries of {phentsize} bytes (expected {layout.segment.size})")
    table = src.read(phoff, phnum * phentsize, "program header table")
    loads = []
    for entry in layout.segment.iter_unpack(table):
        if layout.is64:
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = entry
        else:
            p_type, p_offset, p_vaddr, _, p_filesz, _, _, _ = entry
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_filesz, p_offset))
    return loads


def _sections(
    src: _Source, layout: _Layout, shoff: int, shentsize: int, shnum: int, shstrndx: int
) -> list[_Section]:
    """The section headers with their names; [] for a file without any (sstripped)."""
    if shoff == 0:
        return []
    if shentsize != layout.section.size:
        raise ElfError(f"section header entries of {shentsize} bytes (expected {layout.section.size})")
    first = layout.section.unpack(src.read(shoff, shentsize, "section header 0"))
    if shnum == 0:  # extended numbering: the count is in section 0's sh_size
        shnum = first[5]
    if shstrndx == _SHN_XINDEX:
        shstrndx = first[6]
    if shnum > MAX_SECTIONS:
        raise ElfError(f"{shnum} sections (more than {MAX_SECTIONS})")
    table = src.read(shoff, shnum * shentsize, "section header table")
    raw = [layout.section.unpack_from(table, i * shentsize) for i in range(shnum)]
    names = b""
    if 0 < shstrndx < shnum:
        s = raw[shstrndx]
        if s[1] != _SHT_NOBITS and s[5] <= MAX_TABLE_BYTES:
            names = src.read(s[4], s[5], "section name table")
    out = []
    for name_off, s_type, flags, _addr, offset, size, link, _info, _align, entsize in raw:
        out.append(_Section(_cstr(names, name_off), s_type, flags, offset, size, link, entsize))
    return out


def _cstr(table: bytes, offset: int, limit: int = 4096) -> str:
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset, offset + limit)
    return table[offset : end if end >= 0 else offset + limit].decode("utf-8", "replace")


def _linked_strings(src: _Source, sections: list[_Section], sec: _Section, notes: list[str]) -> bytes | None:
    """The string table a section links to, or None (bad link, too big: noted)."""
    if not 0 < sec.link < len(sections):
        notes.append(f"{sec.name or 'section'}: string table link {sec.link} out of range")
        return None
    strtab = sections[sec.link]
    if strtab.type == _SHT_NOBITS:
        return None
    if strtab.size > MAX_TABLE_BYTES:
        notes.append(f"{strtab.name}: {strtab.size} bytes, skipped")
        return None
    return src.read(strtab.offset, strtab.size, f"string table {strtab.name}")


def _probe_symbols(
    src: _Source,
    layout: _Layout,
    sections: list[_Section],
    sec: _Section,
    segments: list[tuple[int, int, int]],
    notes: list[str],
) -> dict[str, int]:
    """Probe symbols defined as functions in one symbol table, with their file offsets.

    Instead of decoding every symbol (hundreds of thousands in a static binary), each wanted
    name's offsets in the string table are searched for as a symbol's first field (st_name) at an
    entry boundary. Every occurrence counts: linkers share string tails ("x_SSL_read" holds
    "SSL_read").
    """
    if sec.type == _SHT_NOBITS or sec.size == 0:
        return {}
    strings = _linked_strings(src, sections, sec, notes)
    if strings is None:
        return {}
    wanted = {name: _occurrences(strings, name.encode() + b"\0") for name in PROBE_SYMBOLS}
    if not any(wanted.values()):
        return {}
    if sec.size > MAX_TABLE_BYTES:
        notes.append(f"{sec.name}: {sec.size} bytes, skipped")
        return {}
    entsize = layout.symbol.size
    if sec.entsize not in (0, entsize):
        notes.append(f"{sec.name}: entries of {sec.entsize} bytes, skipped")
        return {}
    table = src.read(sec.offset, sec.size, f"symbol table {sec.name}")
    found: dict[str, int] = {}
    for name, offsets in wanted.items():
        for name_off in offsets:
            st_name = struct.pack(layout.order + "I", name_off)
            offset = _defined_function(table, layout, st_name, segments, src.size)
            if offset is not None:
                found[name] = offset
                break
    return found


def _occurrences(data: bytes, needle: bytes) -> list[int]:
    out: list[int] = []
    pos = data.find(needle)
    while pos != -1 and len(out) < MAX_NAME_HITS:
        out.append(pos)
        pos = data.find(needle, pos + 1)
    return out


def _defined_function(
    table: bytes, layout: _Layout, st_name: bytes, segments: list[tuple[int, int, int]], size: int
) -> int | None:
    """File offset of the first defined function whose st_name is `st_name` and whose code lies in
    the file (an offset past its end is no place for a uprobe), or None."""
    entsize = layout.symbol.size
    pos = table.find(st_name)
    hits = 0
    while pos != -1 and hits < MAX_ENTRY_HITS:
        hits += 1
        if pos % entsize == 0 and pos + entsize <= len(table):
            entry = layout.symbol.unpack_from(table, pos)
            if layout.is64:
                _, info, _, shndx, value, _ = entry
            else:
                _, value, _, info, _, shndx = entry
            if shndx != _SHN_UNDEF and info & 0xF == _STT_FUNC and value:
                offset = _file_offset(value, segments)
                if offset is not None and offset < size:
                    return offset
        pos = table.find(st_name, pos + 1)
    return None


def _file_offset(vaddr: int, segments: list[tuple[int, int, int]]) -> int | None:
    for seg_vaddr, filesz, offset in segments:
        if seg_vaddr <= vaddr < seg_vaddr + filesz:
            return vaddr - seg_vaddr + offset
    return None


def _soname(
    src: _Source, layout: _Layout, sections: list[_Section], sec: _Section, notes: list[str]
) -> str | None:
    if sec.type == _SHT_NOBITS or sec.size > MAX_TABLE_BYTES:
        return None
    strings = _linked_strings(src, sections, sec, notes)
    if strings is None:
        return None
    data = src.read(sec.offset, sec.size - sec.size % layout.dynamic.size, "dynamic section")
    for tag, value in layout.dynamic.iter_unpack(data):
        if tag == _DT_NULL:
            break
        if tag == _DT_SONAME:
            return _cstr(strings, value) or None
    return None


def _data_regions(size: int, sections: list[_Section]) -> list[tuple[int, int]]:
    """File ranges worth searching for markers: allocated, non-code sections with contents (read-only
    data, Go's pclntab); merged, so no byte is read twice. Without sections: the whole file."""
    if not sections:
        return [(0, size)]
    spans = sorted(
        (s.offset, min(s.offset + s.size, size))
        for s in sections
        if s.flags & _SHF_ALLOC
        and not s.flags & _SHF_EXECINSTR
        and s.type != _SHT_NOBITS
        and s.size
        and s.offset < size
    )
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _scan_markers(
    src: _Source, regions: list[tuple[int, int]], notes: list[str]
) -> tuple[set[bytes], str | None]:
    """Which markers occur in `regions`, and OpenSSL's version text; reads CHUNK bytes at a time."""
    found: set[bytes] = set()
    version: str | None = None
    budget = MAX_SCAN_BYTES
    for start, end in regions:
        tail = b""
        pos = start
        while pos < end:
            if budget <= 0:
                notes.append(f"marker search stopped after {MAX_SCAN_BYTES} bytes")
                return found, version
            length = min(CHUNK, end - pos, budget)
            chunk = tail + src.read(pos, length, "data section")
            budget -= length
            pos += length
            for marker in _MARKERS:
                if marker not in found and marker in chunk:
                    found.add(marker)
            if version is None and _OPENSSL_PREFIX in chunk:
                match = _OPENSSL_VERSION.search(chunk)
                if match:
                    version = match.group(1).decode("ascii")
            if version is not None and len(found) == len(_MARKERS):
                return found, version
            tail = chunk[-_OVERLAP:]
    return found, version


# --- reading /proc --------------------------------------------------------------------------------


def _read_proc(path: str, limit: int = MAX_PROC_FILE) -> bytes:
    """A /proc file's bytes (at most `limit`); raises OSError like open/read do."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        total = 0
        while total < limit:
            part = os.read(fd, min(1 << 20, limit - total))
            if not part:
                break
            parts.append(part)
            total += len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


class _Mapping(NamedTuple):
    """One file mapped executable by one process, as /proc/PID/maps shows it."""

    seen: FileKey  # the device and inode in maps (an overlay file: the overlay's)
    path: str  # in the process's mount namespace, " (deleted)" removed
    deleted: bool
    span: str  # "start-end", the name of its /proc/PID/map_files entry


# start-end perms offset major:minor inode path; only executable mappings of files. Anchored on the
# newline before each line rather than on ^ with re.M: a literal prefix is searched 2.5x faster.
_MAPS_LINE = re.compile(
    rb"\n([0-9a-f]+-[0-9a-f]+) ..x. [0-9a-f]+ ([0-9a-f]+):([0-9a-f]+) ([1-9][0-9]*) +(/[^\n]*)"
)
_DELETED = " (deleted)"


def parse_maps(data: bytes) -> dict[FileKey, _Mapping]:
    """The files a process maps executable (its program, shared libraries), one entry per file."""
    out: dict[FileKey, _Mapping] = {}
    for span, major, minor, inode, raw_path in _MAPS_LINE.findall(b"\n" + data):
        key = FileKey(os.makedev(int(major, 16), int(minor, 16)), int(inode))
        if key in out:
            continue
        path = os.fsdecode(raw_path)
        deleted = path.endswith(_DELETED)
        if deleted:
            path = path[: -len(_DELETED)]
        out[key] = _Mapping(key, path, deleted, span.decode("ascii"))
    return out


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash (and, for options, comma) in octal."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def overlay_layers(super_options: str) -> list[str]:
    """An overlay mount's layer directories, top first (upperdir, then the lowerdirs), from the super
    options field of its mountinfo line."""
    upper: list[str] = []
    lowers: list[str] = []
    for option in super_options.split(","):
        name, _, value = option.partition("=")
        if name == "upperdir":
            upper.append(_unescape(value))
        elif name == "lowerdir":
            lowers.extend(_unescape(p).replace("\\:", ":") for p in re.split(r"(?<!\\):", value) if p)
        elif name in ("lowerdir+", "datadir+"):
            lowers.append(_unescape(value))
    return upper + lowers


# --- the scan -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LibFile:
    """One file to attach the uprobes to (a shared library, or an executable with OpenSSL built in)."""

    key: FileKey  # what the uprobe lands on (for overlay files: the layer file underneath)
    path: str  # a path that reaches the file now, from the worker (lingering: the last one known)
    soname: str | None  # "libssl.so.3"; None for an executable
    version: str | None  # "3", "1.1" (from the SONAME), or OpenSSL's version text when built in
    flavor: str  # "openssl" | "boringssl"
    executable: bool  # the file is a program (Node.js exports OpenSSL's symbols), not a library
    offsets: dict[str, int]  # probe symbol -> file offset (uprobe offset)
    pids: frozenset[int]  # processes mapping it in this scan (empty while lingering)

    @property
    def name(self) -> str:
        return self.soname or os.path.basename(self.path)


@dataclass(frozen=True, slots=True)
class ProcTls:
    """One process's TLS coverage."""

    pid: int
    comm: str
    exe: str | None  # /proc/PID/exe as the process sees it
    container: str | None  # 64-hex container id from its cgroup
    verdict: str  # one of VERDICTS
    reason: str  # one line for `podshark doctor` and the hub's stats
    libraries: tuple[FileKey, ...] = ()  # attached files it maps (verdict "traced")
    notes: tuple[str, ...] = ()  # other TLS stacks in the process that are not covered

    @property
    def traced(self) -> bool:
        return self.verdict == TRACED

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the worker's stats message."""
        return {
            "pid": self.pid,
            "comm": self.comm,
            "exe": self.exe,
            "container": self.container,
            "verdict": self.verdict,
            "traced": self.traced,
            "reason": self.reason,
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class Scan:
    """The result of one pass over /proc."""

    libraries: dict[FileKey, LibFile]
    processes: dict[int, ProcTls]
    stats: dict[str, int | float]

    def coverage(self) -> dict[str, int]:
        """Number of processes per verdict (every verdict present, zeros included)."""
        counts = dict.fromkeys(VERDICTS, 0)
        for proc in self.processes.values():
            counts[proc.verdict] += 1
        return counts


@dataclass(frozen=True, slots=True)
class LibDiff:
    """What changed between two scans: files to attach, files to detach."""

    added: tuple[LibFile, ...]
    removed: tuple[LibFile, ...]


def diff(prev: Scan | None, new: Scan) -> LibDiff:
    """Library files in `new` and not in `prev` (attach them), and the reverse (detach them)."""
    before = prev.libraries if prev is not None else {}
    return LibDiff(
        added=tuple(lib for key, lib in new.libraries.items() if key not in before),
        removed=tuple(lib for key, lib in before.items() if key not in new.libraries),
    )


class _Located(NamedTuple):
    path: str
    st: os.stat_result


class _Proc(NamedTuple):
    pid: int
    comm: str
    exe: str | None
    exe_seen: FileKey | None
    maps: dict[FileKey, _Mapping]


class Scanner:
    """Scans /proc for TLS libraries and per-process coverage; caches file analyses across scans."""

    def __init__(self, *, proc_root: str = "/proc", linger: float = DEFAULT_LINGER) -> None:
        self._root = proc_root.rstrip("/") or "/"
        self._linger = linger
        self._files: collections.OrderedDict[tuple[FileKey, int, int], ElfInfo] = collections.OrderedDict()
        self._real: dict[tuple[FileKey, int, int], tuple[FileKey, str] | None] = {}
        self._paths: dict[FileKey, str] = {}  # last path that reached each mapped file
        self._containers: dict[tuple[int, FileKey | None], str | None] = {}
        self._lingering: dict[FileKey, tuple[LibFile, float]] = {}
        self.scans = 0
        self.analyzed = 0  # files read and parsed (cache misses), over the scanner's life

    # --- public -----------------------------------------------------------------------------------

    def scan(self) -> Scan:
        """One pass over every process; see the module doc."""
        started = time.perf_counter()
        now = time.monotonic()
        counts = collections.Counter[str]()
        procs, errors = self._processes(counts)
        mappers: dict[FileKey, list[tuple[int, _Mapping]]] = {}
        for proc in procs:
            for seen, mapping in proc.maps.items():
                mappers.setdefault(seen, []).append((proc.pid, mapping))
        located: dict[FileKey, _Located | None] = {}
        infos: dict[FileKey, ElfInfo | None] = {}
        for seen, users in mappers.items():
            loc = self._locate(seen, users)
            located[seen] = loc
            infos[seen] = self._info(seen, loc, counts) if loc is not None else None
            counts["files_unreachable"] += loc is None

        libraries: dict[FileKey, LibFile] = {}
        real_of: dict[FileKey, FileKey] = {}
        for seen, info in infos.items():
            loc = located[seen]
            if info is None or loc is None or not info.probe_ready:
                continue
            real, path = self._real_key(seen, loc, mappers[seen][0], counts)
            real_of[seen] = real
            pids = frozenset(pid for pid, _ in mappers[seen])
            existing = libraries.get(real)
            if existing is not None:  # one layer file behind several overlay mounts
                libraries[real] = dataclasses.replace(existing, pids=existing.pids | pids)
                continue
            is_exe = any(p.exe_seen == seen for p in procs if p.pid in pids)
            libraries[real] = LibFile(
                key=real,
                path=path,
                soname=None if is_exe else info.soname,
                version=_version(info, is_exe),
                flavor=info.flavor,
                executable=is_exe,
                offsets={n: info.probe_offsets[n] for n in PROBE_SYMBOLS if n in info.probe_offsets},
                pids=pids,
            )

        processes: dict[int, ProcTls] = {}
        for proc in procs:
            processes[proc.pid] = self._verdict(proc, infos, real_of, libraries)
        for pid, (comm, exe, reason) in errors.items():
            processes[pid] = ProcTls(pid, comm, exe, self._container(pid, None), UNREADABLE, reason)

        for key, lib in libraries.items():
            self._lingering[key] = (lib, now)
        for key, (lib, last) in list(self._lingering.items()):
            if key in libraries:
                continue
            if now - last > self._linger:
                del self._lingering[key]
            else:
                libraries[key] = dataclasses.replace(lib, pids=frozenset())
                counts["libraries_lingering"] += 1

        live = set(mappers)
        self._paths = {k: v for k, v in self._paths.items() if k in live}
        if len(self._containers) > 4 * len(procs) + 1024:
            alive = {p.pid for p in procs}
            self._containers = {k: v for k, v in self._containers.items() if k[0] in alive}
        self.scans += 1
        stats: dict[str, int | float] = {
            "processes": len(processes),
            "files": len(mappers),
            **counts,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        return Scan(libraries=libraries, processes=processes, stats=stats)

    # --- processes --------------------------------------------------------------------------------

    def _processes(
        self, counts: collections.Counter[str]
    ) -> tuple[list[_Proc], dict[int, tuple[str, str | None, str]]]:
        """Every user-space process with its executable mappings; and those that could not be read."""
        procs: list[_Proc] = []
        errors: dict[int, tuple[str, str | None, str]] = {}
        try:
            names = os.listdir(self._root)
        except OSError as exc:
            log.warning("TLS coverage: cannot list %s: %s", self._root, exc)
            return procs, errors
        for name in names:
            if not name.isdigit():
                continue
            pid = int(name)
            base = f"{self._root}/{pid}"
            try:
                comm = _read_proc(f"{base}/comm", 64).decode("utf-8", "replace").strip()
            except OSError:
                continue  # exited
            exe: str | None
            try:
                exe = os.readlink(f"{base}/exe")
            except PermissionError:
                exe = None
            except OSError:
                counts["no_executable"] += 1  # kernel threads and zombies
                continue
            try:
                maps = parse_maps(_read_proc(f"{base}/maps"))
            except PermissionError as exc:
                counts["unreadable"] += 1
                errors[pid] = (
                    comm,
                    exe,
                    f"cannot read {base}/maps: {exc.strerror}; run the worker as root (with hostPID)",
                )
                continue
            except OSError:
                continue  # exited meanwhile
            if not maps:
                counts["no_executable"] += 1
                continue
            exe_seen: FileKey | None = None
            try:
                st = os.stat(f"{base}/exe")
                exe_seen = FileKey(st.st_dev, st.st_ino)
            except OSError:
                pass
            if exe is not None and exe.endswith(_DELETED):
                exe = exe[: -len(_DELETED)]
            procs.append(_Proc(pid, comm, exe, exe_seen, maps))
        return procs, errors

    def _container(self, pid: int, exe_seen: FileKey | None) -> str | None:
        """The container of a process, read once per (pid, executable): exec can move it, nothing else."""
        key = (pid, exe_seen)
        if key not in self._containers:
            try:
                text = _read_proc(f"{self._root}/{pid}/cgroup", 1 << 16).decode("utf-8", "replace")
            except OSError:
                return None
            self._containers[key] = container_id(text)
        return self._containers[key]

    # --- files ------------------------------------------------------------------------------------

    def _candidates(self, seen: FileKey, users: list[tuple[int, _Mapping]]) -> Iterator[str]:
        """Paths that may reach a mapped file from here, most readable and durable first."""
        known = self._paths.get(seen)
        if known is not None:
            yield known
        for pid, mapping in users[:4]:
            if not mapping.deleted:
                if self._root == "/proc":
                    yield mapping.path  # the worker's own root, when it shares the process's
                yield f"{self._root}/{pid}/root{mapping.path}"
            yield f"{self._root}/{pid}/map_files/{mapping.span}"

    def _locate(self, seen: FileKey, users: list[tuple[int, _Mapping]]) -> _Located | None:
        """A path that reaches the mapped file itself (stat gives its dev and inode), or None."""
        for path in self._candidates(seen, users):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_dev == seen.dev and st.st_ino == seen.ino and stat.S_ISREG(st.st_mode):
                self._paths[seen] = path
                return _Located(path, st)
        return None

    def _info(self, seen: FileKey, loc: _Located, counts: collections.Counter[str]) -> ElfInfo:
        """The file's analysis, from the cache when (dev, ino, mtime, size) are unchanged."""
        key = (seen, loc.st.st_mtime_ns, loc.st.st_size)
        info = self._files.get(key)
        if info is not None:
            self._files.move_to_end(key)
            counts["cache_hits"] += 1
            return info
        info = inspect_elf(loc.path)
        self.analyzed += 1
        counts["files_analyzed"] += 1
        if info.error is not None:
            counts["files_unparsable"] += 1
        self._files[key] = info
        if len(self._files) > FILE_CACHE_ENTRIES:
            self._files.popitem(last=False)
        return info

    def _real_key(
        self, seen: FileKey, loc: _Located, user: tuple[int, _Mapping], counts: collections.Counter[str]
    ) -> tuple[FileKey, str]:
        """The key a uprobe on this file lands on, and a path to it (see the module doc on overlays)."""
        if os.major(seen.dev) != 0:  # overlay (like tmpfs, btrfs) has an anonymous device
            return seen, loc.path
        cache_key = (seen, loc.st.st_mtime_ns, loc.st.st_size)
        if cache_key not in self._real:
            if len(self._real) > FILE_CACHE_ENTRIES:
                self._real.clear()
            self._real[cache_key] = self._overlay_layer_file(user[0], user[1].path, loc.st, counts)
        resolved = self._real[cache_key]
        if resolved is None:
            return seen, loc.path
        counts["overlay_resolved"] += 1
        return resolved

    def _overlay_layer_file(
        self, pid: int, path: str, st: os.stat_result, counts: collections.Counter[str]
    ) -> tuple[FileKey, str] | None:
        """For a file on an overlay mount, the layer file underneath it; None when not on an overlay
        (or unresolvable: counted)."""
        try:
            text = _read_proc(f"{self._root}/{pid}/mountinfo", 16 << 20).decode("utf-8", "surrogateescape")
        except OSError:
            return None
        want = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        best: tuple[str, str, str] | None = None
        for line in text.splitlines():
            left, sep, right = line.partition(" - ")
            fields, tail = left.split(" "), right.split(" ")
            if not sep or len(fields) < 5 or len(tail) < 3 or fields[2] != want:
                continue
            if tail[0] != "overlay":
                return None
            root, point = _unescape(fields[3]), _unescape(fields[4])
            prefix = point.rstrip("/") + "/"
            if path.startswith(prefix) and (best is None or len(point) > len(best[1])):
                best = (root, point, tail[2])
        if best is None:
            return None
        root, point, options = best
        relative = root.rstrip("/") + path[len(point.rstrip("/")) :]
        # Layer paths are as the mounter (containerd, on the host) wrote them: reach them through
        # init's root, else our own root (a worker sharing the host's), else the process's own root.
        prefixes = [f"{self._root}/1/root", f"{self._root}/{pid}/root"]
        if self._root == "/proc":
            prefixes.insert(1, "")
        for layer in overlay_layers(options):
            cst = _first_stat(f"{prefix}{layer.rstrip('/')}{relative}" for prefix in prefixes)
            if cst is None:
                continue
            path_found, cst_st = cst
            same = (
                stat.S_ISREG(cst_st.st_mode)
                and cst_st.st_size == st.st_size
                and cst_st.st_mtime_ns == st.st_mtime_ns
                and (cst_st.st_ino ^ st.st_ino) & 0xFFFFFFFF == 0  # equal, or equal below xino's high bits
            )
            if same:
                return FileKey(cst_st.st_dev, cst_st.st_ino), path_found
            break  # the topmost layer holding the path is the one the overlay shows
        counts["overlay_unresolved"] += 1
        log.info("TLS libraries: %s of pid %d is on an overlay whose layer file was not found", path, pid)
        return None

    # --- verdicts ---------------------------------------------------------------------------------

    def _verdict(
        self,
        proc: _Proc,
        infos: dict[FileKey, ElfInfo | None],
        real_of: dict[FileKey, FileKey],
        libraries: dict[FileKey, LibFile],
    ) -> ProcTls:
        container = self._container(proc.pid, proc.exe_seen)
        exe_info = infos.get(proc.exe_seen) if proc.exe_seen is not None else None
        # the executable first: its own TLS stack is the likelier one to name
        order = sorted(proc.maps, key=lambda seen: seen != proc.exe_seen)
        files = [(seen, proc.maps[seen].path, infos.get(seen)) for seen in order]
        traced = list(dict.fromkeys(real_of[seen] for seen, _, _ in files if seen in real_of))
        uncovered = list(_uncovered(proc, files))

        def make(verdict: str, reason: str, notes: Iterable[str] = ()) -> ProcTls:
            return ProcTls(
                proc.pid, proc.comm, proc.exe, container, verdict, reason, tuple(traced), tuple(notes)
            )

        if traced:
            lib = libraries[traced[0]]
            stack = " ".join(filter(None, (_FLAVOR_NAMES[lib.flavor], lib.version)))
            where = f"the executable ({stack} built in)" if lib.executable else f"{lib.name} ({stack})"
            return make(TRACED, f"SSL_read/SSL_write probed in {where}", (text for _, text in uncovered))
        if uncovered:
            verdict, text = uncovered[0]
            return make(verdict, text, (t for _, t in uncovered[1:]))
        if exe_info is None or exe_info.error is not None:
            why = exe_info.error if exe_info is not None else "not reachable from the worker"
            return make(UNREADABLE, f"executable {proc.exe or '?'}: {why}; its TLS is unknown")
        if exe_info.go:
            return make(NO_TLS, "Go binary without crypto/tls")
        return make(NO_TLS, "no TLS library mapped and none built in")


def _uncovered(proc: _Proc, files: list[tuple[FileKey, str, ElfInfo | None]]) -> Iterator[tuple[str, str]]:
    """(verdict, reason) for each TLS stack in the process that the probes do not reach."""
    for seen, path, info in files:
        if info is None or info.error is not None or info.probe_ready:
            continue
        where = "the executable" if seen == proc.exe_seen else info.soname or os.path.basename(path)
        if info.go_tls:
            yield (
                STATIC_GO,
                f"Go crypto/tls in {where}: Go's own TLS, not OpenSSL; its plaintext is not traced",
            )
        elif info.tls13 and info.boringssl:
            yield (
                STATIC_BORINGSSL,
                f"BoringSSL built into {where} without SSL_read/SSL_write symbols: not traced",
            )
        elif info.tls13 and info.openssl:
            yield (
                STATIC_OPENSSL,
                f"{' '.join(filter(None, ('OpenSSL', info.openssl_version)))} built into {where} "
                "without SSL_read/SSL_write symbols: not traced",
            )
        elif info.tls13:
            yield (
                OTHER_TLS,
                f"{where} implements TLS without SSL_read/SSL_write (GnuTLS, NSS...): "
                "connections made through it are not traced",
            )


def _first_stat(paths: Iterable[str]) -> tuple[str, os.stat_result] | None:
    for path in paths:
        try:
            return path, os.stat(path)
        except OSError:
            continue
    return None


def _version(info: ElfInfo, executable: bool) -> str | None:
    if not executable and info.soname and ".so." in info.soname:
        return info.soname.split(".so.", 1)[1]
    return info.openssl_version
