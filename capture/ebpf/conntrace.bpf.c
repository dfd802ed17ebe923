// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * conntrace: which process opened a connection, recorded at the moment it happens.
 *
 * Why: the worker names the processes at both ends of every call by reading /proc (sockets -> inodes ->
 * pids). A client that lives a few milliseconds (curl, a health-check probe, `dig`) has exited before
 * any /proc scan can see it. These programs record the owner while the process still exists.
 *
 * Only raw tracepoints are used (BPF_PROG_TYPE_RAW_TRACEPOINT, attached with bpf_raw_tracepoint_open):
 * kprobes and fentry are refused by the kernels we target, and raw tracepoints, unlike classic
 * `tp/` tracepoints, do not need tracefs mounted (it usually is not, on nodes and in containers).
 *
 *   raw_tp/inet_sock_set_state (every TCP state change; rare compared with packets)
 *     - -> SYN_SENT: connect() runs in the connecting process, so `current` is the client. The source
 *       port may still be 0 here (tcp_v4_connect sets SYN_SENT before choosing it), so the owner is
 *       parked in `connecting` keyed by the socket pointer...
 *     - SYN_SENT -> ESTABLISHED: ...and emitted here, with the full 4-tuple. This runs in softirq
 *       (the SYN-ACK arrived): `current` is whoever was interrupted and is never read.
 *     - -> LISTEN: listen() runs in the server process: a listener of a short-lived server.
 *   raw_tp/sock_send_length (after every sendmsg; returns at once unless the socket is UDP)
 *     - UDP: the sender is `current`. Emitted once per (socket, process, destination), deduplicated
 *       in `udp_seen`, so a DNS client (`dig`) is named even when it exits right after the answer.
 *
 *   iter/task_file (run on demand, not a hook: reading the iterator walks every process's files)
 *     - every TCP/UDP socket with its owner and namespace: the periodic scan in one pass.
 *
 * Not covered: the server side of accepted TCP connections (the SYN_RECV -> ESTABLISHED change runs
 * in softirq, so `current` is not the server; the worker attributes those to the listener's
 * process from /proc or from the LISTEN event), UDP receivers that never send, raw sockets, SCTP,
 * and a socket handed to another process after connect() (the connecting process is named).
 * sched_process_exec is not used: the name is read from the process itself at connect time.
 *
 * Every event goes to the `events` ring buffer, submitted without a wakeup (see wakeup_flags). A
 * reserve that fails (ring full: user space is not keeping up) is counted in
 * counters[COUNTER_LOST], never silent.
 *
 * Build: build.sh (clang -O2 -g -target bpf, CO-RE against vmlinux.h from the running kernel's BTF).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10

#define KIND_TCP_CONNECT 1 /* client: TCP connect() that reached ESTABLISHED */
#define KIND_TCP_LISTEN 2  /* server: listen() */
#define KIND_UDP_SEND 3    /* client or server: first datagram from (socket, process, destination) */

#define COUNTER_LOST 0        /* ring buffer full: event dropped */
#define COUNTER_EVENTS 1      /* events submitted */
#define COUNTER_UNMATCHED 2   /* SYN_SENT -> ESTABLISHED without a parked owner (tracer started later) */
#define COUNTER_READ_ERRORS 3 /* a kernel read failed: event dropped */
#define COUNTERS 4

#define CGROUP_NAME_LEN 128 /* "cri-containerd-<64 hex>.scope" is 86 */
#define RINGBUF_SIZE (1 << 20) /* 1 MiB: ~4800 events of slack for a stalled reader */

/* The layout is mirrored by capture/ebpf/conntrace.py (EVENT): change both together. */
struct conn_event {
	__u64 ts_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 tgid;  /* user-space pid */
	__u32 pid;   /* user-space thread id */
	__u32 netns; /* inode number of the socket's network namespace (as in /proc/PID/ns/net) */
	__u16 family;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 kind;  /* KIND_* */
	__u16 sport; /* host byte order */
	__u16 dport; /* host byte order */
	__u8 saddr[16]; /* AF_INET: first 4 bytes */
	__u8 daddr[16];
	char comm[16];
	char cgroup[CGROUP_NAME_LEN]; /* leaf name of the process's cgroup: holds the container id */
};

_Static_assert(sizeof(struct conn_event) == 208, "conn_event layout changed: update conntrace.py");

struct owner {
	__u32 tgid;
	__u32 pid;
	char comm[16];
	char cgroup[CGROUP_NAME_LEN];
};

struct udp_key {
	__u64 sk;
	__u32 tgid;
	__u16 sport;
	__u16 dport;
	__u8 daddr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, RINGBUF_SIZE);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* struct sock * */
	__type(value, struct owner);
} connecting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct udp_key);
	__type(value, __u8);
} udp_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);
	if (value)
		__sync_fetch_and_add(value, 1);
}

/*
 * The leaf name of the current task's cgroup: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
 * `crio-<id>.scope` or a bare `<id>` (cgroupfs driver). The cgroup v2 (default hierarchy) cgroup
 * first; on a v1-only host that is the root, so the memory controller's v1 cgroup is used instead.
 */
static __always_inline void read_cgroup_leaf(char *dst)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct css_set *cset = BPF_CORE_READ(task, cgroups);
	struct cgroup *cgrp = BPF_CORE_READ(cset, dfl_cgrp);
	if (BPF_CORE_READ(cgrp, level) == 0 && bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id)) {
		int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
		struct cgroup_subsys_state *css = NULL;
		if (id >= 0 && id < 16)
			bpf_core_read(&css, sizeof(css), &cset->subsys[id]);
		if (css)
			cgrp = BPF_CORE_READ(css, cgroup);
	}
	const char *name = BPF_CORE_READ(cgrp, kn, name);
	if (name)
		bpf_probe_read_kernel_str(dst, CGROUP_NAME_LEN, name);
}

static __always_inline void fill_owner(struct owner *o)
{
	__u64 id = bpf_get_current_pid_tgid();
	o->tgid = id >> 32;
	o->pid = (__u32)id;
	/* the process's name (its main thread's comm, as /proc/PID/comm shows), not the calling thread's */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	if (!leader || bpf_probe_read_kernel_str(o->comm, sizeof(o->comm), &leader->comm) < 0)
		bpf_get_current_comm(o->comm, sizeof(o->comm));
	read_cgroup_leaf(o->cgroup);
}

/* Family, ports, addresses and namespace of `sk`; 0 when the family is neither IPv4 nor IPv6. */
static __always_inline int read_socket(struct sock *sk, __u16 *family, __u16 *sport, __u16 *dport,
				       __u8 *saddr, __u8 *daddr, __u32 *netns)
{
	*family = BPF_CORE_READ(sk, __sk_common.skc_family);
	*sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	*dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	*netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (*family == AF_INET) {
		bpf_core_read(saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(daddr, 4, &sk->__sk_common.skc_daddr);
		return 1;
	}
	if (*family == AF_INET6) {
		bpf_core_read(saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(daddr, 16, &sk->__sk_common.skc_v6_daddr);
		return 1;
	}
	return 0;
}

/*
 * No wakeup per event: a wakeup is an irq_work self-interrupt, ~35 us per event inside a VM
 * (measured: 3.9 us -> 0.5 us average per state change without it). User space drains the ring
 * every few milliseconds and on demand; a wakeup is forced only once a quarter of it is full.
 */
static __always_inline __u64 wakeup_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > RINGBUF_SIZE / 4 ? BPF_RB_FORCE_WAKEUP
										  : BPF_RB_NO_WAKEUP;
}

static __always_inline void submit(struct sock *sk, const struct owner *o, __u8 proto, __u8 kind)
{
	struct conn_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_LOST);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	if (!read_socket(sk, &e->family, &e->sport, &e->dport, e->saddr, e->daddr, &e->netns)) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->tgid = o->tgid;
	e->pid = o->pid;
	e->proto = proto;
	e->kind = kind;
	__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
	__builtin_memcpy(e->cgroup, o->cgroup, sizeof(e->cgroup));
	bpf_ringbuf_submit(e, wakeup_flags());
	count(COUNTER_EVENTS);
}

/* A per-CPU scratch owner: struct owner is too large to build on the 512-byte BPF stack twice. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct owner);
} scratch SEC(".maps");

static __always_inline struct owner *current_owner(void)
{
	__u32 zero = 0;
	struct owner *o = bpf_map_lookup_elem(&scratch, &zero);
	if (!o) {
		count(COUNTER_READ_ERRORS);
		return NULL;
	}
	__builtin_memset(o, 0, sizeof(*o));
	fill_owner(o);
	return o;
}

/* TP_PROTO(const struct sock *sk, const int oldstate, const int newstate) */
SEC("raw_tp/inet_sock_set_state")
int conntrace_set_state(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int oldstate = (int)ctx->args[1];
	int newstate = (int)ctx->args[2];
	__u64 key = (__u64)sk;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_SYN_SENT) {
		struct owner *o = current_owner();
		if (o)
			bpf_map_update_elem(&connecting, &key, o, BPF_ANY);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT) {
		struct owner *o = bpf_map_lookup_elem(&connecting, &key);
		if (!o) {
			if (newstate == TCP_ESTABLISHED)
				count(COUNTER_UNMATCHED);
			return 0;
		}
		if (newstate == TCP_ESTABLISHED)
			submit(sk, o, IPPROTO_TCP, KIND_TCP_CONNECT);
		bpf_map_delete_elem(&connecting, &key);
		return 0;
	}
	if (newstate == TCP_LISTEN) {
		struct owner *o = current_owner();
		if (o)
			submit(sk, o, IPPROTO_TCP, KIND_TCP_LISTEN);
	}
	return 0;
}

/* TP_PROTO(struct sock *sk, int ret, int flags): after sock_sendmsg, in the sending process */
SEC("raw_tp/sock_send_length")
int conntrace_send(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];
	int ret = (int)ctx->args[1];

	if (!sk || ret < 0)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_UDP)
		return 0;

	struct udp_key key = {};
	__u64 id = bpf_get_current_pid_tgid();
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	key.sk = (__u64)sk;
	key.tgid = id >> 32;
	key.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	key.dport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	if (family == AF_INET)
		bpf_core_read(key.daddr, 4, &sk->__sk_common.skc_daddr);
	else if (family == AF_INET6)
		bpf_core_read(key.daddr, 16, &sk->__sk_common.skc_v6_daddr);
	else
		return 0;
	if (bpf_map_lookup_elem(&udp_seen, &key))
		return 0;
	__u8 one = 1;
	bpf_map_update_elem(&udp_seen, &key, &one, BPF_ANY);

	struct owner *o = current_owner();
	if (o)
		submit(sk, o, IPPROTO_UDP, KIND_UDP_SEND);
	return 0;
}

/* One socket held by one process: a record of the iterator below (mirrored by conntrace.py: SOCKET). */
struct socket_record {
	__u64 inode; /* as in /proc/PID/fd's socket:[inode] and /proc/net/tcp */
	__u32 tgid;
	__u32 netns;
	__u16 family;
	__u8 proto;
	__u8 state; /* TCP state (TCP_LISTEN = 10); UDP: 1 connected, 7 not */
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16]; /* the process's name */
};

_Static_assert(sizeof(struct socket_record) == 72, "socket_record layout changed: update conntrace.py");

#define S_IFMT 0170000
#define S_IFSOCK 0140000

/*
 * Every TCP/UDP socket of every process, in every network namespace, in one pass: the /proc scan
 * (socket tables per namespace, each walking the kernel's whole hash table, plus a readlink per
 * fd) without its cost. Reading the iterator (bpf_iter_create on its link) runs it once.
 * Tasks sharing one file table (threads) are visited once.
 */
SEC("iter/task_file")
int conntrace_sockets(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct task_struct *task = ctx->task;
	if (!file || !task)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *sock = (struct socket *)BPF_CORE_READ(file, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;

	struct socket_record r = {};
	if (!read_socket(sk, &r.family, &r.sport, &r.dport, r.saddr, r.daddr, &r.netns))
		return 0;
	r.inode = BPF_CORE_READ(file, f_inode, i_ino);
	r.tgid = BPF_CORE_READ(task, tgid);
	r.proto = proto;
	r.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);
	if (leader)
		bpf_probe_read_kernel_str(r.comm, sizeof(r.comm), &leader->comm);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}
