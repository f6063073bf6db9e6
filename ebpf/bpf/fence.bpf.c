// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * fence.bpf.c: the programs that make the egress proxy the only way out of a runner.
 *
 * One object per runner: the loader (ebpf/src/loader.rs) loads it, fills `fence_config`
 * and attaches every program to the runner's cgroup v2 directory (and the tc program to
 * the host-side veth). All maps are therefore per runner and die with its attachments.
 *
 * Policy (documented for users in ebpf/src/lib.rs, kept in sync here):
 *  - TCP to the proxy address is allowed on the proxy's listener ports only.
 *  - TCP to anything else is redirected: port 53 to the DNS filter (TCP DNS), port 443 to
 *    the transparent TLS listener, any other port to the transparent HTTP listener (or
 *    denied, per fence_config.other_tcp). The original destination is kept in socket
 *    storage and, once the source port is known (sockops TCP_CONNECT_CB), published in
 *    `orig_dst` keyed by the runner-side address and port that the proxy sees.
 *  - UDP: port 53 anywhere goes to the DNS filter; replies are rewritten (recvmsg4/6) so
 *    they appear to come from the server the job asked. All other UDP is denied.
 *  - IPv6: IPv4-mapped destinations (::ffff:a.b.c.d) are treated as the IPv4 address they
 *    carry; every other IPv6 destination is denied (the runner has no IPv6 path anyway).
 *  - The runner's own loopback (127/8, ::1) is allowed when fence_config.allow_loopback.
 *  - inet sockets only as TCP or UDP (no raw, no ICMP "ping" sockets, no SCTP/MPTCP).
 *    Other families (packet, vsock, ...) never reach these hooks; see ebpf/src/lib.rs for
 *    what stops them (capabilities over the runner's netns, the tc program, seccomp).
 *  - cgroup_skb egress and tc ingress on the host-side veth drop every packet that is not
 *    addressed to a proxy listener, whatever socket (or no socket) produced it.
 * Every denial increments a per-CPU counter and emits a `fence_event` on the ring buffer.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

/* From <sys/socket.h> and <linux/netlink.h>; glibc headers are not usable with -target bpf. */
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* cgroup programs: 1 lets the operation go on, 0 fails it with EPERM (bpf-cgroup.h). */
#define ALLOW 1
#define DENY 0

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fence_config);
} fence_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct orig_dst);
} sock_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct orig_key);
	__type(value, struct orig_dst);
} orig_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FENCE_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline const struct fence_config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&fence_config, &zero);
}

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);
	if (value)
		*value += 1; /* per-CPU slot: no other writer */
}

/* What a denial reports; filled by each hook, turned into a fence_event by emit(). */
struct denial {
	__u8 hook;
	__u8 reason;
	__u8 family;
	__u16 protocol;
	__u16 sock_type;
	__u16 dport;
	__u32 detail;
	__u32 daddr4;
	const __u32 *daddr6;      /* NULL unless IPv6 */
};

/*
 * Count the denial and publish it. `in_task` is false for skb and tc programs: they
 * run in softirq context where the "current" task is whoever was interrupted, so pid
 * and comm would be wrong; they are left zero there.
 */
static __always_inline void emit(const struct fence_config *cfg, const struct denial *d, int in_task,
				 __u32 a0, __u32 a1, __u32 a2, __u32 a3)
{
	count(d->hook);
	struct fence_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(FENCE_CNT_EVENTS_LOST);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	if (in_task) {
		__u64 id = bpf_get_current_pid_tgid();
		ev->pid = (__u32)id;
		ev->tgid = (__u32)(id >> 32);
		bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	}
	ev->runner_id = cfg ? cfg->runner_id : 0;
	ev->hook = d->hook;
	ev->verdict = FENCE_VERDICT_DENY;
	ev->reason = d->reason;
	ev->family = d->family;
	ev->protocol = d->protocol;
	ev->sock_type = d->sock_type;
	ev->dport = d->dport;
	ev->detail = d->detail;
	__u32 *addr = (__u32 *)ev->daddr;
	addr[0] = a0;
	addr[1] = a1;
	addr[2] = a2;
	addr[3] = a3;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline int is_loopback4(__u32 addr_be)
{
	return (bpf_ntohl(addr_be) >> 24) == 127;
}

static __always_inline int is_proxy_tcp_port(const struct fence_config *cfg, __u16 port)
{
	return port == cfg->explicit_port || port == cfg->tls_port || port == cfg->http_port ||
	       port == cfg->dns_port;
}

/* Remember where the job meant to go; read back by sockops, recvmsg and getpeername. */
static __always_inline void remember(struct bpf_sock *sk, __u32 addr, __u16 port)
{
	if (!sk)
		return;
	struct orig_dst *o = bpf_sk_storage_get(&sock_orig, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return;
	o->addr = addr;
	o->port = port;
	o->tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/*
 * Decide an IPv4 destination (also used for IPv4-mapped IPv6). Returns ALLOW or DENY and,
 * for redirects, sets *new_port (host order) and makes the caller rewrite the address
 * to the proxy. `is_connect` distinguishes connect() from an unconnected UDP send.
 */
static __always_inline int decide4(const struct fence_config *cfg, struct bpf_sock_addr *ctx,
				   __u32 addr, __u16 port, __u16 *new_port, struct denial *d)
{
	*new_port = 0;
	d->dport = port;
	d->daddr4 = addr;
	if (cfg->allow_loopback && is_loopback4(addr))
		return ALLOW;
	if (ctx->type == SOCK_STREAM) {
		if (addr == cfg->proxy_addr && is_proxy_tcp_port(cfg, port)) {
			count(FENCE_CNT_ALLOWED_PROXY);
			/* The proxy learns which process connected the same way as for a
			 * redirected connection, its destination being the proxy itself. Every
			 * listener port, not only the explicit one: a job connecting straight
			 * to a transparent or DNS listener must be named in the refusal, and
			 * must not inherit the entry an earlier socket left under the same
			 * source port (found by an attack run). */
			remember(ctx->sk, addr, port);
			return ALLOW;
		}
		/* Port 53 goes to the DNS filter whatever the address, the host side's
		 * included: it is the resolver in the runner's resolv.conf, and the C
		 * library retries a truncated UDP answer over TCP to it. */
		if (port == 53) {
			*new_port = cfg->dns_port;
			count(FENCE_CNT_REDIRECT_DNS);
			return ALLOW;
		}
		if (addr == cfg->proxy_addr) {
			d->reason = FENCE_REASON_PROXY_PORT;
			return DENY;
		}
		if (port == 443) {
			*new_port = cfg->tls_port;
			count(FENCE_CNT_REDIRECT_TLS);
		} else if (cfg->other_tcp == FENCE_OTHER_TCP_HTTP) {
			*new_port = cfg->http_port;
			count(FENCE_CNT_REDIRECT_HTTP);
		} else {
			d->reason = FENCE_REASON_DESTINATION;
			return DENY;
		}
		return ALLOW;
	}
	if (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP) {
		if (addr == cfg->proxy_addr && port == cfg->dns_port) {
			count(FENCE_CNT_ALLOWED_PROXY);
			/* As for TCP above: the filter's events name the sender, never a
			 * socket that used the same source port before. */
			remember(ctx->sk, addr, port);
			return ALLOW;
		}
		if (port == 53) {
			*new_port = cfg->dns_port;
			count(FENCE_CNT_REDIRECT_DNS);
			return ALLOW;
		}
		d->reason = addr == cfg->proxy_addr ? FENCE_REASON_PROXY_PORT : FENCE_REASON_PROTOCOL;
		return DENY;
	}
	d->reason = FENCE_REASON_PROTOCOL;
	return DENY;
}

static __always_inline int is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline int is_loopback6(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

static __always_inline int fill_denial(struct denial *d, __u8 hook, __u8 family, struct bpf_sock_addr *ctx)
{
	__builtin_memset(d, 0, sizeof(*d));
	d->hook = hook;
	d->family = family;
	d->protocol = ctx->protocol;
	d->sock_type = ctx->type;
	return 0;
}

static __always_inline int addr4_hook(struct bpf_sock_addr *ctx, __u8 hook)
{
	const struct fence_config *cfg = config();
	struct denial d;
	fill_denial(&d, hook, AF_INET, ctx);
	if (!cfg) /* not configured yet: fail closed */
		return DENY;
	__u32 addr = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u16 new_port;
	if (decide4(cfg, ctx, addr, port, &new_port, &d) == DENY) {
		emit(cfg, &d, 1, addr, 0, 0, 0);
		return DENY;
	}
	if (new_port) {
		remember(ctx->sk, addr, port);
		ctx->user_ip4 = cfg->proxy_addr;
		ctx->user_port = bpf_htons(new_port);
	}
	return ALLOW;
}

static __always_inline int addr6_hook(struct bpf_sock_addr *ctx, __u8 hook)
{
	const struct fence_config *cfg = config();
	struct denial d;
	fill_denial(&d, hook, AF_INET6, ctx);
	__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (!cfg)
		return DENY;
	if (cfg->allow_loopback && is_loopback6(a))
		return ALLOW;
	if (!is_v4_mapped(a)) {
		d.reason = FENCE_REASON_IPV6;
		d.dport = port;
		emit(cfg, &d, 1, a[0], a[1], a[2], a[3]);
		return DENY;
	}
	__u16 new_port;
	if (decide4(cfg, ctx, a[3], port, &new_port, &d) == DENY) {
		emit(cfg, &d, 1, a[0], a[1], a[2], a[3]);
		return DENY;
	}
	if (new_port) {
		remember(ctx->sk, a[3], port);
		ctx->user_ip6[3] = cfg->proxy_addr;
		ctx->user_port = bpf_htons(new_port);
	}
	return ALLOW;
}

SEC("cgroup/connect4")
int fence_connect4(struct bpf_sock_addr *ctx)
{
	return addr4_hook(ctx, FENCE_HOOK_CONNECT4);
}

SEC("cgroup/connect6")
int fence_connect6(struct bpf_sock_addr *ctx)
{
	return addr6_hook(ctx, FENCE_HOOK_CONNECT6);
}

/* Unconnected UDP: runs once per datagram (sendto, sendmsg, each message of sendmmsg). */
SEC("cgroup/sendmsg4")
int fence_sendmsg4(struct bpf_sock_addr *ctx)
{
	return addr4_hook(ctx, FENCE_HOOK_SENDMSG4);
}

SEC("cgroup/sendmsg6")
int fence_sendmsg6(struct bpf_sock_addr *ctx)
{
	return addr6_hook(ctx, FENCE_HOOK_SENDMSG6);
}

/*
 * Replies from the DNS filter carry the proxy's address; resolvers (glibc res_send)
 * drop answers whose source is not the server they asked, so give back the original.
 * recvmsg and getpeername programs must return 1 (the kernel rejects anything else).
 */
static __always_inline void restore4(struct bpf_sock_addr *ctx, __u32 *addr)
{
	const struct fence_config *cfg = config();
	if (!cfg || !ctx->sk || *addr != cfg->proxy_addr)
		return;
	struct orig_dst *o = bpf_sk_storage_get(&sock_orig, ctx->sk, 0, 0);
	if (!o)
		return;
	*addr = o->addr;
	ctx->user_port = bpf_htons(o->port);
}

static __always_inline int restore_hook4(struct bpf_sock_addr *ctx)
{
	__u32 addr = ctx->user_ip4;
	restore4(ctx, &addr);
	ctx->user_ip4 = addr;
	return 1;
}

static __always_inline int restore_hook6(struct bpf_sock_addr *ctx)
{
	__u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	if (!is_v4_mapped(a))
		return 1;
	__u32 addr = a[3];
	restore4(ctx, &addr);
	ctx->user_ip6[3] = addr;
	return 1;
}

SEC("cgroup/recvmsg4")
int fence_recvmsg4(struct bpf_sock_addr *ctx)
{
	return restore_hook4(ctx);
}

SEC("cgroup/recvmsg6")
int fence_recvmsg6(struct bpf_sock_addr *ctx)
{
	return restore_hook6(ctx);
}

/* So that a job calling getpeername() on a redirected socket sees what it asked for. */
SEC("cgroup/getpeername4")
int fence_getpeername4(struct bpf_sock_addr *ctx)
{
	return restore_hook4(ctx);
}

SEC("cgroup/getpeername6")
int fence_getpeername6(struct bpf_sock_addr *ctx)
{
	return restore_hook6(ctx);
}

/*
 * TCP_CONNECT_CB runs in tcp_connect(), after the source port is chosen and before the
 * SYN leaves, so the entry exists before the proxy can accept the connection.
 */
SEC("sockops")
int fence_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct orig_dst *o = bpf_sk_storage_get(&sock_orig, sk, 0, 0);
	if (!o)
		return 1;
	struct orig_key key;
	__builtin_memset(&key, 0, sizeof(key));
	/* For an IPv6 socket talking to a mapped address the kernel fills local_ip4 too. */
	key.addr = skops->local_ip4;
	key.port = (__u16)skops->local_port; /* host order, unlike remote_port */
	bpf_map_update_elem(&orig_dst, &key, o, BPF_ANY);
	return 1;
}

/* inet sockets: TCP and UDP only (no SOCK_RAW, no ICMP ping sockets, no SCTP). */
SEC("cgroup/sock_create")
int fence_sock_create(struct bpf_sock *sk)
{
	int ok = (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP) ||
		 (sk->type == SOCK_DGRAM && sk->protocol == IPPROTO_UDP);
	if (ok)
		return ALLOW;
	struct denial d;
	__builtin_memset(&d, 0, sizeof(d));
	d.hook = FENCE_HOOK_SOCK_CREATE;
	d.reason = FENCE_REASON_PROTOCOL;
	d.family = sk->family;
	d.protocol = sk->protocol;
	d.sock_type = sk->type;
	emit(config(), &d, 1, 0, 0, 0, 0);
	return DENY;
}

/*
 * Packet-level decision shared by the cgroup_skb backstop and the tc program. `off` is
 * where the IP header starts. Returns 1 to pass.
 */
/*
 * A datagram leaving for the DNS filter: publish where its socket was headed and which
 * process opened it (written by connect4/sendmsg4 when they redirected it), keyed by its
 * source like the TCP entries of sockops, so that the filter's events name the process.
 * A UDP socket has its port only once it sends (connect() on an unbound one binds later),
 * hence here rather than at connect time.
 */
static __always_inline void publish_datagram(struct __sk_buff *skb, __u32 saddr, __u16 sport)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return;
	struct orig_dst *o = bpf_sk_storage_get(&sock_orig, sk, 0, 0);
	if (!o)
		return;
	struct orig_key key;
	__builtin_memset(&key, 0, sizeof(key));
	key.addr = saddr;
	key.port = sport;
	bpf_map_update_elem(&orig_dst, &key, o, BPF_ANY);
}

static __always_inline int packet_ok(struct __sk_buff *skb, __u32 off, __u16 l3proto, __u8 hook,
				     int check_source)
{
	const struct fence_config *cfg = config();
	struct denial d;
	__builtin_memset(&d, 0, sizeof(d));
	d.hook = hook;
	if (!cfg)
		return 0;
	if (l3proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return 0;
		d.family = AF_INET;
		d.protocol = ip.protocol;
		if (cfg->allow_loopback && is_loopback4(ip.daddr) && !check_source)
			return 1;
		/* Non-first fragments carry no ports to check; none of the proxy's traffic
		 * needs fragmenting (DNS queries are small, TCP segments fit the MTU). */
		if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
			d.reason = FENCE_REASON_FRAGMENT;
			goto deny4;
		}
		__u16 ports[2] = {0, 0};
		if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
			if (bpf_skb_load_bytes(skb, off + ip.ihl * 4, ports, sizeof(ports)) < 0)
				return 0;
		}
		__u16 dport = bpf_ntohs(ports[1]);
		d.dport = dport;
		if (check_source && ip.saddr != cfg->runner_addr) {
			d.reason = FENCE_REASON_SPOOFED;
			goto deny4;
		}
		if (ip.daddr == cfg->proxy_addr) {
			if (ip.protocol == IPPROTO_TCP && is_proxy_tcp_port(cfg, dport))
				return 1;
			if (ip.protocol == IPPROTO_UDP && dport == cfg->dns_port) {
				if (!check_source) /* cgroup egress, where the socket is known */
					publish_datagram(skb, ip.saddr, bpf_ntohs(ports[0]));
				return 1;
			}
			d.reason = FENCE_REASON_PROXY_PORT;
		} else {
			d.reason = FENCE_REASON_DESTINATION;
		}
deny4:
		emit(cfg, &d, 0, ip.daddr, 0, 0, 0);
		return 0;
	}
	if (l3proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return 0;
		__u32 a[4];
		__builtin_memcpy(a, &ip6.daddr, sizeof(a));
		if (cfg->allow_loopback && is_loopback6(a) && !check_source)
			return 1;
		d.family = AF_INET6;
		d.protocol = ip6.nexthdr;
		d.reason = FENCE_REASON_IPV6;
		emit(cfg, &d, 0, a[0], a[1], a[2], a[3]);
		return 0;
	}
	if (check_source && l3proto == bpf_htons(ETH_P_ARP))
		return 1; /* the host must learn the runner's MAC address */
	d.reason = FENCE_REASON_PROTOCOL;
	d.protocol = bpf_ntohs(l3proto);
	emit(cfg, &d, 0, 0, 0, 0, 0);
	return 0;
}

/* Backstop for anything the socket hooks did not rewrite (cgroup_skb: 1 pass, 0 drop). */
SEC("cgroup_skb/egress")
int fence_skb_egress(struct __sk_buff *skb)
{
	return packet_ok(skb, 0, (__u16)skb->protocol, FENCE_HOOK_SKB_EGRESS, 0);
}

/*
 * tc ingress on the host-side veth: every frame the runner sends, from any socket or
 * none (packet sockets, a process that escaped the cgroup), is checked on the host.
 */
SEC("classifier")
int fence_tc_ingress(struct __sk_buff *skb)
{
	if (packet_ok(skb, ETH_HLEN, (__u16)skb->protocol, FENCE_HOOK_TC_INGRESS, 1))
		return TC_ACT_OK;
	return TC_ACT_SHOT;
}
