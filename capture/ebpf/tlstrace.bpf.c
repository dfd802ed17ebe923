// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tlstrace: the plaintext of OpenSSL connections, taken from inside the process that encrypts it.
 *
 * Why: the wire carries TLS; only the process holds the plaintext, and only for the duration of an
 * SSL_read/SSL_write call. Uprobes on libssl's exported functions see that plaintext in every
 * process that maps the library, without keys, without a proxy and without touching the process.
 *
 * Attached per libssl file by capture/ebpf/tlstrace.py (uprobes are per inode: one attachment of
 * /proc/PID/root/.../libssl.so.3 covers every process, in any container, that maps that file):
 *
 *   uprobe    SSL_read, SSL_write, SSL_read_ex, SSL_write_ex  - park (ssl, buf, out-pointer) per thread
 *   uretprobe the same four                                    - the call's result says how many bytes
 *             are plaintext: ret for SSL_read/SSL_write when > 0, *readbytes / *written for the _ex
 *             forms when ret == 1. Those bytes are read from the caller's buffer and sent to the
 *             `events` ring buffer in chunks of CHUNK bytes, up to max_call_bytes per call.
 *   uprobe    SSL_set_fd                                       - ssl -> fd -> socket -> 4-tuple
 *   uprobe    SSL_set_connect_state, SSL_connect               - ssl is a client
 *   uprobe    SSL_set_accept_state, SSL_accept                 - ssl is a server
 *   uprobe    SSL_free                                         - forget ssl; a close event
 *
 * The 4-tuple of an SSL*. SSL_set_fd names the fd, but many programs never call it: curl and
 * Python's ssl give OpenSSL a socket BIO through SSL_set_bio, nginx and others do the same. What
 * every socket BIO does is socket I/O *during* the SSL call, on the calling thread. So while an SSL
 * call is active on a thread (between its uprobe and uretprobe) a socket hook names the socket:
 *
 *   raw_tp/sock_send_length, raw_tp/sock_recv_length (Linux 6.4+; the struct sock directly, and they
 *       only run for socket I/O), or else
 *   raw_tp/sys_enter (any kernel with raw tracepoints; read, write, readv, writev, sendto, recvfrom,
 *       sendmsg, recvmsg: the fd from the syscall's registers, then task -> files -> fdtable ->
 *       file -> socket -> sock). It runs for every syscall on the machine, which is why the
 *       sock_* pair is preferred. x86-64 syscall numbers.
 *
 * Whichever hook names the socket, the tuple is kept per (process, SSL*) until SSL_free: SSL*
 * values repeat across processes (fork, or the same allocator layout), so the process id is part
 * of every key. A call whose tuple is still unknown when it returns (a memory BIO: asyncio's
 * SSLObject, a proxy's BIO pair) is sent with zeros and counted in COUNTER_NO_TUPLE.
 *
 * Data events carry the position of the call in its direction's plaintext stream (`seq`) and the
 * offset of the chunk in the call, so user space joins chunks exactly and sees every hole: a chunk
 * the ring buffer refused (COUNTER_DROPS), a user-memory read that faulted (COUNTER_READ_ERRORS),
 * the tail of a call beyond max_call_bytes (`cut`, COUNTER_TRUNCATED).
 *
 * Records are sent without a wakeup (an irq_work per record costs tens of microseconds in a VM):
 * user space drains the ring every few milliseconds; a wakeup is forced once a quarter is full.
 *
 * Not covered: statically linked TLS (Go's crypto/tls, BoringSSL inside Envoy), SSL_peek, SSL_sendfile
 * (kTLS: the kernel encrypts and the plaintext never passes SSL_write's buffer), and TLS libraries
 * other than OpenSSL (GnuTLS, NSS). A thread that dies inside an SSL call leaves its parked call behind
 * until the LRU map recycles it; it is never emitted.
 *
 * Build: build.sh (clang -O2 -g -Werror -target bpf, CO-RE against vmlinux.h from the kernel's BTF).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 0170000
#define S_IFSOCK 0140000

#define KIND_DATA 1
#define KIND_CLOSE 2
#define KIND_SNI 3 /* the server name a client set (SSL_set_tlsext_host_name); data: the name */
#define SSL_CTRL_SET_TLSEXT_HOSTNAME 55
#define MAX_SNI 256

#define DIR_WRITE 0 /* this process wrote (SSL_write) */
#define DIR_READ 1  /* this process read (SSL_read) */

#define ROLE_UNKNOWN 0
#define ROLE_CLIENT 1
#define ROLE_SERVER 2

#define OP_READ 1
#define OP_WRITE 2
#define OP_READ_EX 3
#define OP_WRITE_EX 4

#define COUNTER_EVENTS 0      /* records sent to the ring buffer */
#define COUNTER_DROPS 1       /* records the ring buffer refused (full: user space is behind) */
#define COUNTER_READ_ERRORS 2 /* a read of user memory failed: that chunk (or call) is missing */
#define COUNTER_TRUNCATED 3   /* calls longer than max_call_bytes: their tail was not sent */
#define COUNTER_NO_TUPLE 4    /* calls sent without a known 4-tuple */
#define COUNTER_CALLS 5       /* SSL calls that moved plaintext */
#define COUNTER_CLOSES 6      /* SSL_free of a known SSL* */
#define COUNTERS 7

#define CHUNK 16384                /* data bytes per record: one TLS record's worth */
#define MAX_CALL_BYTES (1 << 20)   /* ceiling of settings.max_call_bytes */
#define MAX_CHUNKS (MAX_CALL_BYTES / CHUNK)
#define DEFAULT_CALL_BYTES (256 << 10)
#define RINGBUF_SIZE (8 << 20)     /* user space may resize it before loading */

/*
 * One record: a chunk of one call's plaintext (KIND_DATA), or the end of an SSL* (KIND_CLOSE, no data;
 * there `seq` is the plaintext the process wrote over it while traced and `length` what it read).
 * The layout is mirrored by capture/ebpf/tlstrace.py (HEADER): change both together.
 */
struct tls_event {
	__u64 ts_ns;  /* bpf_ktime_get_ns() at the call's return: CLOCK_MONOTONIC */
	__u64 ssl;    /* the SSL* (an address in the process) */
	__u64 seq;    /* position of the call's first byte in this (ssl, direction) plaintext stream */
	__u64 length; /* bytes the call moved */
	__u64 cut;    /* bytes of the call beyond max_call_bytes: never sent */
	__u32 tgid;   /* user-space pid */
	__u32 tid;    /* user-space thread id */
	__u32 offset; /* offset of this record's data in the call */
	__u32 netns;  /* inode of the socket's network namespace; 0 when the tuple is unknown */
	__u32 data_len; /* bytes of data after this header */
	__u16 family;   /* AF_INET, AF_INET6, or 0: tuple unknown */
	__u16 lport;    /* host byte order */
	__u16 rport;
	__u8 kind;      /* KIND_* */
	__u8 direction; /* DIR_* */
	__u8 role;      /* ROLE_* */
	__u8 pad[3];
	__u8 laddr[16]; /* AF_INET: first 4 bytes */
	__u8 raddr[16];
	char comm[16]; /* the process's name (its main thread's comm) */
};

_Static_assert(sizeof(struct tls_event) == 120, "tls_event layout changed: update tlstrace.py");

struct tls_chunk {
	struct tls_event hdr;
	__u8 data[CHUNK];
};

/* An SSL call in progress on one thread: what its return needs. */
struct tls_active {
	__u64 ssl;
	__u64 buf;
	__u64 out; /* size_t *readbytes / *written of the _ex forms */
	__u32 op;  /* OP_* */
	__u32 pad;
};

struct tls_conn_key {
	__u32 tgid;
	__u32 pad;
	__u64 ssl;
};

/* What is known of one SSL* of one process. */
struct tls_conn {
	__u64 pos[2]; /* plaintext bytes so far, per direction: the next call's seq */
	__s32 fd;     /* from SSL_set_fd or a socket syscall during a call; -1 unknown */
	__u32 netns;
	__u16 family; /* 0 until the tuple is known */
	__u16 lport;
	__u16 rport;
	__u8 role;
	__u8 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

struct tls_config {
	__u32 max_call_bytes; /* 0: DEFAULT_CALL_BYTES; capped at MAX_CALL_BYTES */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RINGBUF_SIZE);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64); /* pid_tgid: the thread */
	__type(value, struct tls_active);
} active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, struct tls_conn_key);
	__type(value, struct tls_conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_chunk);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_config);
} settings SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);
	if (value)
		*value += 1; /* per-CPU: no other writer */
}

static __always_inline __u64 wakeup_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > RINGBUF_SIZE / 4 ? BPF_RB_FORCE_WAKEUP
										  : BPF_RB_NO_WAKEUP;
}

static __always_inline __u32 max_call_bytes(void)
{
	__u32 zero = 0;
	struct tls_config *cfg = bpf_map_lookup_elem(&settings, &zero);
	__u32 cap = cfg ? cfg->max_call_bytes : 0;
	if (cap == 0)
		cap = DEFAULT_CALL_BYTES;
	return cap > MAX_CALL_BYTES ? MAX_CALL_BYTES : cap;
}

/* The entry of (this process, ssl), created (fd unknown, nothing else known) when missing. */
static __always_inline struct tls_conn *conn_get(__u32 tgid, __u64 ssl)
{
	struct tls_conn_key key = {.tgid = tgid, .ssl = ssl};
	struct tls_conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c)
		return c;
	struct tls_conn fresh = {.fd = -1};
	bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&conns, &key);
}

/* Store the tuple of a connected TCP socket in `c`; 1 when it was one. */
static __always_inline int set_tuple(struct tls_conn *c, struct sock *sk)
{
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u16 rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if ((family != AF_INET && family != AF_INET6) || rport == 0)
		return 0; /* not (yet) connected: try again at the next call */
	if (family == AF_INET) {
		bpf_core_read(c->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(c->raddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(c->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(c->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	c->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	c->rport = rport;
	c->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	c->family = family; /* last: family != 0 means the rest is filled */
	return 1;
}

/* The struct sock behind descriptor `fd` of the current process, or NULL when it is not a socket. */
static __always_inline struct sock *fd_sock(int fd)
{
	if (fd < 0)
		return NULL;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	if (!fds || bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	struct socket *sock = (struct socket *)BPF_CORE_READ(file, private_data);
	return sock ? BPF_CORE_READ(sock, sk) : NULL;
}

static __always_inline int set_tuple_from_fd(struct tls_conn *c, int fd)
{
	if (!set_tuple(c, fd_sock(fd)))
		return 0;
	c->fd = fd;
	return 1;
}

/* --- entries: park the call ------------------------------------------------------------------ */

static __always_inline int enter(__u64 ssl, __u64 buf, __u64 out, __u32 op)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_active call = {.ssl = ssl, .buf = buf, .out = out, .op = op};
	bpf_map_update_elem(&active, &id, &call, BPF_ANY);
	conn_get(id >> 32, ssl); /* so the socket hooks have somewhere to put the tuple */
	return 0;
}

SEC("uprobe")
int tls_read_enter(struct pt_regs *ctx)
{
	return enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, OP_READ);
}

SEC("uprobe")
int tls_write_enter(struct pt_regs *ctx)
{
	return enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0, OP_WRITE);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int tls_read_ex_enter(struct pt_regs *ctx)
{
	return enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx), OP_READ_EX);
}

SEC("uprobe")
int tls_write_ex_enter(struct pt_regs *ctx)
{
	return enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM4(ctx), OP_WRITE_EX);
}

/* --- returns: send the plaintext ------------------------------------------------------------- */

static __always_inline void fill_comm(char *comm)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	if (!leader || bpf_probe_read_kernel_str(comm, 16, &leader->comm) < 0)
		bpf_get_current_comm(comm, 16);
}

static __always_inline void fill_header(struct tls_event *h, __u64 id, __u64 ssl, struct tls_conn *c)
{
	__builtin_memset(h, 0, sizeof(*h));
	h->ts_ns = bpf_ktime_get_ns();
	h->ssl = ssl;
	h->tgid = id >> 32;
	h->tid = (__u32)id;
	fill_comm(h->comm);
	if (!c)
		return;
	h->role = c->role;
	if (c->family) {
		h->family = c->family;
		h->lport = c->lport;
		h->rport = c->rport;
		h->netns = c->netns;
		__builtin_memcpy(h->laddr, c->laddr, 16);
		__builtin_memcpy(h->raddr, c->raddr, 16);
	}
}

/*
 * Send bytes [offset, offset + min(left, CHUNK)) of the call whose header is in scratch, read from
 * `src` in user memory. A global (not inlined) function: the verifier checks it once, on its own,
 * instead of once per loop iteration in every caller (with it inlined, the four return probes
 * took ~580k verifier instructions each, seconds to load, close to the 1M limit).
 */
__attribute__((noinline)) int emit_chunk(__u64 src, __u32 offset, __u32 left)
{
	__u32 zero = 0;
	struct tls_chunk *ch = bpf_map_lookup_elem(&scratch, &zero);
	if (!ch || left == 0)
		return 0;
	__u64 n = left > CHUNK ? CHUNK : left;
	n = ((n - 1) & (CHUNK - 1)) + 1; /* the same value, in a range the verifier can see: [1, CHUNK] */
	ch->hdr.offset = offset;
	ch->hdr.data_len = n;
	if (bpf_probe_read_user(ch->data, n, (void *)src)) {
		count(COUNTER_READ_ERRORS);
		return 0;
	}
	if (bpf_ringbuf_output(&events, ch, sizeof(ch->hdr) + n, wakeup_flags())) {
		count(COUNTER_DROPS);
		return 0;
	}
	count(COUNTER_EVENTS);
	return 1;
}

static __always_inline int leave(struct pt_regs *ctx, __u32 op)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_active *parked = bpf_map_lookup_elem(&active, &id);
	if (!parked)
		return 0; /* the tracer was attached while this call was running */
	struct tls_active call = *parked;
	bpf_map_delete_elem(&active, &id);
	if (call.op != op)
		return 0;

	int ret = (int)PT_REGS_RC(ctx);
	__u64 len = 0;
	if (op == OP_READ_EX || op == OP_WRITE_EX) {
		if (ret != 1)
			return 0;
		if (bpf_probe_read_user(&len, sizeof(len), (void *)call.out)) {
			count(COUNTER_READ_ERRORS);
			return 0;
		}
	} else {
		if (ret <= 0)
			return 0;
		len = (__u64)ret;
	}
	if (len == 0)
		return 0;

	__u8 direction = (op == OP_WRITE || op == OP_WRITE_EX) ? DIR_WRITE : DIR_READ;
	struct tls_conn *c = conn_get(id >> 32, call.ssl);
	if (c && !c->family && c->fd >= 0)
		set_tuple_from_fd(c, c->fd); /* SSL_set_fd before connect(): connected by now */

	__u32 zero = 0;
	struct tls_chunk *ch = bpf_map_lookup_elem(&scratch, &zero);
	if (!ch) {
		count(COUNTER_READ_ERRORS);
		return 0;
	}
	fill_header(&ch->hdr, id, call.ssl, c);
	ch->hdr.kind = KIND_DATA;
	ch->hdr.direction = direction;
	ch->hdr.length = len;
	if (c) {
		ch->hdr.seq = c->pos[direction & 1];
		c->pos[direction & 1] += len;
	}
	__u32 cap = max_call_bytes();
	__u64 captured = len > cap ? cap : len;
	ch->hdr.cut = len - captured;

	count(COUNTER_CALLS);
	if (ch->hdr.cut)
		count(COUNTER_TRUNCATED);
	if (!ch->hdr.family)
		count(COUNTER_NO_TUPLE);

	__u32 chunks = (captured + CHUNK - 1) / CHUNK;
	for (__u32 i = 0; i < MAX_CHUNKS && i < chunks; i++) {
		__u32 offset = i * CHUNK;
		emit_chunk(call.buf + offset, offset, captured - offset);
	}
	return 0;
}

SEC("uretprobe")
int tls_read_leave(struct pt_regs *ctx)
{
	return leave(ctx, OP_READ);
}

SEC("uretprobe")
int tls_write_leave(struct pt_regs *ctx)
{
	return leave(ctx, OP_WRITE);
}

SEC("uretprobe")
int tls_read_ex_leave(struct pt_regs *ctx)
{
	return leave(ctx, OP_READ_EX);
}

SEC("uretprobe")
int tls_write_ex_leave(struct pt_regs *ctx)
{
	return leave(ctx, OP_WRITE_EX);
}

/* --- connection bookkeeping ------------------------------------------------------------------- */

/* int SSL_set_fd(SSL *s, int fd): a new connection for this SSL* (SSL_clear and reuse included). */
SEC("uprobe")
int tls_set_fd(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_conn_key key = {.tgid = id >> 32, .ssl = PT_REGS_PARM1(ctx)};
	struct tls_conn fresh = {.fd = (int)PT_REGS_PARM2(ctx)};
	struct tls_conn *old = bpf_map_lookup_elem(&conns, &key);
	if (old)
		fresh.role = old->role; /* SSL_set_connect_state may come first */
	set_tuple_from_fd(&fresh, fresh.fd);
	bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY);
	return 0;
}

static __always_inline int set_role(__u64 ssl, __u8 role)
{
	struct tls_conn *c = conn_get(bpf_get_current_pid_tgid() >> 32, ssl);
	if (c)
		c->role = role;
	return 0;
}

SEC("uprobe")
int tls_connect_state(struct pt_regs *ctx)
{
	return set_role(PT_REGS_PARM1(ctx), ROLE_CLIENT);
}

SEC("uprobe")
int tls_accept_state(struct pt_regs *ctx)
{
	return set_role(PT_REGS_PARM1(ctx), ROLE_SERVER);
}

/* void SSL_free(SSL *ssl) */
SEC("uprobe")
int tls_free(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_conn_key key = {.tgid = id >> 32, .ssl = PT_REGS_PARM1(ctx)};
	struct tls_conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c)
		return 0; /* never used for I/O while we watched */
	__u32 zero = 0;
	struct tls_chunk *ch = bpf_map_lookup_elem(&scratch, &zero);
	if (ch) {
		fill_header(&ch->hdr, id, key.ssl, c);
		ch->hdr.kind = KIND_CLOSE;
		ch->hdr.seq = c->pos[DIR_WRITE];
		ch->hdr.length = c->pos[DIR_READ];
		if (bpf_ringbuf_output(&events, &ch->hdr, sizeof(ch->hdr), wakeup_flags()))
			count(COUNTER_DROPS);
		else
			count(COUNTER_EVENTS);
	}
	count(COUNTER_CLOSES);
	bpf_map_delete_elem(&conns, &key);
	return 0;
}

/*
 * long SSL_ctrl(SSL *s, int cmd, long larg, void *parg). SSL_set_tlsext_host_name() is a macro for
 * SSL_ctrl(s, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name (0), name): the SNI a client
 * is about to send, known before its first byte, whether or not the ClientHello is captured.
 */
SEC("uprobe")
int tls_ctrl(struct pt_regs *ctx)
{
	if ((int)PT_REGS_PARM2(ctx) != SSL_CTRL_SET_TLSEXT_HOSTNAME || PT_REGS_PARM3(ctx) != 0)
		return 0;
	__u64 name = PT_REGS_PARM4(ctx);
	if (!name)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 zero = 0;
	struct tls_chunk *ch = bpf_map_lookup_elem(&scratch, &zero);
	if (!ch)
		return 0;
	fill_header(&ch->hdr, id, PT_REGS_PARM1(ctx), 0);
	ch->hdr.kind = KIND_SNI;
	long n = bpf_probe_read_user_str(ch->data, MAX_SNI, (void *)name);
	if (n <= 1) { /* unreadable, or an empty name */
		if (n < 0)
			count(COUNTER_READ_ERRORS);
		return 0;
	}
	__u32 len = (__u32)(n - 1) & (MAX_SNI - 1); /* without the NUL; in [1, MAX_SNI) for the verifier */
	ch->hdr.data_len = len;
	ch->hdr.length = len;
	if (bpf_ringbuf_output(&events, ch, sizeof(ch->hdr) + len, wakeup_flags()))
		count(COUNTER_DROPS);
	else
		count(COUNTER_EVENTS);
	return 0;
}

/* --- the socket of an SSL call, while it runs --------------------------------------------------- */

/* The conn of the SSL call active on this thread, when its tuple is still unknown. */
static __always_inline struct tls_conn *conn_needing_tuple(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_active *call = bpf_map_lookup_elem(&active, &id);
	if (!call)
		return NULL;
	struct tls_conn_key key = {.tgid = id >> 32, .ssl = call->ssl};
	struct tls_conn *c = bpf_map_lookup_elem(&conns, &key);
	return c && !c->family ? c : NULL;
}

/* TP_PROTO(struct sock *sk, int ret, int flags): end of sock_sendmsg / sock_recvmsg, in the caller. */
SEC("raw_tp/sock_send_length")
int tls_sock_send(struct bpf_raw_tracepoint_args *ctx)
{
	struct tls_conn *c = conn_needing_tuple();
	if (c)
		set_tuple(c, (struct sock *)ctx->args[0]);
	return 0;
}

SEC("raw_tp/sock_recv_length")
int tls_sock_recv(struct bpf_raw_tracepoint_args *ctx)
{
	struct tls_conn *c = conn_needing_tuple();
	if (c)
		set_tuple(c, (struct sock *)ctx->args[0]);
	return 0;
}

/* TP_PROTO(struct pt_regs *regs, long id): every syscall entry; the fallback before Linux 6.4. */
SEC("raw_tp/sys_enter")
int tls_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	switch (ctx->args[1]) {
	case 0:  /* read */
	case 1:  /* write */
	case 19: /* readv */
	case 20: /* writev */
	case 44: /* sendto */
	case 45: /* recvfrom */
	case 46: /* sendmsg */
	case 47: /* recvmsg */
		break;
	default:
		return 0;
	}
	struct tls_conn *c = conn_needing_tuple();
	if (!c)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	set_tuple_from_fd(c, (int)BPF_CORE_READ(regs, di));
	return 0;
}
