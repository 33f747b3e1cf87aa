// SPDX-License-Identifier: MIT OR Apache-2.0
//
// natgate's in-kernel fast path: translates the packets of established TCP and UDP sessions that
// the engine put into SESSIONS, and hands everything else to the slow path untouched.
//
// The engine is the one authority. This program never makes, refreshes or ends a session on its
// own: it looks the flow up, rewrites it exactly as the engine's own fast lane would (addresses,
// ports, one TTL decrement, incremental checksums: RFC 1624), stamps the entry's last-seen time
// and counters for the engine to read back, and redirects the frame to the other interface with
// the Ethernet header the kernel's FIB and neighbour tables give. Whatever it does not carry goes
// to the engine (the slow path) exactly as it arrived: straight into this side's TUN when the
// kernel's routing would send it there, so that the kernel routes it once (out of the engine)
// and not twice, or on to the kernel (TC_ACT_OK) when it is the host's. What is punted, and why,
// mirrors the engine's `lane_head`/`flow_head` conditions; a differential test runs both on the
// same packets (`BPF_PROG_TEST_RUN`).
//
// Layouts shared with Rust (`crates/natgate/src/dataplane/fastpath/map.rs`): keep them in step.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// A flow as it arrives on one side: the outbound view (internal -> remote) on the inside, the
// inbound view (remote -> external) on the outside. Addresses and ports in network order.
struct flow_key {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 side;
	__u16 pad;
};

// What to write, and what the fast path saw. The endpoint is the new source (outbound) or the
// new destination (inbound). `last_seen_ns` is CLOCK_MONOTONIC (bpf_ktime_get_ns).
struct flow_action {
	__u32 addr;
	__u16 port;
	__u16 pad;
	__u64 last_seen_ns;
	__u64 packets;
	__u64 bytes;
};

// One attached interface: which side it is, the interface its translated packets must leave
// by, the engine's MTU for that way out (a DF packet over it is the engine's to answer), and the
// TUN through which the engine reads this side's packets (0: none, every punt to the kernel),
// and the interface's own MAC address (the XDP program sees frames for others too).
struct iface {
	__u32 peer_ifindex;
	__u16 mtu_out;
	__u8 side;
	__u8 pad;
	__u32 tun_ifindex;
	__u8 mac[ETH_ALEN];
	__u16 pad2;
};

enum side { SIDE_INSIDE = 0, SIDE_OUTSIDE = 1 };

// Counters, one slot each in STATS. The order is the Rust `FastPathCounter` order.
enum counter {
	C_FORWARDED_OUT,
	C_FORWARDED_IN,
	C_BYTES_OUT,
	C_BYTES_IN,
	C_PUNT_NOT_IPV4,
	C_PUNT_HEADER,
	C_PUNT_FRAGMENT,
	C_PUNT_PROTOCOL,
	C_PUNT_TCP_FLAGS,
	C_PUNT_TTL,
	C_PUNT_TOO_BIG,
	C_PUNT_NO_SESSION,
	C_PUNT_NO_ROUTE,
	C_PUNT_NOT_OURS,
	C_TO_ENGINE,
	C_CARRIED_AT_XDP,
	C_COUNT,
};

// Load-time flags (FLAGS), a constant the verifier folds: no cost on the packet path.
#define F_NO_REDIRECT 1 /* rewrite but do not route: BPF_PROG_TEST_RUN compares bytes */

volatile const __u32 FLAGS = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct flow_key);
	__type(value, struct flow_action);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} SESSIONS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct iface);
} IFACES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} STATS SEC(".maps");

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&STATS, &which);
	if (c)
		*c += n;
}

static __always_inline int punt(__u32 why)
{
	count(why, 1);
	return TC_ACT_OK;
}

// RFC 1071 over the 20-byte header: zero when its checksum verifies.
static __always_inline __u16 header_sum(const __u16 *h)
{
	__u32 s = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		s += h[i];
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

#define ETH_LEN sizeof(struct ethhdr)
#define IP_LEN sizeof(struct iphdr)
#define AF_INET 2
#define IP_CSUM_OFF (ETH_LEN + offsetof(struct iphdr, check))
#define IP_TTL_OFF (ETH_LEN + offsetof(struct iphdr, ttl))
#define IP_SRC_OFF (ETH_LEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_LEN + offsetof(struct iphdr, daddr))
#define L4_OFF (ETH_LEN + IP_LEN)

// The addresses and the fields routing looks at, of a packet on its way to the engine.
struct route_key {
	__u32 src;
	__u32 dst;
	__u8 tos;
	__u8 proto;
};

// Hands a packet the program does not carry to the engine, counted under `why`. The kernel's
// own routing would take it there through a policy rule (or the pool's route) into this side's
// TUN: that look-up is made here, with the same rules, ingress interface and forwarding switch,
// and when it leads into the TUN the packet goes there directly. The kernel then routes it once,
// out of the engine, where it took two passes before (so the engine keeps the TTL:
// `TtlHandling::Keep`), and a flood that overflows the TUN's queue costs the kernel a look-up
// per packet it loses, not a routing pass. What the look-up sends elsewhere (the host's own
// addresses, broadcasts, no route) goes on to the kernel as it arrived.
static __always_inline int to_engine(struct __sk_buff *skb, const struct iface *ifc,
				     struct route_key rk, __u32 why)
{
	count(why, 1);
	if (ifc->tun_ifindex == 0 || (FLAGS & F_NO_REDIRECT))
		return TC_ACT_OK;
	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET;
	fib.tos = rk.tos;
	fib.l4_protocol = rk.proto;
	fib.ipv4_src = rk.src;
	fib.ipv4_dst = rk.dst;
	fib.ifindex = skb->ingress_ifindex;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	// A TUN has no neighbours to resolve: the look-up names the device before it asks for one.
	if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
	    fib.ifindex != ifc->tun_ifindex)
		return TC_ACT_OK;
	count(C_TO_ENGINE, 1);
	return bpf_redirect(ifc->tun_ifindex, 0);
}

// What `classify` read of a frame.
struct parsed {
	// The flow as it arrives on this side (valid when the frame may be carried).
	struct flow_key key;
	// What routing looks at (valid when `routable`).
	struct route_key rk;
	// The IPv4 total length.
	__u32 len;
	__u8 ttl;
	// The IPv4 header was there and the TTL does not expire here: the packet is the engine's
	// to see if the routing says so.
	__u8 routable;
};

// classify's answer for a frame the fast path may carry (if its flow is in SESSIONS).
#define CARRY C_COUNT

// Reads a frame the way the engine's flow_head does: a plain 20-byte IPv4 header, a whole
// datagram, TCP or UDP, nothing that changes engine state. Returns CARRY, or the counter that
// says why not. `frame_len` is the whole frame's length; the linear part (`data` to `end`) must
// hold the headers.
static __always_inline __u32 classify(void *data, void *end, __u32 frame_len,
				      const struct iface *ifc, struct parsed *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return C_PUNT_NOT_IPV4;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return C_PUNT_HEADER;
	// RFC 1812 5.3.1: a TTL that would reach zero is the router's (the kernel's) to answer,
	// from the address of the interface the packet came in on, before it is routed anywhere.
	p->ttl = ip->ttl;
	if (p->ttl <= 1)
		return C_PUNT_TTL;
	p->rk.src = ip->saddr;
	p->rk.dst = ip->daddr;
	p->rk.tos = ip->tos;
	p->rk.proto = ip->protocol;
	p->routable = 1;
	if (*(__u8 *)ip != 0x45)
		return C_PUNT_HEADER;
	if (ip->frag_off & bpf_htons(0x3fff))
		return C_PUNT_FRAGMENT;
	__u8 proto = ip->protocol;
	__u32 need;
	if (proto == IPPROTO_TCP)
		need = IP_LEN + sizeof(struct tcphdr);
	else if (proto == IPPROTO_UDP)
		need = IP_LEN + sizeof(struct udphdr);
	else
		return C_PUNT_PROTOCOL;
	__u32 len = bpf_ntohs(ip->tot_len);
	if (len < need || ETH_LEN + len > frame_len)
		return C_PUNT_HEADER;
	if (header_sum((const __u16 *)ip) != 0)
		return C_PUNT_HEADER;
	// `need` bytes are inside the datagram; the linear part holds a TCP header's worth.
	__u16 *ports = (void *)(ip + 1);
	if ((void *)(ports + 2) > end)
		return C_PUNT_HEADER;
	if (ports[0] == 0 || ports[1] == 0)
		return C_PUNT_HEADER;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip + 1);
		if ((void *)(tcp + 1) > end)
			return C_PUNT_HEADER;
		// SYN, FIN and RST change the engine's TCP state: the engine must see them.
		if (tcp->syn || tcp->fin || tcp->rst)
			return C_PUNT_TCP_FLAGS;
	}
	// RFC 4787 REQ-13: DF and too big for the engine's MTU: the engine answers.
	if ((ip->frag_off & bpf_htons(0x4000)) && len > ifc->mtu_out)
		return C_PUNT_TOO_BIG;
	p->key.src = ip->saddr;
	p->key.dst = ip->daddr;
	p->key.sport = ports[0];
	p->key.dport = ports[1];
	p->key.proto = proto;
	p->key.side = ifc->side;
	p->len = len;
	return CARRY;
}

// The way out for a carried flow's translated packet, from the kernel's FIB and neighbour
// tables: 0 and `fib` filled, or the counter that says why the packet cannot go at once (no
// route, an unresolved neighbour, the wrong way out, over the interface's MTU).
static __always_inline __u32 route_out(void *ctx, const struct iface *ifc, __u32 ifindex,
				       const struct parsed *p, __u32 new_addr,
				       struct bpf_fib_lookup *fib)
{
	int outbound = ifc->side == SIDE_INSIDE;
	fib->family = AF_INET;
	fib->l4_protocol = p->key.proto;
	fib->tot_len = p->len;
	fib->ipv4_src = outbound ? new_addr : p->key.src;
	fib->ipv4_dst = outbound ? p->key.dst : new_addr;
	fib->ifindex = ifindex;
	long rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), BPF_FIB_LOOKUP_DIRECT);
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return C_PUNT_TOO_BIG;
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib->ifindex != ifc->peer_ifindex)
		return C_PUNT_NO_ROUTE;
	return 0;
}

// What a carried packet leaves behind in its flow's entry and the counters.
static __always_inline void carried(struct flow_action *act, int outbound, __u32 len)
{
	act->last_seen_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&act->packets, 1);
	__sync_fetch_and_add(&act->bytes, len);
	count(outbound ? C_FORWARDED_OUT : C_FORWARDED_IN, 1);
	count(outbound ? C_BYTES_OUT : C_BYTES_IN, len);
}

SEC("classifier")
int natgate_tc(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ingress_ifindex;
	struct iface *ifc = bpf_map_lookup_elem(&IFACES, &ifindex);
	if (!ifc)
		return TC_ACT_OK;
	__u32 flags = FLAGS;
	// Frames for other hosts (a switch flooding) the kernel drops; broadcast and multicast are
	// the kernel's to handle.
	if (skb->pkt_type != PACKET_HOST)
		return punt(C_PUNT_NOT_OURS);

	// The headers the look-up reads must be in the linear part.
	if (skb->data + L4_OFF + sizeof(struct tcphdr) > skb->data_end)
		bpf_skb_pull_data(skb, L4_OFF + sizeof(struct tcphdr));
	struct parsed p = {};
	__u32 why = classify((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len, ifc,
			     &p);
	if (why != CARRY)
		return p.routable ? to_engine(skb, ifc, p.rk, why) : punt(why);
	struct flow_action *act = bpf_map_lookup_elem(&SESSIONS, &p.key);
	if (!act)
		return to_engine(skb, ifc, p.rk, C_PUNT_NO_SESSION);

	__u8 proto = p.key.proto;
	int outbound = ifc->side == SIDE_INSIDE;
	__u32 old_addr = outbound ? p.key.src : p.key.dst;
	__u16 old_port = outbound ? p.key.sport : p.key.dport;
	__u32 new_addr = act->addr;
	__u16 new_port = act->port;

	// Route the translated packet before touching it: what the kernel cannot send on at once
	// goes to the engine as it arrived.
	struct bpf_fib_lookup fib = {};
	if (!(flags & F_NO_REDIRECT)) {
		why = route_out(skb, ifc, ifindex, &p, new_addr, &fib);
		if (why)
			return to_engine(skb, ifc, p.rk, why);
	}

	// The rewrite, with the kernel's checksum helpers so that checksum offload states
	// (CHECKSUM_PARTIAL from a local sender, CHECKSUM_COMPLETE) stay right.
	__u32 addr_off = outbound ? IP_SRC_OFF : IP_DST_OFF;
	__u32 port_off = L4_OFF + (outbound ? 0 : 2);
	__u32 l4_csum_off = L4_OFF + (proto == IPPROTO_TCP ? offsetof(struct tcphdr, check)
							     : offsetof(struct udphdr, check));
	__u64 l4_flags = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	if (new_addr != old_addr) {
		bpf_l4_csum_replace(skb, l4_csum_off, old_addr, new_addr,
				    l4_flags | BPF_F_PSEUDO_HDR | sizeof(new_addr));
		bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr));
		bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0);
	}
	if (new_port != old_port) {
		bpf_l4_csum_replace(skb, l4_csum_off, old_port, new_port,
				    l4_flags | sizeof(new_port));
		bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0);
	}
	// One TTL decrement: the TTL shares its 16-bit word with the protocol.
	__u16 old_word = bpf_htons(((__u16)p.ttl << 8) | proto);
	__u16 new_word = bpf_htons(((__u16)(p.ttl - 1) << 8) | proto);
	__u8 new_ttl = p.ttl - 1;
	bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_word, new_word, sizeof(new_word));
	bpf_skb_store_bytes(skb, IP_TTL_OFF, &new_ttl, 1, 0);
	carried(act, outbound, p.len);

	if (flags & F_NO_REDIRECT)
		return TC_ACT_REDIRECT;
	if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(fib.ifindex, 0);
}

// RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), on one 16-bit word as stored (the one's-complement
// sum does not depend on byte order, so neither value is swapped).
static __always_inline __u16 csum_replace2(__u16 check, __u16 old, __u16 new)
{
	__u32 s = (__u16)~check + (__u16)~old + (__u32) new;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline __u16 csum_replace4(__u16 check, __u32 old, __u32 new)
{
	check = csum_replace2(check, (__u16)(old >> 16), (__u16)(new >> 16));
	return csum_replace2(check, (__u16)old, (__u16) new);
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	int same = 1;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		same &= a[i] == b[i];
	return same;
}

// The same fast path at the XDP hook, for drivers with native XDP, where a frame is handled
// before the kernel builds a socket buffer for it. It carries what the TC program would carry,
// with the same look-ups, and passes everything else (XDP_PASS) on to the TC program behind it,
// which counts the punt and hands the packet to the engine: one place decides what the engine
// sees. With no socket buffer there are no checksum helpers: the sums are updated here (RFC 1624),
// and a UDP datagram without a checksum keeps none (RFC 768).
SEC("xdp")
int natgate_xdp(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct iface *ifc = bpf_map_lookup_elem(&IFACES, &ifindex);
	if (!ifc)
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	// XDP sees every frame the interface receives: only those for its own address are ours.
	if ((void *)(eth + 1) > end || !same_mac(eth->h_dest, ifc->mac))
		return XDP_PASS;
	struct parsed p = {};
	// The frame's length from the kernel: subtracting packet pointers is a privilege
	// (CAP_PERFMON) that natgate's service does not have.
	if (classify(data, end, (__u32)bpf_xdp_get_buff_len(ctx), ifc, &p) != CARRY)
		return XDP_PASS;
	struct flow_action *act = bpf_map_lookup_elem(&SESSIONS, &p.key);
	if (!act)
		return XDP_PASS;
	int outbound = ifc->side == SIDE_INSIDE;
	__u32 new_addr = act->addr;
	__u16 new_port = act->port;
	struct bpf_fib_lookup fib = {};
	if (!(FLAGS & F_NO_REDIRECT) && route_out(ctx, ifc, ifindex, &p, new_addr, &fib))
		return XDP_PASS;

	// classify checked these bounds; the verifier needs them again here.
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return XDP_PASS;
	__u16 *l4 = (void *)(ip + 1);
	__u16 *l4_check;
	if (p.key.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)(ip + 1);
		if ((void *)(tcp + 1) > end)
			return XDP_PASS;
		l4_check = &tcp->check;
	} else {
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > end)
			return XDP_PASS;
		l4_check = &udp->check;
	}
	__u32 *addr = outbound ? &ip->saddr : &ip->daddr;
	__u16 *port = outbound ? &l4[0] : &l4[1];
	__u32 old_addr = *addr;
	__u16 old_port = *port;
	__u16 check = *l4_check;
	if (p.key.proto == IPPROTO_TCP || check != 0) {
		check = csum_replace4(check, old_addr, new_addr);
		check = csum_replace2(check, old_port, new_port);
		if (p.key.proto == IPPROTO_UDP && check == 0)
			check = 0xffff;
		*l4_check = check;
	}
	__u16 ip_check = csum_replace4(ip->check, old_addr, new_addr);
	// One TTL decrement: the TTL shares its 16-bit word with the protocol.
	__u16 old_word = bpf_htons(((__u16)p.ttl << 8) | p.key.proto);
	__u16 new_word = bpf_htons(((__u16)(p.ttl - 1) << 8) | p.key.proto);
	ip->check = csum_replace2(ip_check, old_word, new_word);
	ip->ttl = p.ttl - 1;
	*addr = new_addr;
	*port = new_port;
	carried(act, outbound, p.len);
	count(C_CARRIED_AT_XDP, 1);

	if (FLAGS & F_NO_REDIRECT)
		return XDP_REDIRECT;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++) {
		eth->h_dest[i] = fib.dmac[i];
		eth->h_source[i] = fib.smac[i];
	}
	return bpf_redirect(fib.ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
