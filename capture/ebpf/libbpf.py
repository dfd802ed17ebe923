"""A small ctypes loader over ``libbpf.so.1``: open an eBPF object, load it, attach it, read its maps.

Why ctypes and not BCC or a compiled extension: BCC compiles C at run time and needs the kernel
headers, which nodes do not have; an extension module would need a compiler in the image. A CO-RE
object (compiled once with clang, relocated by libbpf against the running kernel's BTF) plus the
system's libbpf is all a node needs, and ctypes reaches libbpf's stable C API directly.

What it offers, for any object file (the connection tracer here, the TLS uprobes later):

- `BpfObject(path)` opens the ``.bpf.o``; `programs` / `program(name)` / `map(name)` before loading
  (`Program.set_autoload(False)` leaves a program out); `load()`; `attach_all()` attaches every
  autoloaded program by its SEC name (``raw_tp/…``, ``tp/…``, ``uprobe/…`` with a target, …);
- `ring_buffer(map_name, callback)` -> `RingBuffer`, drained by a thread of its own every few
  milliseconds (and by `RingBuffer.drain()` on demand), `callback(bytes)` per sample;
- `Program.attach_uprobe(path, func, retprobe=…, pid=…)` for programs with a bare ``SEC("uprobe")``,
  attached per library file by the caller (through the uprobe perf PMU: no tracefs);
- `Map.lookup(key)` / `Map.lookup_u64(index)` / `Map.lookup_percpu_u64(index)` for counters (the
  lost-event count); `Map.update(key, value)` for settings; `Map.set_max_entries(n)` before loading;
- `link(program).read_iter()` runs an iterator program (``iter/…``) and returns its output;
- `close()` stops the pollers and frees links, ring buffers and the object (also on ``with`` exit).

Every failure raises `BpfError` whose message is one line: what failed, the errno text, what it
means here ("not permitted: needs root or CAP_BPF+CAP_PERFMON", "no BTF", "kernel refused program
type …") and the most telling line libbpf logged. libbpf's own log never reaches stderr: it is
kept in a bounded buffer (`libbpf_log()`) and sent to the ``capture.ebpf`` logger at DEBUG.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os
import platform
import re
import select
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

log = logging.getLogger("capture.ebpf")

LIBBPF_SONAME = "libbpf.so.1"
KERNEL_BTF = "/sys/kernel/btf/vmlinux"
ENOTSUPP = 524  # the kernel-internal "not supported" some BPF paths return to user space

_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2
_LOG_LINES = 200  # libbpf log lines kept (a verifier log can be megabytes: keep the tail)
_LOG_MESSAGE_MAX = 64 * 1024  # longest single libbpf message formatted


class BpfError(Exception):
    """An eBPF step failed. ``str()`` is a one-line reason fit for a warning; ``errno`` when known."""

    def __init__(self, reason: str, err: int | None = None) -> None:
        super().__init__(reason)
        self.errno = err


# --- the library and its log ----------------------------------------------------------------------


class _Log:
    """The lines libbpf printed, bounded, with a sequence number so a step can ask for its own lines."""

    def __init__(self) -> None:
        self._lines: collections.deque[tuple[int, int, str]] = collections.deque(maxlen=_LOG_LINES)
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, level: int, text: str) -> None:
        with self._lock:
            for line in text.splitlines():
                if line.strip():
                    self._seq += 1
                    self._lines.append((self._seq, level, line.rstrip()))

    def mark(self) -> int:
        with self._lock:
            return self._seq

    def since(self, mark: int) -> list[tuple[int, str]]:
        with self._lock:
            return [(level, line) for seq, level, line in self._lines if seq > mark]


_log = _Log()
_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()
_print_callback: object = None  # keeps the ctypes callback alive as long as libbpf may call it


def libbpf_log() -> list[str]:
    """The last lines libbpf logged (warnings and info; debug lines are not kept)."""
    return [line for _level, line in _log.since(0)]


def _make_print_callback() -> object:
    """libbpf's print hook: format the printf-style message with libc's vsnprintf and keep it.

    The hook receives a ``va_list``; on x86-64 that is a pointer to a 24-byte ``__va_list_tag``, which
    vsnprintf takes as is. Measuring first needs a copy (a va_list is consumed by use), and copying
    the 24 bytes is exactly what ``va_copy`` does on x86-64. Elsewhere only the format string is kept.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    vsnprintf = libc.vsnprintf
    vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    vsnprintf.restype = ctypes.c_int
    can_format = platform.machine() in ("x86_64", "AMD64")

    def hook(level: int, fmt: bytes | None, args: int | None) -> int:
        if level >= _LIBBPF_DEBUG or fmt is None:
            return 0
        try:
            if can_format and args:
                copy = ctypes.create_string_buffer(ctypes.string_at(args, 24), 24)
                need = vsnprintf(None, 0, fmt, ctypes.addressof(copy))
                size = max(1, min(need, _LOG_MESSAGE_MAX) + 1)
                buf = ctypes.create_string_buffer(size)
                vsnprintf(buf, size, fmt, args)
                text = buf.value.decode("utf-8", "replace")
            else:
                text = fmt.decode("utf-8", "replace")
        except Exception:  # the hook runs inside libbpf: never let an exception cross into C
            return 0
        _log.add(level, text)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("libbpf: %s", text.rstrip())
        return 0

    return _PRINT_FN(hook)


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of every libbpf function used (a wrong guess would corrupt memory)."""
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    signatures: dict[str, tuple[list[type], type | None]] = {
        "bpf_object__open_file": ([cp, vp], vp),
        "bpf_object__load": ([vp], ci),
        "bpf_object__close": ([vp], None),
        "bpf_object__next_program": ([vp, vp], vp),
        "bpf_object__next_map": ([vp, vp], vp),
        "bpf_program__name": ([vp], cp),
        "bpf_program__section_name": ([vp], cp),
        "bpf_program__autoload": ([vp], ctypes.c_bool),
        "bpf_program__set_autoload": ([vp, ctypes.c_bool], ci),
        "bpf_program__fd": ([vp], ci),
        "bpf_program__attach": ([vp], vp),
        "bpf_program__attach_uprobe_opts": ([vp, ctypes.c_int, cp, ctypes.c_size_t, vp], vp),
        "bpf_link__destroy": ([vp], ci),
        "bpf_link__fd": ([vp], ci),
        "bpf_iter_create": ([ci], ci),
        "bpf_map__name": ([vp], cp),
        "bpf_map__fd": ([vp], ci),
        "bpf_map__key_size": ([vp], ctypes.c_uint32),
        "bpf_map__value_size": ([vp], ctypes.c_uint32),
        "bpf_map__lookup_elem": ([vp, vp, ctypes.c_size_t, vp, ctypes.c_size_t, ctypes.c_uint64], ci),
        "bpf_map__update_elem": ([vp, vp, ctypes.c_size_t, vp, ctypes.c_size_t, ctypes.c_uint64], ci),
        "bpf_map__set_max_entries": ([vp, ctypes.c_uint32], ci),
        "bpf_map__max_entries": ([vp], ctypes.c_uint32),
        "bpf_map__type": ([vp], ci),
        "libbpf_num_possible_cpus": ([], ci),
        "ring_buffer__new": ([ci, _SAMPLE_FN, vp, vp], vp),
        "ring_buffer__consume": ([vp], ci),
        "ring_buffer__epoll_fd": ([vp], ci),
        "ring_buffer__free": ([vp], None),
        "libbpf_set_print": ([_PRINT_FN], vp),
    }
    for name, (argtypes, restype) in signatures.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as exc:
            raise BpfError(f"{LIBBPF_SONAME} lacks {name}: install libbpf 1.0 or newer") from exc
        fn.argtypes = argtypes
        fn.restype = restype


def library() -> ctypes.CDLL:
    """``libbpf.so.1`` with its prototypes declared and its log captured; loaded once per process."""
    global _lib, _print_callback
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
            except OSError as exc:
                raise BpfError(
                    f"{LIBBPF_SONAME} not found ({exc}): install libbpf 1.x "
                    "(Debian/Ubuntu: apt-get install libbpf1)"
                ) from exc
            _declare(lib)
            _print_callback = _make_print_callback()
            lib.libbpf_set_print(_print_callback)
            _lib = lib
        return _lib


# --- errors -----------------------------------------------------------------------------------------


def _program_kind(section: str) -> str:
    prefix = section.split("/", 1)[0]
    return {
        "raw_tp": "raw tracepoint",
        "raw_tracepoint": "raw tracepoint",
        "tp": "tracepoint",
        "tracepoint": "tracepoint",
        "tp_btf": "BTF tracepoint (tracing)",
        "kprobe": "kprobe",
        "kretprobe": "kretprobe",
        "fentry": "fentry (tracing)",
        "fexit": "fexit (tracing)",
        "uprobe": "uprobe",
        "uretprobe": "uretprobe",
    }.get(prefix, prefix or "unknown")


_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39
_NOT_PERMITTED = "not permitted: needs root or CAP_BPF+CAP_PERFMON (CAP_SYS_ADMIN before Linux 5.8)"


def _privileged() -> bool:
    """Whether this process holds the capabilities BPF needs (so EPERM is the kernel's policy)."""
    try:
        with open("/proc/self/status") as status:
            caps = next((int(line.split()[1], 16) for line in status if line.startswith("CapEff:")), 0)
    except (OSError, ValueError):
        return os.geteuid() == 0
    sys_admin = bool(caps >> _CAP_SYS_ADMIN & 1)
    return sys_admin or bool(caps >> _CAP_BPF & 1 and caps >> _CAP_PERFMON & 1)


def _meaning(err: int, stage: str, section: str) -> str:
    """What an errno means for a BPF `stage` ("open", "load", "attach"), and what to do about it."""
    kind = _program_kind(section) if section else "program"
    if err in (errno.EPERM, errno.EACCES) and not _privileged():
        return _NOT_PERMITTED
    if err == errno.EPERM:
        return (
            f"kernel refused program type {kind} although we are privileged "
            "(kernel lockdown, or this program type is disabled on this kernel)"
        )
    if err == errno.EACCES:
        return "the verifier rejected the program" if stage == "load" else "access denied by the kernel"
    if err in (ENOTSUPP, errno.EOPNOTSUPP):
        return f"kernel refused program type {kind}: not supported by this kernel"
    if stage == "uprobe" and err == errno.ENOENT:
        return "the file is missing or has no such function in its symbol tables"
    if stage == "uprobe" and err == errno.EINVAL:
        return "kernel refused the uprobe (not an ELF executable or library, or an offset outside it)"
    if stage == "attach" and err == errno.ENOENT:
        return f'{kind} unavailable: this kernel lacks it, or the target in SEC("{section}")'
    if stage == "attach" and err == errno.EINVAL:
        return f"kernel refused to attach the {kind} (program type or target not supported)"
    if stage == "load" and err in (errno.ENOENT, errno.ESRCH):
        if not os.path.exists(KERNEL_BTF):
            return f"no BTF: {KERNEL_BTF} is missing (kernel built without CONFIG_DEBUG_INFO_BTF)"
        return "no BTF for a type or field this program reads (CO-RE relocation failed)"
    if stage == "load" and err == errno.EINVAL:
        return f"kernel refused program type {kind} or the verifier rejected it"
    if err == errno.E2BIG:
        return "program or map too large for this kernel"
    if err == errno.ENOMEM:
        return "out of memory, or the locked-memory limit is too low (ulimit -l unlimited)"
    if stage == "open" and err == errno.ENOENT:
        return "object file missing: run capture/ebpf/build.sh"
    return os.strerror(err) if err else "unknown error"


_GENERIC_LINE = re.compile(r"failed to load object|failed to load: -\d+$|^--|^processed |^verification time")


def _telling_line(lines: list[tuple[int, str]]) -> str | None:
    """The libbpf log line that best explains a failure: the last specific warning, else the last line."""
    warnings = [line for level, line in lines if level == _LIBBPF_WARN]
    candidates = warnings or [line for _level, line in lines]
    for line in reversed(candidates):
        text = line.strip().removeprefix("libbpf: ").strip()
        if text and not _GENERIC_LINE.search(text):
            return text[:240]
    return None


def _error(what: str, err: int, stage: str, section: str = "", mark: int | None = None) -> BpfError:
    err = abs(err)
    reason = f"{what}: {os.strerror(err) if err else 'failed'} ({_meaning(err, stage, section)})"
    detail = _telling_line(_log.since(mark)) if mark is not None else None
    if detail:
        reason += f"; libbpf: {detail}"
    return BpfError(reason, err or None)


# --- objects ------------------------------------------------------------------------------------


class Link:
    """An attachment of a program; `destroy()` detaches it."""

    def __init__(self, lib: ctypes.CDLL, handle: int, program: str) -> None:
        self._lib = lib
        self._handle: int | None = handle
        self.program = program

    def destroy(self) -> None:
        if self._handle is not None:
            self._lib.bpf_link__destroy(self._handle)
            self._handle = None

    def read_iter(self, max_bytes: int = 256 << 20) -> bytes:
        """Run an iterator program (SEC("iter/…")) once and return everything it wrote.

        Each call creates a new iterator instance (bpf_iter_create), so each call is a fresh pass.
        Output beyond `max_bytes` is an error rather than unbounded memory.
        """
        if self._handle is None:
            raise BpfError(f"iterator {self.program}: link destroyed")
        link_fd = self._lib.bpf_link__fd(self._handle)
        fd = self._lib.bpf_iter_create(link_fd)
        if fd < 0:
            raise _error(f"iterator {self.program}", fd, "iter")
        chunks: list[bytes] = []
        total = 0
        try:
            while True:
                try:
                    chunk = os.read(fd, 1 << 20)
                except InterruptedError:
                    continue
                except OSError as exc:
                    raise _error(f"read iterator {self.program}", exc.errno or 0, "iter") from exc
                if not chunk:
                    return b"".join(chunks)
                total += len(chunk)
                if total > max_bytes:
                    raise BpfError(f"iterator {self.program}: more than {max_bytes} bytes of output")
                chunks.append(chunk)
        finally:
            os.close(fd)


class _UprobeOpts(ctypes.Structure):
    """``struct bpf_uprobe_opts`` of libbpf 1.x (``sz`` says how much of it we know)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ref_ctr_offset", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", ctypes.c_char_p),
    ]


class Program:
    """One program of an object (valid until the object is closed)."""

    def __init__(self, lib: ctypes.CDLL, handle: int) -> None:
        self._lib = lib
        self.handle = handle
        self.name: str = (lib.bpf_program__name(handle) or b"").decode()
        self.section: str = (lib.bpf_program__section_name(handle) or b"").decode()

    @property
    def autoload(self) -> bool:
        return bool(self._lib.bpf_program__autoload(self.handle))

    def set_autoload(self, enabled: bool) -> None:
        """Leave this program out of (or back in) `BpfObject.load`; only before loading."""
        rc = self._lib.bpf_program__set_autoload(self.handle, enabled)
        if rc:
            raise _error(f"set_autoload({self.name})", rc, "open", self.section)

    def attach(self) -> Link:
        """Attach by the SEC name (libbpf's auto-attach: raw_tp/…, tp/cat/name, …)."""
        mark = _log.mark()
        ctypes.set_errno(0)
        handle = self._lib.bpf_program__attach(self.handle)
        if not handle:
            raise _error(
                f"attach {self.name} ({self.section})", ctypes.get_errno(), "attach", self.section, mark
            )
        return Link(self._lib, handle, self.name)

    def attach_uprobe(
        self, binary_path: str | os.PathLike[str], func_name: str, *, retprobe: bool = False, pid: int = -1
    ) -> Link:
        """Attach as a uprobe (or uretprobe) on `func_name` of an ELF file, for process `pid` (-1: all).

        libbpf finds the function in the file's symbol tables and attaches through the ``uprobe``
        perf PMU (no tracefs needed). A uprobe belongs to the file's inode, so one attachment covers
        every process that maps that file, in any mount namespace (pass ``/proc/PID/root/...`` to
        reach a container's copy).
        """
        path = os.fsencode(binary_path)
        opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=retprobe, func_name=func_name.encode())
        mark = _log.mark()
        ctypes.set_errno(0)
        handle = self._lib.bpf_program__attach_uprobe_opts(self.handle, pid, path, 0, ctypes.byref(opts))
        if not handle:
            kind = "uretprobe" if retprobe else "uprobe"
            raise _error(
                f"attach {self.name} ({kind} {os.fsdecode(path)}:{func_name})",
                ctypes.get_errno(),
                "uprobe",
                kind,
                mark,
            )
        return Link(self._lib, handle, f"{self.name}@{os.fsdecode(path)}:{func_name}")


_PERCPU_MAP_TYPES = frozenset({5, 6, 10})  # BPF_MAP_TYPE_PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH


class Map:
    """One map of an object; lookups need the object loaded."""

    def __init__(self, lib: ctypes.CDLL, handle: int) -> None:
        self._lib = lib
        self.handle = handle
        self.name: str = (lib.bpf_map__name(handle) or b"").decode()

    @property
    def fd(self) -> int:
        return int(self._lib.bpf_map__fd(self.handle))

    @property
    def key_size(self) -> int:
        return int(self._lib.bpf_map__key_size(self.handle))

    @property
    def value_size(self) -> int:
        return int(self._lib.bpf_map__value_size(self.handle))

    def lookup(self, key: bytes) -> bytes | None:
        """The value stored under `key` (exactly key_size bytes), or None when there is none."""
        if len(key) != self.key_size:
            raise BpfError(f"map {self.name}: key is {len(key)} bytes, the map's keys are {self.key_size}")
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(self.value_size)
        rc = self._lib.bpf_map__lookup_elem(self.handle, kbuf, len(key), vbuf, self.value_size, 0)
        if rc == -errno.ENOENT:
            return None
        if rc:
            raise _error(f"lookup in map {self.name}", rc, "lookup")
        return vbuf.raw

    def lookup_u64(self, index: int) -> int:
        """Entry `index` of an array of u64 counters (0 when absent)."""
        value = self.lookup(index.to_bytes(4, "little"))
        return int.from_bytes(value[:8], "little") if value else 0

    @property
    def max_entries(self) -> int:
        return int(self._lib.bpf_map__max_entries(self.handle))

    def set_max_entries(self, entries: int) -> None:
        """Resize the map (for a ring buffer: its size in bytes, a power of two); only before loading."""
        rc = self._lib.bpf_map__set_max_entries(self.handle, entries)
        if rc:
            raise _error(f"set_max_entries({self.name}, {entries})", rc, "open")

    def update(self, key: bytes, value: bytes) -> None:
        """Store `value` under `key` (both exactly the map's sizes); needs the object loaded."""
        if len(key) != self.key_size or len(value) != self.value_size:
            raise BpfError(
                f"map {self.name}: key/value are {len(key)}/{len(value)} bytes, "
                f"the map's are {self.key_size}/{self.value_size}"
            )
        kbuf = ctypes.create_string_buffer(key, len(key))
        vbuf = ctypes.create_string_buffer(value, len(value))
        rc = self._lib.bpf_map__update_elem(self.handle, kbuf, len(key), vbuf, len(value), 0)
        if rc:
            raise _error(f"update map {self.name}", rc, "update")

    def lookup_percpu_u64(self, index: int) -> int:
        """Entry `index` of a per-CPU array of u64 counters, summed over every possible CPU."""
        if self._lib.bpf_map__type(self.handle) not in _PERCPU_MAP_TYPES:
            return self.lookup_u64(index)
        cpus = int(self._lib.libbpf_num_possible_cpus())
        if cpus <= 0:
            raise _error("libbpf_num_possible_cpus", cpus, "lookup")
        stride = (self.value_size + 7) // 8 * 8
        key = ctypes.create_string_buffer(index.to_bytes(4, "little"), 4)
        vbuf = ctypes.create_string_buffer(stride * cpus)
        rc = self._lib.bpf_map__lookup_elem(self.handle, key, 4, vbuf, stride * cpus, 0)
        if rc == -errno.ENOENT:
            return 0
        if rc:
            raise _error(f"lookup in map {self.name}", rc, "lookup")
        raw = vbuf.raw
        return sum(int.from_bytes(raw[i * stride : i * stride + 8], "little") for i in range(cpus))


class RingBuffer:
    """A BPF ring buffer whose samples go to `callback(bytes)`: drained by `start()`'s thread every
    `poll_ms` (sooner when the program forces a wakeup) and by `drain()` from any thread.

    Why a timer and not only wakeups: a wakeup is an irq_work (a self-interrupt) per submitted
    sample, which costs tens of microseconds inside a VM. Programs here submit with
    ``BPF_RB_NO_WAKEUP`` and force a wakeup only when the ring fills up; the poller collects the
    rest within `poll_ms`, and a caller that needs the latest samples now calls `drain()`.

    Callbacks run on whichever thread drains, one drain at a time. An exception in a callback is
    counted (`callback_errors`, `last_error`) and the next sample is delivered anyway: one bad
    event must not stop the stream.
    """

    def __init__(self, lib: ctypes.CDLL, bpf_map: Map, callback: Callable[[bytes], None]) -> None:
        self._lib = lib
        self._callback = callback
        self._sample_fn = _SAMPLE_FN(self._on_sample)  # referenced for as long as libbpf may call it
        self.samples = 0
        self.callback_errors = 0
        self.last_error: str | None = None
        self.name = bpf_map.name
        mark = _log.mark()
        ctypes.set_errno(0)
        handle = lib.ring_buffer__new(bpf_map.fd, self._sample_fn, None, None)
        if not handle:
            raise _error(f"ring buffer {bpf_map.name}", ctypes.get_errno(), "ringbuf", mark=mark)
        self._handle: int | None = handle
        self._lock = threading.Lock()  # libbpf's ring_buffer is not thread-safe: one consumer at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._limit = 0  # samples one drain may deliver (0: no limit); set under _lock
        self._delivered = 0

    def _on_sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        self.samples += 1
        try:
            self._callback(ctypes.string_at(data, size) if data else b"")
        except Exception as exc:  # never unwind through libbpf's C frames
            self.callback_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
        self._delivered += 1
        if self._limit and self._delivered >= self._limit:
            return -errno.EAGAIN  # libbpf stops here, this sample consumed; see drain()
        return 0

    def drain(self, limit: int = 0) -> int:
        """Deliver every sample waiting now (at most `limit` when given), on the calling thread;
        returns how many.

        Without a limit, a producer as fast as the callback keeps one drain going; a caller with
        other work to do (a capture loop) passes a limit and leaves the rest for its next call.
        """
        with self._lock:
            if self._handle is None:
                return 0
            self._limit, self._delivered = max(limit, 0), 0
            try:
                rc = int(self._lib.ring_buffer__consume(self._handle))
            finally:
                self._limit = 0
            delivered = self._delivered
        if rc == -errno.EAGAIN and limit > 0 and delivered >= limit:
            return delivered
        if rc < 0 and -rc != errno.EINTR:
            raise _error(f"consume ring buffer {self.name}", rc, "ringbuf")
        return max(rc, 0)

    def fileno(self) -> int:
        """An epoll fd that polls readable when the kernel side woke the ring (it does so for forced
        wakeups only when samples are submitted without one): for a caller's own poll loop."""
        with self._lock:
            if self._handle is None:
                raise BpfError(f"ring buffer {self.name} is closed")
            return int(self._lib.ring_buffer__epoll_fd(self._handle))

    def start(self, *, thread_name: str = "bpf-ringbuf", poll_ms: int = 10) -> None:
        """Drain from a daemon thread every `poll_ms` (or on a forced wakeup) until `close()`."""
        if self._thread is not None or self._handle is None:
            return
        poller = select.poll()
        poller.register(self._lib.ring_buffer__epoll_fd(self._handle), select.POLLIN)

        def run() -> None:
            while not self._stop.is_set():
                poller.poll(poll_ms)
                try:
                    self.drain()
                except BpfError as exc:
                    self.last_error = str(exc)
                    log.warning("eBPF ring buffer %s stopped: %s", self.name, exc)
                    return

        self._thread = threading.Thread(target=run, name=thread_name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the poller (waits for it) and free the ring buffer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._handle is not None:
                self._lib.ring_buffer__free(self._handle)
                self._handle = None


class BpfObject:
    """An eBPF object file: opened on construction; `load()`, `attach_all()`, then maps and rings."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lib = library()
        self._handle: int | None = None
        self._links: list[Link] = []
        self._rings: list[RingBuffer] = []
        if not self.path.is_file():
            raise BpfError(
                f"eBPF object {self.path} not found: build it with capture/ebpf/build.sh", errno.ENOENT
            )
        mark = _log.mark()
        ctypes.set_errno(0)
        handle = self._lib.bpf_object__open_file(os.fsencode(self.path), None)
        if not handle:
            raise _error(f"open {self.path.name}", ctypes.get_errno(), "open", mark=mark)
        self._handle = handle
        self.programs: list[Program] = []
        prog = self._lib.bpf_object__next_program(handle, None)
        while prog:
            self.programs.append(Program(self._lib, prog))
            prog = self._lib.bpf_object__next_program(handle, prog)
        self.maps: dict[str, Map] = {}
        bpf_map = self._lib.bpf_object__next_map(handle, None)
        while bpf_map:
            m = Map(self._lib, bpf_map)
            self.maps[m.name] = m
            bpf_map = self._lib.bpf_object__next_map(handle, bpf_map)

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def program(self, name: str) -> Program:
        for prog in self.programs:
            if prog.name == name:
                return prog
        names = ", ".join(p.name for p in self.programs)
        raise BpfError(f"{self.path.name} has no program {name!r} (has: {names})")

    def map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            raise BpfError(f"{self.path.name} has no map {name!r} (has: {', '.join(self.maps)})") from None

    @property
    def ring_buffers(self) -> list[RingBuffer]:
        """The ring buffers made by `ring_buffer()` and not yet closed."""
        return list(self._rings)

    def load(self) -> None:
        """Relocate (CO-RE) against the kernel's BTF, create the maps, verify and load the programs."""
        if self._handle is None:
            raise BpfError(f"{self.path.name} is closed")
        mark = _log.mark()
        rc = self._lib.bpf_object__load(self._handle)
        if rc:
            failed = self._failed_program(mark)
            section = failed.section if failed else ""
            what = f"load {self.path.name}" + (f" program {failed.name} ({failed.section})" if failed else "")
            raise _error(what, rc, "load", section, mark)

    def _failed_program(self, mark: int) -> Program | None:
        """The program libbpf's log names in its failure (``prog 'NAME': …``), if any."""
        for _level, line in reversed(_log.since(mark)):
            for prog in self.programs:
                if f"prog '{prog.name}'" in line:
                    return prog
        return None

    def link(self, program: str) -> Link:
        """The link `attach_all()` made for `program`."""
        for link in self._links:
            if link.program == program:
                return link
        raise BpfError(f"{self.path.name}: program {program!r} is not attached")

    def attach_all(self) -> list[Link]:
        """Attach every autoloaded program by its SEC name; on a failure nothing stays attached."""
        links: list[Link] = []
        try:
            for prog in self.programs:
                if prog.autoload:
                    links.append(prog.attach())
        except BpfError:
            for link in links:
                link.destroy()
            raise
        self._links.extend(links)
        return links

    def ring_buffer(self, map_name: str, callback: Callable[[bytes], None]) -> RingBuffer:
        """A `RingBuffer` over map `map_name` (closed with this object)."""
        ring = RingBuffer(self._lib, self.map(map_name), callback)
        self._rings.append(ring)
        return ring

    def close(self) -> None:
        """Stop ring-buffer pollers, detach every link, free the object. Safe to call twice."""
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        for link in self._links:
            link.destroy()
        self._links.clear()
        if self._handle is not None:
            self._lib.bpf_object__close(self._handle)
            self._handle = None
