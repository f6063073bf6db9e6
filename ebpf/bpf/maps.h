/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * maps.h: every structure shared between the fence programs (fence.bpf.c) and the
 * loader (ebpf/src/maps.rs). This header is the single definition; the Rust side
 * mirrors each struct with #[repr(C)] and asserts the same sizes and offsets, so a
 * field added here without its mirror fails the build on one side or the other.
 *
 * Conventions:
 *  - IPv4 addresses are stored as the kernel hands them over: network byte order.
 *  - Ports are stored in host byte order (converted once in the programs), because
 *    every consumer (Rust, audit events) wants host order.
 *  - Every struct has explicit padding so that the layout does not depend on the
 *    compiler, and the programs zero whole structs before filling them (the verifier
 *    rejects uninitialised stack bytes passed to map helpers).
 */
#ifndef EGRESS_FENCE_MAPS_H
#define EGRESS_FENCE_MAPS_H

#include <linux/types.h>


/* What to do with TCP to ports other than 53 and 443 (fence_config.other_tcp). */
#define FENCE_OTHER_TCP_HTTP 0 /* redirect to the transparent HTTP listener */
#define FENCE_OTHER_TCP_DENY 1 /* deny with EPERM and an event */

/* Key 0 of the one-entry `fence_config` array: what the runner may reach. */
struct fence_config {
	__u32 proxy_addr;         /* host-side veth address, network order */
	__u32 runner_addr;        /* runner-side veth address, network order (tc anti-spoofing) */
	__u16 explicit_port;      /* explicit HTTP proxy (HTTP_PROXY), host order */
	__u16 tls_port;           /* transparent TLS listener, host order */
	__u16 http_port;          /* transparent HTTP listener, host order */
	__u16 dns_port;           /* DNS filter, UDP and TCP, host order */
	__u32 runner_id;          /* copied into every event */
	__u8 other_tcp;           /* FENCE_OTHER_TCP_* */
	__u8 allow_loopback;      /* 1: the runner's own loopback is reachable */
	__u8 _pad[2];
};

/* Key of the `orig_dst` LRU hash: the runner-side end of a redirected TCP connection,
 * exactly what the proxy sees as the peer address of the accepted socket. */
struct orig_key {
	__u32 addr;               /* runner source address, network order */
	__u16 port;               /* runner source port, host order */
	__u16 _pad;
};

/*
 * Where the job asked to go before connect4/6 or sendmsg4/6 rewrote the destination.
 * Kept per socket in the `sock_orig` socket storage (freed with the socket) and copied by
 * the sockops program into `orig_dst`, keyed by struct orig_key, for the proxy.
 */
struct orig_dst {
	__u32 addr;               /* original IPv4 destination, network order */
	__u16 port;               /* original port, host order */
	__u16 _pad;
	__u32 tgid;               /* process that connected */
	__u32 _pad2;
	char comm[16];
};

/* Where an event or a counter comes from. */
enum fence_hook {
	FENCE_HOOK_CONNECT4 = 1,
	FENCE_HOOK_CONNECT6 = 2,
	FENCE_HOOK_SENDMSG4 = 3,
	FENCE_HOOK_SENDMSG6 = 4,
	FENCE_HOOK_SOCK_CREATE = 5,
	FENCE_HOOK_SKB_EGRESS = 6,
	FENCE_HOOK_TC_INGRESS = 7,
	FENCE_HOOK_MAX = 8,
};

/* Why something was denied (fence_event.reason). */
enum fence_reason {
	FENCE_REASON_DESTINATION = 1, /* address/port not served */
	FENCE_REASON_IPV6 = 2,        /* native IPv6 destination */
	FENCE_REASON_PROXY_PORT = 3,  /* host-side address, port that is not a listener */
	FENCE_REASON_PROTOCOL = 4,    /* transport protocol not served (raw, ICMP, SCTP, UDP not DNS) */
	FENCE_REASON_FRAGMENT = 5,    /* IP fragment */
	FENCE_REASON_SPOOFED = 6,     /* source address is not the runner's */
};

#define FENCE_VERDICT_DENY 1

/* One record of the `events` ring buffer. */
struct fence_event {
	__u64 ts_ns;              /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u32 pid;                /* thread id, 0 when not in process context (skb, tc) */
	__u32 tgid;               /* process id, 0 when not in process context */
	char comm[16];
	__u32 runner_id;
	__u8 hook;                /* enum fence_hook */
	__u8 verdict;             /* FENCE_VERDICT_* */
	__u8 reason;              /* enum fence_reason */
	__u8 family;              /* AF_INET or AF_INET6 */
	__u16 protocol;           /* IPPROTO_* or socket protocol */
	__u16 sock_type;          /* SOCK_* where known */
	__u16 dport;              /* destination port, host order; 0 when none */
	__u16 _pad;
	__u32 detail;             /* hook specific, 0 so far */
	__u8 daddr[16];           /* IPv4 in the first 4 bytes (network order), or IPv6 */
};

/* Indexes of the per-CPU `counters` array. */
enum fence_counter {
	/* indexes 1..FENCE_HOOK_MAX-1: denials per hook (the enum fence_hook value) */
	FENCE_CNT_REDIRECT_TLS = 10,
	FENCE_CNT_REDIRECT_HTTP = 11,
	FENCE_CNT_REDIRECT_DNS = 12,
	FENCE_CNT_ALLOWED_PROXY = 13,
	FENCE_CNT_EVENTS_LOST = 14,
	FENCE_CNT_MAX = 16,
};

#define FENCE_ASSERT_LAYOUT(type, size) _Static_assert(sizeof(struct type) == size, #type " size")
#define FENCE_ASSERT_OFFSET(type, field, off) \
	_Static_assert(__builtin_offsetof(struct type, field) == off, #type "." #field " offset")

FENCE_ASSERT_LAYOUT(fence_config, 24);
FENCE_ASSERT_OFFSET(fence_config, explicit_port, 8);
FENCE_ASSERT_OFFSET(fence_config, dns_port, 14);
FENCE_ASSERT_OFFSET(fence_config, runner_id, 16);
FENCE_ASSERT_OFFSET(fence_config, other_tcp, 20);
FENCE_ASSERT_OFFSET(fence_config, allow_loopback, 21);
FENCE_ASSERT_LAYOUT(orig_key, 8);
FENCE_ASSERT_OFFSET(orig_key, port, 4);
FENCE_ASSERT_LAYOUT(orig_dst, 32);
FENCE_ASSERT_OFFSET(orig_dst, port, 4);
FENCE_ASSERT_OFFSET(orig_dst, tgid, 8);
FENCE_ASSERT_OFFSET(orig_dst, comm, 16);
FENCE_ASSERT_LAYOUT(fence_event, 72);
FENCE_ASSERT_OFFSET(fence_event, pid, 8);
FENCE_ASSERT_OFFSET(fence_event, comm, 16);
FENCE_ASSERT_OFFSET(fence_event, runner_id, 32);
FENCE_ASSERT_OFFSET(fence_event, hook, 36);
FENCE_ASSERT_OFFSET(fence_event, family, 39);
FENCE_ASSERT_OFFSET(fence_event, protocol, 40);
FENCE_ASSERT_OFFSET(fence_event, dport, 44);
FENCE_ASSERT_OFFSET(fence_event, detail, 48);
FENCE_ASSERT_OFFSET(fence_event, daddr, 52);

#endif /* EGRESS_FENCE_MAPS_H */
