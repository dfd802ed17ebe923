"""eBPF on the node: a libbpf loader (ctypes) and the programs podshark loads with it.

Why eBPF at all: the worker sees packets, not processes. /proc tells which process holds a socket,
but only while the socket is open and only when a scan happens to look; a client that lives a few
milliseconds (curl, a probe, ``dig``) is gone before that. A tracepoint runs in the process at the
moment it connects, so it can say who it was.

How it is built and loaded (no BCC: it needs kernel headers, which nodes do not have):

- ``*.bpf.c`` are compiled once by ``build.sh`` into CO-RE objects (``clang -target bpf`` against a
  ``vmlinux.h`` dumped from the kernel's BTF); the ``.bpf.o`` files ship as package data beside
  this file. libbpf relocates them at load time against the running kernel's
  ``/sys/kernel/btf/vmlinux``, so one object runs on every x86-64 kernel with BTF.
- `capture.ebpf.libbpf` drives the system's ``libbpf.so.1`` through ctypes: open, load, attach by
  SEC name, ring buffers polled by a thread, map lookups, and one-line reasons for every failure.
- Only raw tracepoints and uprobes are used: kprobes and fentry/fexit are refused by the kernels
  we target; raw tracepoints do not need tracefs mounted, and libbpf attaches uprobes through the
  uprobe PMU (perf_event_open), which does not either.

Modules:

- `capture.ebpf.libbpf` — the general loader (`BpfObject`, `Program`, `Map`, `RingBuffer`,
  `BpfError`), reusable by any object file.
- `capture.ebpf.conntrace` — ``conntrace.bpf.c``'s user-space half: `ConnTracer` and
  `ConnEvent` (which process connected, listened or sent UDP, from which socket), and
  `ConnTracer.sockets()`, every TCP/UDP socket of every process in one iterator pass (what
  `capture.procs` scans instead of /proc when eBPF is available).
- `capture.ebpf.tlstrace` — ``tlstrace.bpf.c``'s user-space half: `TlsTracer` attaches uprobes
  on OpenSSL (per libssl file) and `drain()` returns the plaintext of SSL_read/SSL_write calls
  (`TlsData`, with the process, SSL object, direction, role and 4-tuple) and `TlsClose` events.

Measured on the development VM (kernel 6.18, 2 vCPUs): open+load+attach of conntrace ~25-35 ms;
~0.5 us per TCP state change and ~80 ns per sendmsg in the hooks; ~0.3 us per open file in the
iterator. Ring-buffer samples are submitted without a wakeup (an irq_work per event costs ~35 us
in a VM) and drained every 10 ms, or at once by a caller that needs them (`drain()`).

Requirements at run time: root, or CAP_BPF + CAP_PERFMON (CAP_SYS_ADMIN before Linux 5.8); a
kernel with BTF; ``libbpf.so.1`` (Debian/Ubuntu package ``libbpf1``). Without them eBPF is simply
off and callers say so in one line; nothing else in the worker depends on it.

Rebuild after editing a ``.bpf.c``: ``capture/ebpf/build.sh`` (needs clang, bpftool, libbpf-dev).
"""
