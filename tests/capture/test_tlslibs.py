"""TLS library discovery and per-process TLS coverage from /proc: `capture.tlslibs`.

Ground truth never comes from the module under test:

- which functions a file defines, and where: ``nm`` / ``nm -D`` with ``readelf -lW``'s LOAD segments
  (file offset = address - segment address + segment offset), ``readelf -d`` for the SONAME,
  ``readelf -h`` for where the section header table lies;
- which file a process maps: the test's own reading of /proc/PID/maps (device and inode), ``ldd``,
  and ``os.stat`` of files the test created, copied, bind-mounted or put under an overlay;
- what a binary is: ``file`` (Go BuildID), ``grep -a`` for crypto/tls and BoringSSL, and binaries the
  test compiles itself (OpenSSL linked statically, with and without symbols; marker strings).

The processes are ours: a Python holder that dlopens a given library (ctypes) and waits on stdin,
curl and a Go client blocked on a listening socket that never answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture import tlslibs
from capture.procs import container_id
from capture.tlslibs import (
    NO_TLS,
    OTHER_TLS,
    PROBE_SYMBOLS,
    STATIC_BORINGSSL,
    STATIC_GO,
    STATIC_OPENSSL,
    TRACED,
    UNREADABLE,
    ElfInfo,
    FileKey,
    Scanner,
    diff,
    inspect_elf,
    inspect_elf_bytes,
    overlay_layers,
    parse_maps,
)

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
#: dlopen argv[1] (when given), say "ok <pid>" in one write (holders may share a pipe), wait for stdin
HOLD = (
    "import ctypes, os, sys\n"
    "if sys.argv[1:]: ctypes.CDLL(sys.argv[1])\n"
    "os.write(1, b'ok %d\\n' % os.getpid())\n"
    "sys.stdin.read()"
)
HOLD_SSL = "import ssl, os, sys\nos.write(1, b'ok %d\\n' % os.getpid())\nsys.stdin.read()"

ns_group = pytest.mark.xdist_group("capture-tlslibs")


# --- ground truth from system tools ---------------------------------------------------------------


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60).stdout


def ldd_path(binary: str, soname: str) -> str:
    """The file `binary` loads for `soname`, as ldd resolves it."""
    for line in _run("ldd", binary).splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name == soname:
            return os.path.realpath(rest.split(" (")[0])
    raise AssertionError(f"ldd {binary} does not list {soname}")


CURL = shutil.which("curl") or "/usr/bin/curl"
SYSTEM_LIBSSL = ldd_path(CURL, "libssl.so.3") if shutil.which("ldd") and os.path.exists(CURL) else ""
SYSTEM_LIBCRYPTO = ldd_path(CURL, "libcrypto.so.3") if SYSTEM_LIBSSL else ""


def load_segments(path: str) -> list[tuple[int, int, int]]:
    """(vaddr, filesz, offset) of each LOAD segment, from readelf -lW."""
    out = []
    for line in _run("readelf", "-lW", path).splitlines():
        fields = line.split()
        if fields[:1] == ["LOAD"]:
            offset, vaddr, _paddr, filesz = (int(f, 16) for f in fields[1:5])
            out.append((vaddr, filesz, offset))
    return out


def defined_functions(path: str, *, dynamic: bool) -> dict[str, int]:
    """Probe symbols `path` defines as code, name -> file offset, from nm (-D) and readelf."""
    segments = load_segments(path)
    found: dict[str, int] = {}
    args = ["nm", "--defined-only", *(["-D"] if dynamic else []), path]
    for line in _run(*args).splitlines():
        fields = line.split()
        if len(fields) != 3 or fields[1] not in ("T", "t"):
            continue
        name = fields[2].split("@")[0]
        if name in PROBE_SYMBOLS and name not in found:
            value = int(fields[0], 16)
            for vaddr, filesz, offset in segments:
                if vaddr <= value < vaddr + filesz:
                    found[name] = value - vaddr + offset
    return found


def soname_of(path: str) -> str | None:
    match = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", _run("readelf", "-d", path))
    return match.group(1) if match else None


def maps_of(pid: int) -> dict[str, FileKey]:
    """path -> (dev, ino) of the files `pid` maps executable, read here from /proc/PID/maps."""
    out: dict[str, FileKey] = {}
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[1][2] == "x" and fields[4] != "0":
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                path = fields[5].rstrip("\n").removesuffix(" (deleted)")
                out.setdefault(path, FileKey(os.makedev(major, minor), int(fields[4])))
    return out


def key_of(path: str) -> FileKey:
    st_ = os.stat(path)
    return FileKey(st_.st_dev, st_.st_ino)


def go_binaries() -> list[str]:
    """Go executables on this machine, as `file` names them."""
    found = []
    for name in ("docker", "kubectl", "terraform", "helm", "crictl", "containerd", "gh"):
        path = shutil.which(name)
        if path and "Go BuildID" in _run("file", "-L", path):
            found.append(os.path.realpath(path))
    return found


def contains(path: str, text: str) -> bool:
    """grep -a: does the file hold these bytes?"""
    return subprocess.run(["grep", "-q", "-a", "-F", text, path], check=False).returncode == 0


needs_libssl = pytest.mark.skipif(
    not SYSTEM_LIBSSL, reason="no libssl.so.3 (curl's, per ldd) on this machine"
)


# --- processes ------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(argv: list[str], *, ready: int = 1) -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours, killed (its whole session) on the way out; waits for `ready` "ok" lines."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, start_new_session=True
        )
        try:
            if ready:
                lines = ready_lines(proc, ready)
                if len(lines) < ready or not all(line.startswith(b"ok") for line in lines):
                    errors.seek(0)
                    raise AssertionError(f"{argv[:3]} did not start: {lines!r} {errors.read()[-2000:]!r}")
                proc.ready = lines  # type: ignore[attr-defined]
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def ready_lines(proc: subprocess.Popen[bytes], count: int, timeout: float = 20) -> list[bytes]:
    """The first `count` lines the process prints (fewer if it exits or `timeout` passes)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 4096) if readable else b""
        if not chunk:
            break
        data += chunk
    return data.splitlines()[:count]


def in_mount_ns(script: str, *args: str) -> list[str]:
    """argv: a shell in a private mount namespace running `script` (which execs the holder)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *args]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers: clients wait."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def wait_connected(port: int, pid: int, timeout: float = 20) -> None:
    """Until process `pid` holds a TCP connection to 127.0.0.1:`port` (it is up and blocked)."""
    deadline = time.monotonic() + timeout
    want = f":{port:04X}"
    while time.monotonic() < deadline:
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if fields[2].endswith(want) and fields[9] in inodes:
                    return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never connected to port {port}")


# --- the ELF reader against nm/readelf ------------------------------------------------------------


@needs_libssl
@pytest.mark.parametrize("which", ["libssl", "libcrypto", "curl", "python _ssl"])
def test_elf_reader_agrees_with_nm_and_readelf(which: str) -> None:
    import _ssl

    path = {
        "libssl": SYSTEM_LIBSSL,
        "libcrypto": SYSTEM_LIBCRYPTO,
        "curl": os.path.realpath(CURL),
        "python _ssl": str(_ssl.__file__),
    }[which]
    info = inspect_elf(path)
    assert info.error is None
    assert info.exports == defined_functions(path, dynamic=True)
    assert info.soname == soname_of(path)
    # curl and _ssl import SSL_read (undefined in their tables): they are not probe targets
    assert info.probe_ready == (which == "libssl")
    assert not info.go


@needs_libssl
def test_libssl_offsets_are_where_nm_puts_the_functions() -> None:
    expected = defined_functions(SYSTEM_LIBSSL, dynamic=True)
    assert {"SSL_read", "SSL_write", "SSL_set_fd", "SSL_free"} <= set(expected)
    assert inspect_elf(SYSTEM_LIBSSL).probe_offsets == expected
    assert inspect_elf(SYSTEM_LIBSSL).tls13 == contains(SYSTEM_LIBSSL, "TLS_AES_128_GCM_SHA256")


def test_go_binaries_are_recognized() -> None:
    binaries = go_binaries()
    if not binaries:
        pytest.skip("no Go binary on this machine (`file` names none among docker, kubectl, ...)")
    for path in binaries:
        info = inspect_elf(path)
        assert info.error is None, path
        assert info.go, path
        assert info.go_tls == contains(path, "crypto/tls."), path
        assert not info.probe_ready


def test_not_elf_and_missing_files_are_clean_errors(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    assert inspect_elf(str(script)).error == "not an ELF file"
    assert inspect_elf(str(tmp_path / "absent")).error is not None
    assert inspect_elf_bytes(b"").error == "not an ELF file"
    assert inspect_elf_bytes(b"\x7fELF\x03\x01" + bytes(58)).error is not None  # no such class


@needs_libssl
def test_truncated_libssl_is_unreadable_below_its_section_table() -> None:
    data = Path(SYSTEM_LIBSSL).read_bytes()
    header = _run("readelf", "-hW", SYSTEM_LIBSSL)
    shoff = int(re.search(r"Start of section headers:\s+(\d+)", header).group(1))  # type: ignore[union-attr]
    shnum = int(re.search(r"Number of section headers:\s+(\d+)", header).group(1))  # type: ignore[union-attr]
    table_end = shoff + shnum * 64
    for cut in (0, 4, 16, 63, 64, 4096, shoff, table_end - 1):
        info = inspect_elf_bytes(data[:cut])
        assert info.error is not None, cut
        assert not info.probe_ready
    if table_end == len(data):
        assert inspect_elf_bytes(data).probe_ready


# --- hostile bytes --------------------------------------------------------------------------------

_TRUE = Path("/usr/bin/true").read_bytes() if os.path.exists("/usr/bin/true") else b""
_ELF_MAGIC = b"\x7fELF"


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=4096).map(lambda b: _ELF_MAGIC + b),
        st.tuples(
            st.sampled_from([1, 2]), st.sampled_from([1, 2]), st.binary(min_size=48, max_size=2048)
        ).map(lambda t: _ELF_MAGIC + bytes([t[0], t[1], 1]) + bytes(9) + t[2]),
    )
)
def test_random_elf_bytes_give_a_verdict_not_an_exception(data: bytes) -> None:
    info = inspect_elf_bytes(data)
    assert isinstance(info, ElfInfo)
    assert all(0 <= offset < len(data) for offset in info.probe_offsets.values())


@pytest.mark.skipif(not _TRUE, reason="no /usr/bin/true to mutate")
@given(
    edits=st.lists(
        st.tuples(st.integers(0, max(len(_TRUE) - 1, 0)), st.binary(min_size=1, max_size=8)), max_size=12
    ),
    cut=st.one_of(st.none(), st.integers(0, len(_TRUE))),
)
def test_mutated_real_elf_gives_a_verdict_not_an_exception(
    edits: list[tuple[int, bytes]], cut: int | None
) -> None:
    data = bytearray(_TRUE)
    for offset, patch in edits:
        data[offset : offset + len(patch)] = patch
    blob = bytes(data[:cut] if cut is not None else data)
    info = inspect_elf_bytes(blob)
    assert isinstance(info, ElfInfo)
    assert all(0 <= offset < len(blob) for offset in info.probe_offsets.values())


def _elf64_header(*, shoff: int, shnum: int, shentsize: int = 64, shstrndx: int = 0) -> bytes:
    ident = _ELF_MAGIC + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 56, 0, shentsize, shnum, shstrndx
    )


def test_hostile_headers_are_named_in_the_error() -> None:
    assert "beyond" in (inspect_elf_bytes(_elf64_header(shoff=1 << 40, shnum=3)).error or "")
    assert "section header entries of 12 bytes" in (
        inspect_elf_bytes(_elf64_header(shoff=64, shnum=3, shentsize=12)).error or ""
    )
    # extended numbering claiming 2**40 sections in section 0's sh_size
    section0 = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 1 << 40, 0, 0, 0, 0)
    assert "sections (more than" in (
        inspect_elf_bytes(_elf64_header(shoff=64, shnum=0) + section0).error or ""
    )


def build_elf(
    symbols: list[tuple[str, int, int, int]],
    *,
    is64: bool = True,
    little: bool = True,
    load: tuple[int, int] = (0x400000, 0),
    soname: str | None = None,
    rodata: bytes = b"",
) -> bytes:
    """A minimal shared object: one LOAD segment (vaddr, offset) covering the file, .dynsym with
    `symbols` as (name, value, shndx, st_info), .dynstr, .dynamic (SONAME), .rodata and .shstrtab."""
    o = "<" if little else ">"
    if is64:
        ehdr, phdr, shdr = (
            struct.Struct(o + "16sHHIQQQIHHHHHH"),
            struct.Struct(o + "IIQQQQQQ"),
            struct.Struct(o + "IIQQQQIIQQ"),
        )
        sym, dyn = struct.Struct(o + "IBBHQQ"), struct.Struct(o + "qQ")
    else:
        ehdr, phdr, shdr = (
            struct.Struct(o + "16sHHIIIIIHHHHHH"),
            struct.Struct(o + "IIIIIIII"),
            struct.Struct(o + "IIIIIIIIII"),
        )
        sym, dyn = struct.Struct(o + "IIIBBH"), struct.Struct(o + "iI")
    dynstr = b"\0"
    names = {}
    for name in [s[0] for s in symbols] + ([soname] if soname else []):
        if name not in names:
            names[name] = len(dynstr)
            dynstr += name.encode() + b"\0"
    dynsym = bytes(sym.size)
    for name, value, shndx, info in symbols:
        fields = (names[name], info, 0, shndx, value, 0) if is64 else (names[name], value, 0, info, 0, shndx)
        dynsym += sym.pack(*fields)
    dynamic = (dyn.pack(14, names[soname]) if soname else b"") + dyn.pack(0, 0)
    shstrtab = b"\0.dynsym\0.dynstr\0.dynamic\0.rodata\0.shstrtab\0"
    name_at = {
        n: shstrtab.index(n.encode() + b"\0")
        for n in (".dynsym", ".dynstr", ".dynamic", ".rodata", ".shstrtab")
    }
    body_start = ehdr.size + phdr.size
    parts, offsets, pos = [], {}, body_start
    for name, blob in (
        (".dynsym", dynsym),
        (".dynstr", dynstr),
        (".dynamic", dynamic),
        (".rodata", rodata),
        (".shstrtab", shstrtab),
    ):
        offsets[name] = pos
        parts.append(blob)
        pos += len(blob)
    shoff = pos
    total = shoff + 6 * shdr.size
    vaddr, offset = load
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1]) + bytes(9)
    header = ehdr.pack(ident, 3, 62, 1, 0, ehdr.size, shoff, 0, ehdr.size, phdr.size, 1, shdr.size, 6, 5)
    if is64:
        size = abs(total - offset)
        program = phdr.pack(1, 5, offset, vaddr, vaddr, size, size, 0x1000)
    else:
        size = abs(total - offset) & 0xFFFFFFFF
        program = phdr.pack(1, offset, vaddr, vaddr, size, size, 5, 0x1000)
    sections = bytes(shdr.size)
    table = (
        (".dynsym", 11, 2, 2, sym.size, dynsym),
        (".dynstr", 3, 2, 0, 0, dynstr),
        (".dynamic", 6, 3, 2, dyn.size, dynamic),
        (".rodata", 1, 2, 0, 0, rodata),
        (".shstrtab", 3, 0, 0, 0, shstrtab),
    )
    for name, s_type, flags, link, entsize, blob in table:
        sections += shdr.pack(name_at[name], s_type, flags, 0, offsets[name], len(blob), link, 0, 1, entsize)
    return header + program + b"".join(parts) + sections


@pytest.mark.parametrize(("is64", "little"), [(True, True), (True, False), (False, True), (False, False)])
def test_constructed_elf_symbols_soname_and_markers(is64: bool, little: bool) -> None:
    func, obj, undef = 0x12, 0x11, 0  # st_info: GLOBAL FUNC, GLOBAL OBJECT; shndx 0 = undefined
    symbols = [
        ("SSL_read", 0x401000, 7, func),
        ("SSL_write", 0x401100, 7, func),
        ("SSL_free", 0x401200, undef, func),  # imported, not defined: no probe
        ("SSL_set_fd", 0x401300, 7, obj),  # not a function: no probe
        ("SSL_read_ex", 0x999999, 7, func),  # outside the file: no probe
    ]
    data = build_elf(
        symbols,
        is64=is64,
        little=little,
        load=(0x400000, 0),
        soname="libssl.so.9",
        rodata=b"x BoringSSL y".ljust(0x2000),
    )
    info = inspect_elf_bytes(data)
    assert info.error is None
    assert info.exports == {"SSL_read": 0x1000, "SSL_write": 0x1100}
    assert info.soname == "libssl.so.9"
    assert info.probe_ready and info.boringssl and not info.tls13 and not info.go


@given(
    symbols=st.lists(
        st.tuples(
            st.sampled_from([*PROBE_SYMBOLS, "x", "SSL_readx"]),
            st.integers(0, 2**64 - 1),
            st.integers(0, 0xFFFF),
            st.integers(0, 255),
        ),
        max_size=8,
    ),
    load=st.tuples(st.integers(0, 2**63), st.integers(0, 2**40)),
    is64=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), max_size=6),
)
def test_structured_hostile_elf_gives_a_verdict_not_an_exception(
    symbols: list[tuple[str, int, int, int]], load: tuple[int, int], is64: bool, edits: list[tuple[int, int]]
) -> None:
    """Well-formed skeletons with hostile values (addresses, indexes, offsets) and byte edits, so the
    symbol lookup itself meets the garbage, not just the header checks."""
    if not is64:
        symbols = [(n, v & 0xFFFFFFFF, x, i) for n, v, x, i in symbols]
        load = (load[0] & 0xFFFFFFFF, load[1] & 0xFFFFFFFF)
    data = bytearray(build_elf(symbols, is64=is64, load=load, soname="libssl.so.3"))
    for at, value in edits:
        if at < len(data):
            data[at] = value
    info = inspect_elf_bytes(bytes(data))
    assert isinstance(info, ElfInfo)
    assert all(0 <= offset < len(data) for offset in info.probe_offsets.values())


# --- small parsers ----------------------------------------------------------------------------------


def test_parse_maps_keeps_executable_file_mappings_only() -> None:
    text = textwrap.dedent(
        """\
        55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1311 /usr/bin/cat
        55d0c0a02000-55d0c0a07000 r-xp 00002000 fe:01 1311 /usr/bin/cat
        7f0000000000-7f0000001000 r-xp 00000000 00:2a 77 /tmp/my dir/libssl.so.3 (deleted)
        7f0000002000-7f0000003000 rw-p 00000000 fe:01 99 /usr/lib/libz.so.1
        7f0000004000-7f0000005000 r-xp 00000000 00:00 0 [vdso]
        7f0000006000-7f0000007000 r-xp 00000000 00:00 0
        7f0000008000-7f0000009000 r-xp 00001000 fe:01 1311 /usr/bin/cat
        """
    ).encode()
    maps = parse_maps(text)
    cat = FileKey(os.makedev(0xFE, 1), 1311)
    lib = FileKey(os.makedev(0, 0x2A), 77)
    assert list(maps) == [cat, lib]
    assert maps[cat].path == "/usr/bin/cat" and maps[cat].span == "55d0c0a02000-55d0c0a07000"
    assert maps[lib].path == "/tmp/my dir/libssl.so.3" and maps[lib].deleted


def test_overlay_layers_top_first_with_escapes() -> None:
    options = r"rw,lowerdir=/l/1:/l/a\:b:/l/sp\040ace::/data,upperdir=/u/x\054y,workdir=/w,uuid=on"
    assert overlay_layers(options) == ["/u/x,y", "/l/1", "/l/a:b", "/l/sp ace", "/data"]
    assert overlay_layers("rw,lowerdir+=/a,lowerdir+=/b,upperdir=/u") == ["/u", "/a", "/b"]


# --- live processes -------------------------------------------------------------------------------


@needs_libssl
def test_python_ssl_and_curl_are_traced_through_the_system_libssl(silent_port: int) -> None:
    curl = [CURL, "-s", "--max-time", "120", f"http://127.0.0.1:{silent_port}/"]
    with (
        running([PY, "-c", HOLD_SSL]) as py_ssl,
        running([PY, "-S", "-c", HOLD]) as py_plain,
        running(curl, ready=0) as curl_proc,
    ):
        wait_connected(silent_port, curl_proc.pid)
        expected = key_of(SYSTEM_LIBSSL)
        assert maps_of(py_ssl.pid).get(SYSTEM_LIBSSL) == expected  # what the test itself sees
        assert maps_of(curl_proc.pid).get(SYSTEM_LIBSSL) == expected
        assert not any("libssl" in path for path in maps_of(py_plain.pid))
        scan = Scanner().scan()

    lib = scan.libraries[expected]
    assert {py_ssl.pid, curl_proc.pid} <= lib.pids
    assert py_plain.pid not in lib.pids
    assert key_of(lib.path) == expected
    assert lib.soname == soname_of(SYSTEM_LIBSSL) and lib.version == "3" and not lib.executable
    assert lib.offsets == defined_functions(SYSTEM_LIBSSL, dynamic=True)
    with open(f"/proc/{os.getpid()}/cgroup") as cgroup:
        container = container_id(cgroup.read())
    for proc, comm in ((py_ssl, "python"), (curl_proc, "curl")):
        tls = scan.processes[proc.pid]
        assert tls.verdict == TRACED and tls.traced
        assert tls.libraries == (expected,)
        assert "libssl.so.3" in tls.reason
        assert tls.comm.startswith(comm)
        assert tls.container == container
    assert scan.processes[curl_proc.pid].exe == os.path.realpath(CURL)
    assert scan.processes[py_plain.pid].verdict == NO_TLS
    assert scan.coverage()[TRACED] >= 2


@needs_libssl
@pytest.mark.root
@ns_group
def test_mount_namespaces_copies_and_bind_mounts(tmp_path: Path) -> None:
    """A copy is another file; the same file bind-mounted elsewhere in another mount namespace is not;
    a file only visible inside a namespace (its own tmpfs) is reached through /proc/PID/root."""
    copy = tmp_path / "copy" / "libssl.so.3"
    copy.parent.mkdir()
    shutil.copy(SYSTEM_LIBSSL, copy)
    bind = tmp_path / "bind" / "libssl.so.3"
    bind.parent.mkdir()
    bind.write_bytes(b"")  # the mount point: another inode, seen as such from the root namespace
    private = tmp_path / "private"
    private.mkdir()
    bind_script = 'mount --bind "$1" "$2" && exec "$3" -c "$4" "$2"'
    tmpfs_script = 'mount -t tmpfs psk-tls "$1" && cp "$2" "$1/" && exec "$3" -c "$4" "$1/libssl.so.3"'
    with (
        running([PY, "-c", HOLD, str(copy)]) as by_copy,
        running(in_mount_ns(bind_script, SYSTEM_LIBSSL, str(bind), PY, HOLD)) as by_bind,
        running(in_mount_ns(tmpfs_script, str(private), SYSTEM_LIBSSL, PY, HOLD)) as by_tmpfs,
    ):
        private_key = maps_of(by_tmpfs.pid)[f"{private}/libssl.so.3"]
        assert maps_of(by_bind.pid)[str(bind)] == key_of(SYSTEM_LIBSSL)
        scan = Scanner().scan()
        private_lib = scan.libraries[private_key]
        assert private_lib.path == f"/proc/{by_tmpfs.pid}/root{private}/libssl.so.3"
        assert key_of(private_lib.path) == private_key
        for lib in scan.libraries.values():
            if lib.pids:
                assert key_of(lib.path) == lib.key  # every path reaches its file now

    assert key_of(str(copy)) != key_of(SYSTEM_LIBSSL)
    assert scan.libraries[key_of(str(copy))].pids >= {by_copy.pid}
    assert by_bind.pid in scan.libraries[key_of(SYSTEM_LIBSSL)].pids  # attached once with the host's
    assert scan.processes[by_bind.pid].libraries == (key_of(SYSTEM_LIBSSL),)
    assert scan.processes[by_tmpfs.pid].libraries == (private_key,)
    assert len({key_of(str(copy)), key_of(SYSTEM_LIBSSL), private_key}) == 3


@needs_libssl
@pytest.mark.root
@ns_group
def test_one_layer_file_under_two_overlay_mounts_is_one_library(tmp_path: Path) -> None:
    """Two containers of one image: two overlay mounts share a lower layer. Uprobes land on the layer
    file, so it must be listed (and attached) once."""
    lower = tmp_path / "lower"
    lower.mkdir()
    shutil.copy(SYSTEM_LIBSSL, lower / "libssl.so.3")
    script = (
        'mkdir -p "$2/upper" "$2/work" "$2/merged" && '
        'mount -t overlay overlay -o "lowerdir=$1,upperdir=$2/upper,workdir=$2/work" "$2/merged" && '
        'exec "$3" -c "$4" "$2/merged/libssl.so.3"'
    )
    with (
        running(in_mount_ns(script, str(lower), str(tmp_path / "c1"), PY, HOLD)) as first,
        running(in_mount_ns(script, str(lower), str(tmp_path / "c2"), PY, HOLD)) as second,
    ):
        seen1 = maps_of(first.pid)[f"{tmp_path}/c1/merged/libssl.so.3"]
        seen2 = maps_of(second.pid)[f"{tmp_path}/c2/merged/libssl.so.3"]
        assert seen1.dev != seen2.dev  # two overlay devices as maps and stat report them
        scan = Scanner().scan()

    layer = key_of(str(lower / "libssl.so.3"))
    lib = scan.libraries[layer]
    assert lib.pids >= {first.pid, second.pid}
    assert key_of(lib.path) == layer
    assert seen1 not in scan.libraries and seen2 not in scan.libraries
    assert scan.processes[first.pid].libraries == scan.processes[second.pid].libraries == (layer,)
    assert scan.stats.get("overlay_resolved", 0) >= 2


@needs_libssl
@pytest.mark.root
def test_a_library_replaced_on_disk_is_reached_through_map_files(tmp_path: Path) -> None:
    """apt upgrades a library under a running process: the path now names a new file; the uprobe
    must go on the one the process still maps."""
    path = tmp_path / "libssl.so.3"
    shutil.copy(SYSTEM_LIBSSL, path)
    with running([PY, "-c", HOLD, str(path)]) as holder:
        old = maps_of(holder.pid)[str(path)]
        path.unlink()
        shutil.copy(SYSTEM_LIBSSL, path)
        assert key_of(str(path)) != old
        scan = Scanner().scan()
        lib = scan.libraries[old]
        assert "/map_files/" in lib.path
        assert key_of(lib.path) == old
    assert key_of(str(path)) not in scan.libraries  # nobody maps the new file
    assert scan.processes[holder.pid].verdict == TRACED


@needs_libssl
def test_processes_and_libraries_come_and_go_between_scans(tmp_path: Path) -> None:
    path = tmp_path / "libssl.so.3"
    shutil.copy(SYSTEM_LIBSSL, path)
    key = key_of(str(path))
    scanner = Scanner(linger=0)
    lingering = Scanner(linger=3600)
    first = scanner.scan()
    assert key not in first.libraries
    with running([PY, "-c", HOLD, str(path)]) as holder:
        second, second_l = scanner.scan(), lingering.scan()
        assert holder.pid not in first.processes
        assert second.processes[holder.pid].verdict == TRACED
        assert second.libraries[key].pids == {holder.pid}
        assert key in {lib.key for lib in diff(first, second).added}
        assert key in {lib.key for lib in diff(None, second).added}
    third, third_l = scanner.scan(), lingering.scan()
    assert holder.pid not in third.processes
    assert key not in third.libraries
    assert key in {lib.key for lib in diff(second, third).removed}
    # with a linger time the file stays listed (still attached) without processes
    assert third_l.libraries[key].pids == frozenset()
    assert key not in {lib.key for lib in diff(second_l, third_l).removed}
    assert third_l.stats.get("libraries_lingering", 0) >= 1


@needs_libssl
@pytest.mark.root
@ns_group
def test_the_path_moves_to_another_process_when_its_process_exits(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir()
    script = (
        # background jobs of a script read /dev/null unless told otherwise: keep the holders on our pipe
        'mount -t tmpfs psk-tls "$1" && cp "$2" "$1/" && '
        'exec 3<&0 && ("$3" -c "$4" "$1/libssl.so.3" <&3 & "$3" -c "$4" "$1/libssl.so.3" <&3 & wait)'
    )
    with running(in_mount_ns(script, str(private), SYSTEM_LIBSSL, PY, HOLD), ready=2) as shell:
        pids = [int(line.split()[1]) for line in shell.ready]  # type: ignore[attr-defined]
        key = maps_of(pids[0])[f"{private}/libssl.so.3"]
        assert maps_of(pids[1])[f"{private}/libssl.so.3"] == key
        scanner = Scanner()
        before = scanner.scan().libraries[key]
        assert before.pids == set(pids)
        used = int(before.path.split("/")[2])  # /proc/PID/root/...
        os.kill(used, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{used}/root{private}") and time.monotonic() < deadline:
            time.sleep(0.05)
        after = scanner.scan().libraries[key]
        other = next(pid for pid in pids if pid != used)
        assert after.pids == {other}
        assert after.path == f"/proc/{other}/root{private}/libssl.so.3"
        assert key_of(after.path) == key


def test_go_client_is_reported_static_go(silent_port: int) -> None:
    argv_for = {
        "docker": lambda port: ["-H", f"tcp://127.0.0.1:{port}", "version"],
        "kubectl": lambda port: ["--server", f"http://127.0.0.1:{port}", "get", "pods"],
    }
    candidates = [
        path for path in go_binaries() if os.path.basename(path) in argv_for and contains(path, "crypto/tls.")
    ]
    if not candidates:
        pytest.skip("no Go client (docker, kubectl) with crypto/tls on this machine")
    binary = candidates[0]
    with running([binary, *argv_for[os.path.basename(binary)](silent_port)], ready=0) as client:
        wait_connected(silent_port, client.pid)
        scan = Scanner().scan()
    tls = scan.processes[client.pid]
    assert tls.verdict == STATIC_GO
    assert "crypto/tls" in tls.reason
    assert tls.libraries == ()


def test_grpc_python_notes_the_boringssl_inside_cygrpc() -> None:
    try:
        import grpc._cython.cygrpc as cygrpc
    except ImportError:
        pytest.skip("grpcio is not installed")
    module = os.path.realpath(str(cygrpc.__file__))
    if not (contains(module, "BoringSSL") and contains(module, "TLS_AES_128_GCM_SHA256")):
        pytest.skip(f"{module} does not carry BoringSSL")
    assert not defined_functions(module, dynamic=True).keys() & {"SSL_read", "SSL_write"}
    code = "import grpc._cython.cygrpc, os, sys\nos.write(1, b'ok %d\\n' % os.getpid())\nsys.stdin.read()"
    with running([PY, "-c", code]) as holder:
        has_libssl = any(os.path.basename(path) == "libssl.so.3" for path in maps_of(holder.pid))
        scan = Scanner().scan()
    tls = scan.processes[holder.pid]
    texts = [tls.reason, *tls.notes]
    boring = [text for text in texts if "BoringSSL" in text]
    assert boring and os.path.basename(module) in boring[0]
    assert tls.verdict == (TRACED if has_libssl else STATIC_BORINGSSL)


def test_node_with_openssl_built_in_is_probed_in_its_executable() -> None:
    """Node.js links OpenSSL statically and exports its symbols (for native addons): the uprobes go
    on the node executable itself."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    node = os.path.realpath(node)
    expected = defined_functions(node, dynamic=True)
    if not {"SSL_read", "SSL_write"} <= set(expected):
        pytest.skip(f"{node} does not export OpenSSL's SSL_read/SSL_write (linked to a shared libssl?)")
    code = "process.stdout.write('ok ' + process.pid + '\\n'); process.stdin.resume()"
    with running([node, "-e", code]) as proc:
        assert maps_of(proc.pid)[node] == key_of(node)
        scan = Scanner().scan()
    lib = scan.libraries[key_of(node)]
    assert lib.executable and lib.offsets == expected and proc.pid in lib.pids
    tls = scan.processes[proc.pid]
    assert tls.verdict == TRACED and key_of(node) in tls.libraries


# --- binaries built here --------------------------------------------------------------------------

STATIC_OPENSSL_C = r"""
#include <openssl/ssl.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    volatile void *keep[] = {(void *)SSL_read, (void *)SSL_write, (void *)SSL_set_fd, (void *)SSL_free};
    (void)keep;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    printf("ok\n");
    fflush(stdout);
    char c;
    (void)read(0, &c, 1);
    SSL_CTX_free(ctx);
    return 0;
}
"""

MARKER_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((used)) static const char marker[] = MARKER;
int main(void) {
    printf("ok %s\n", marker + sizeof(marker) - 1);
    fflush(stdout);
    char c;
    (void)read(0, &c, 1);
    return 0;
}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Executables compiled for these tests: OpenSSL linked in statically (with symbols and stripped),
    a BoringSSL look-alike and a TLS stack of no known kind (marker strings only)."""
    cc = shutil.which("clang") or shutil.which("gcc")
    static_ssl = Path("/usr/lib/x86_64-linux-gnu/libssl.a")
    if cc is None or not static_ssl.exists() or shutil.which("strip") is None:
        pytest.skip("needs a C compiler, strip and libssl-dev's libssl.a")
    out = tmp_path_factory.mktemp("tlsbin")
    (out / "static.c").write_text(STATIC_OPENSSL_C)
    (out / "marker.c").write_text(MARKER_C)
    build = [cc, "-O1", "-o", str(out / "static"), str(out / "static.c")]
    subprocess.run(
        [*build, "-Wl,-Bstatic", "-lssl", "-lcrypto", "-Wl,-Bdynamic", "-pthread", "-ldl"],
        check=True,
        timeout=120,
    )
    subprocess.run(["strip", "-o", str(out / "static-stripped"), str(out / "static")], check=True)
    markers = {"boring": '"BoringSSL TLS_AES_128_GCM_SHA256"', "other": '"TLS_AES_128_GCM_SHA256"'}
    for name, marker in markers.items():
        subprocess.run(
            [cc, "-O1", f"-DMARKER={marker}", "-o", str(out / name), str(out / "marker.c")],
            check=True,
            timeout=60,
        )
    return {name: str(out / name) for name in ("static", "static-stripped", "boring", "other")}


def test_static_openssl_with_symbols_is_probed_in_the_executable(built: dict[str, str]) -> None:
    exe = built["static"]
    expected = defined_functions(exe, dynamic=False)
    assert {"SSL_read", "SSL_write"} <= set(expected)
    assert "libssl" not in _run("ldd", exe)
    with running([exe]) as proc:
        scan = Scanner().scan()
    lib = scan.libraries[key_of(exe)]
    assert lib.executable and lib.soname is None and lib.flavor == "openssl"
    assert lib.offsets == expected
    assert proc.pid in lib.pids
    tls = scan.processes[proc.pid]
    assert tls.verdict == TRACED and "executable" in tls.reason


def test_stripped_static_tls_stacks_are_reported_not_covered(built: dict[str, str]) -> None:
    assert (
        "no symbols"
        in subprocess.run(["nm", built["static-stripped"]], capture_output=True, text=True).stderr
    )
    expected = {"static-stripped": STATIC_OPENSSL, "boring": STATIC_BORINGSSL, "other": OTHER_TLS}
    with contextlib.ExitStack() as stack:
        pids = {name: stack.enter_context(running([built[name]])).pid for name in expected}
        scan = Scanner().scan()
    for name, verdict in expected.items():
        tls = scan.processes[pids[name]]
        assert tls.verdict == verdict, (name, tls)
        assert tls.libraries == () and "not traced" in tls.reason
        assert key_of(built[name]) not in scan.libraries


# --- caching and permissions ----------------------------------------------------------------------


@needs_libssl
def test_a_file_is_read_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "libssl.so.3"
    shutil.copy(SYSTEM_LIBSSL, path)
    key = key_of(str(path))
    reads: list[FileKey] = []
    real = tlslibs.inspect_elf

    def counting(p: str) -> ElfInfo:
        with contextlib.suppress(OSError):
            reads.append(key_of(p))
        return real(p)

    monkeypatch.setattr(tlslibs, "inspect_elf", counting)
    scanner = Scanner()
    with running([PY, "-c", HOLD, str(path)]):
        scanner.scan()
        scanner.scan()
        assert reads.count(key) == 1
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        assert key in scanner.scan().libraries
        assert reads.count(key) == 2


@needs_libssl
@pytest.mark.root
def test_an_unprivileged_scanner_says_what_it_cannot_read() -> None:
    """Without root, other users' processes cannot be inspected: a clear verdict, not a gap."""
    with running([PY, "-c", HOLD_SSL]) as holder:
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked child
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                tls = Scanner().scan().processes.get(holder.pid)
                os.write(write_end, json.dumps([tls.verdict, tls.reason] if tls else None).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as result:
            answer = result.read()
        os.waitpid(child, 0)
    verdict, reason = json.loads(answer)
    assert verdict == UNREADABLE
    assert f"/proc/{holder.pid}/maps" in reason and "root" in reason
