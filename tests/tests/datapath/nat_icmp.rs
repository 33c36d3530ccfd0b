//! ICMP errors about NAT flows (SPEC.md, `nat`; issue 10: path MTU discovery works through
//! the LB). An error quoting a packet the LB sent to a backend goes to the client quoting the
//! client's own packet (from the VIP when the backend itself sent it, a router's address
//! staying); an error quoting a reply the LB sent to a client goes to the backend quoting the
//! backend's own reply, from the flow's LB address. Anything else passes untouched.
//!
//! Every expected frame is built from scratch with etherparse (outer IP header, ICMP header and
//! the quoted IP header with their checksums as etherparse computes them), and the output's
//! checksums — outer IPv4 header, ICMP (ICMPv6 with its pseudo-header), quoted IPv4 header —
//! are verified with etherparse, never with the code under test. One documented exception:
//! the quoted TCP or UDP checksum, which the datapath leaves as it was (no stack checks it);
//! where the quote holds it, the expected frame carries the input quote's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    icmpv4::{DestUnreachableHeader, RedirectCode, RedirectHeader, TimeExceededCode},
    icmpv6, IcmpEchoHeader, Icmpv4Type, Icmpv6Slice, Icmpv6Type, Ipv4HeaderSlice, NetHeaders,
    PacketBuilder, PacketHeaders, TransportHeader,
};
use steer_common::{event, outcome};
use steer_tests::fixture::{
    Delta, Expect, Ext, Frame, Row, CLIENT_MAC, IPV6_DEST_OPTS, LB_MAC, XDP_TX,
};

use crate::nat_common::*;

#[test]
fn icmp() {
    // One datapath for the module's cases (each load verifies four programs); each case
    // uses clients, ports or services of its own.
    run_cases(
        "nat_icmp",
        &[
            (
                "v4_tcp_frag_needed_from_a_router_goes_to_the_client",
                v4_tcp_frag_needed_from_a_router_goes_to_the_client,
            ),
            (
                "v4_udp_port_unreachable_from_the_backend_comes_from_the_vip",
                v4_udp_port_unreachable_from_the_backend_comes_from_the_vip,
            ),
            (
                "v4_frag_needed_about_a_reply_goes_to_the_backend",
                v4_frag_needed_about_a_reply_goes_to_the_backend,
            ),
            ("v6_packet_too_big_both_ways", v6_packet_too_big_both_ways),
            (
                "what_is_not_translated_passes",
                what_is_not_translated_passes,
            ),
        ],
    );
}

/// The backends' side router (on `be0`) and the clients' side router (on `cli0`).
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 100);
const CLIENT_ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x64);
const CLIENT_ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
const FAR_BE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);
const FAR_BE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 5);
const FAR6_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x40);

/// What an error quotes: IP header + 8 bytes of TCP or UDP, as RFC 792 asks.
const Q4: usize = 20 + 8;
const Q6: usize = 40 + 8;

/// The quoted packet's upper layer.
#[derive(Clone, Copy)]
enum L4<'a> {
    Syn,
    Data(&'a [u8]),
    Udp(&'a [u8]),
}

/// An IP packet as an error quotes it (TCP seq 1000, hop limit 63), cut to `keep` bytes.
fn inner(
    l4: L4,
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    keep: Option<usize>,
) -> Vec<u8> {
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 63),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 63),
        _ => panic!("mixed families"),
    };
    let mut v = Vec::new();
    match l4 {
        L4::Syn => ip.tcp(sport, dport, 1000, 64240).syn().write(&mut v, &[]),
        L4::Data(d) => ip
            .tcp(sport, dport, 1000, 64240)
            .ack(1)
            .psh()
            .write(&mut v, d),
        L4::Udp(d) => ip.udp(sport, dport).write(&mut v, d),
    }
    .expect("build the quoted packet");
    if let Some(k) = keep {
        v.truncate(k);
    }
    v
}

/// `want` (an expected quote) with the TCP or UDP checksum of `quoted` (the input's quote),
/// where the quote holds it: the one field the datapath deliberately leaves as it was.
fn l4_checksum_of(mut want: Vec<u8>, quoted: &[u8]) -> Vec<u8> {
    let (l4, proto) = if want[0] >> 4 == 4 {
        ((want[0] & 0x0f) as usize * 4, want[9])
    } else {
        (40, want[6])
    };
    let at = l4 + if proto == TCP { 16 } else { 6 };
    if want.len() >= at + 2 {
        want[at..at + 2].copy_from_slice(&quoted[at..at + 2]);
    }
    want
}

/// The ICMP errors of these fixtures.
#[derive(Clone, Copy)]
enum Kind {
    /// ICMPv4 type 3 code 4, with the next hop's MTU.
    FragNeeded(u16),
    /// ICMPv4 type 3 code 3.
    PortUnreachable,
    /// ICMPv4 type 3 code 1.
    HostUnreachable,
    /// ICMPv4 type 11 code 0.
    TtlExceeded,
    /// ICMPv4 type 5 (quotes a packet, but is no error about it).
    Redirect,
    /// ICMPv4 type 8.
    EchoRequest,
    /// ICMPv6 type 2, with the MTU.
    TooBig(u32),
    /// ICMPv6 type 1 code 4.
    PortUnreachable6,
    /// ICMPv6 type 3 code 0.
    HopLimitExceeded,
    /// ICMPv6 type 128.
    EchoRequest6,
}

/// An ICMP message from `src` to `dst` (hop limit 64) quoting `quote`, its checksums computed
/// by etherparse.
fn icmp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    kind: Kind,
    quote: &[u8],
) -> Frame {
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let t =
                match kind {
                    Kind::FragNeeded(mtu) => Icmpv4Type::DestinationUnreachable(
                        DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
                    ),
                    Kind::PortUnreachable => {
                        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port)
                    }
                    Kind::HostUnreachable => {
                        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host)
                    }
                    Kind::TtlExceeded => {
                        Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit)
                    }
                    Kind::Redirect => Icmpv4Type::Redirect(RedirectHeader {
                        code: RedirectCode::RedirectForHost,
                        gateway_internet_address: [10, 1, 0, 99],
                    }),
                    Kind::EchoRequest => Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }),
                    _ => panic!("not an ICMPv4 kind"),
                };
            eth.ipv4(s.octets(), d.octets(), 64)
                .icmpv4(t)
                .write(&mut bytes, quote)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let t = match kind {
                Kind::TooBig(mtu) => Icmpv6Type::PacketTooBig { mtu },
                Kind::PortUnreachable6 => {
                    Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port)
                }
                Kind::HopLimitExceeded => {
                    Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded)
                }
                Kind::EchoRequest6 => Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }),
                _ => panic!("not an ICMPv6 kind"),
            };
            eth.ipv6(s.octets(), d.octets(), 64)
                .icmpv6(t)
                .write(&mut bytes, quote)
        }
        _ => panic!("mixed families"),
    }
    .expect("build the ICMP frame");
    Frame { bytes }
}

/// What is wrong with the checksums of an ICMP frame, as etherparse computes them: outer IPv4
/// header, ICMP (ICMPv6 with its pseudo-header), and the quoted IPv4 header.
fn icmp_checksum_errors(frame: &[u8]) -> Vec<String> {
    let h = match PacketHeaders::from_ethernet_slice(frame) {
        Ok(h) => h,
        Err(e) => return vec![format!("etherparse cannot parse the output: {e}")],
    };
    let payload = h.payload.slice();
    let mut errs = Vec::new();
    let wrong = |what: &str, got: u16, want: u16| {
        format!("{what} checksum {got:#06x}, etherparse computes {want:#06x}")
    };
    match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Icmpv4(icmp))) => {
            let want = ip.calc_header_checksum();
            if ip.header_checksum != want {
                errs.push(wrong("outer IPv4 header", ip.header_checksum, want));
            }
            let want = icmp.icmp_type.calc_checksum(payload);
            if icmp.checksum != want {
                errs.push(wrong("ICMP", icmp.checksum, want));
            }
            match Ipv4HeaderSlice::from_slice(payload) {
                Ok(q) => {
                    let q = q.to_header();
                    let want = q.calc_header_checksum();
                    if q.header_checksum != want {
                        errs.push(wrong("quoted IPv4 header", q.header_checksum, want));
                    }
                }
                Err(e) => errs.push(format!("quoted IPv4 header: {e}")),
            }
        }
        (Some(NetHeaders::Ipv6(ip, _)), Some(TransportHeader::Icmpv6(_))) => {
            let l4 = &frame[14 + 40..];
            match Icmpv6Slice::from_slice(l4) {
                Ok(s) if s.is_checksum_valid(ip.source, ip.destination) => {}
                Ok(s) => errs.push(format!(
                    "ICMPv6 checksum {:#06x} is not valid (with the pseudo-header)",
                    s.checksum()
                )),
                Err(e) => errs.push(format!("ICMPv6: {e}")),
            }
        }
        _ => errs.push("output is not ICMP over IP".into()),
    }
    errs
}

fn diff(want: &[u8], got: &[u8]) -> String {
    if want.len() != got.len() {
        return format!("length {} (expected {})", got.len(), want.len());
    }
    let first = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
    format!(
        "first difference at byte {first}: {:02x?} (expected {:02x?})",
        &got[first..(first + 8).min(got.len())],
        &want[first..(first + 8).min(want.len())]
    )
}

/// The output must be exactly `want`, and etherparse must find its checksums valid.
fn exactly(want: Frame) -> Expect {
    Expect::With(Box::new(move |_: &[u8], out: &[u8]| {
        let mut errs: Vec<String> = icmp_checksum_errors(out)
            .into_iter()
            .map(|e| format!("output: {e}"))
            .collect();
        if out != want.bytes.as_slice() {
            errs.push(format!("frame: {}", diff(&want.bytes, out)));
        }
        errs
    }))
}

impl Nat {
    /// A row: the error `input` (in by `be0`) leaves for the client as `(src, client, kind,
    /// quote)`, with the FIB's MACs.
    fn icmp_to_client(
        &self,
        desc: &str,
        input: Frame,
        (src, client, kind, quote): (IpAddr, IpAddr, Kind, &[u8]),
    ) -> Row {
        let (dmac, smac, action) = self.lab.next_hop(client, self.lab.be);
        let why = if action == XDP_TX {
            outcome::TX_REPLY
        } else {
            outcome::REDIRECT_REPLY
        };
        Row {
            desc: desc.into(),
            input,
            action,
            output: exactly(icmp_frame(smac, dmac, src, client, kind, quote)),
            deltas: vec![
                Delta::Outcome(why, 1),
                Delta::Outcome(event::ICMP_TRANSLATED, 1),
            ],
        }
    }

    /// A row: the error `input` (in by `cli0`) leaves for the backend as `(src, backend, kind,
    /// quote)`, with the FIB's MACs.
    fn icmp_to_backend(
        &self,
        desc: &str,
        input: Frame,
        (src, backend, kind, quote): (IpAddr, IpAddr, Kind, &[u8]),
    ) -> Row {
        let (dmac, smac, action) = self.lab.next_hop(backend, self.lab.cli);
        let why = if action == XDP_TX {
            outcome::TX_FORWARD
        } else {
            outcome::REDIRECT_FORWARD
        };
        Row {
            desc: desc.into(),
            input,
            action,
            output: exactly(icmp_frame(smac, dmac, src, backend, kind, quote)),
            deltas: vec![
                Delta::Outcome(why, 1),
                Delta::Outcome(event::ICMP_TRANSLATED, 1),
            ],
        }
    }
}

fn v4_tcp_frag_needed_from_a_router_goes_to_the_client(n: &mut Nat) {
    let (far, c): (IpAddr, IpAddr) = (vip(40), CLIENT.into());
    let p = 47_000;
    let lb_port = n.establish("far", "far-a", c, p);
    let lb: IpAddr = SNAT.into();
    let be: IpAddr = FAR_BE.into();
    let router: IpAddr = ROUTER.into();

    // The translated SYN as the LB sent it, quoted by the router in front of the backend.
    let quote = inner(L4::Syn, (lb, lb_port), (be, BE_PORT), Some(Q4));
    let want = inner(L4::Syn, (c, p), (far, 80), Some(Q4));
    let row = n.icmp_to_client(
        "a router's frag-needed about the translated SYN goes to the client, from the router, quoting the client's SYN (MTU kept)",
        icmp_frame(GW_MAC, BE_SIDE_MAC, router, lb, Kind::FragNeeded(1400), &quote),
        (router, c, Kind::FragNeeded(1400), &want),
    );
    n.backend(row);

    // A router quoting the whole segment (as Linux does, up to 576 bytes): the same, the
    // quoted TCP checksum as it was.
    let data = b"GET /big HTTP/1.1\r\nHost: far\r\n\r\n";
    let quote = inner(L4::Data(data), (lb, lb_port), (be, BE_PORT), None);
    let want = l4_checksum_of(inner(L4::Data(data), (c, p), (far, 80), None), &quote);
    let row = n.icmp_to_client(
        "a frag-needed quoting the whole translated data segment is translated too",
        icmp_frame(
            GW_MAC,
            BE_SIDE_MAC,
            router,
            lb,
            Kind::FragNeeded(1300),
            &quote,
        ),
        (router, c, Kind::FragNeeded(1300), &want),
    );
    n.backend(row);

    let quote = inner(L4::Syn, (lb, lb_port), (be, BE_PORT), Some(Q4));
    let want = inner(L4::Syn, (c, p), (far, 80), Some(Q4));
    let row = n.icmp_to_client(
        "a router's time exceeded about the translated SYN goes to the client",
        icmp_frame(GW_MAC, BE_SIDE_MAC, router, lb, Kind::TtlExceeded, &quote),
        (router, c, Kind::TtlExceeded, &want),
    );
    n.backend(row);
}

fn v4_udp_port_unreachable_from_the_backend_comes_from_the_vip(n: &mut Nat) {
    let (v, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let cport = 47_100;
    let be = n.choice("dns", c, cport);
    let row = n.to_backend(
        "set-up: a datagram",
        "dns",
        &be,
        steer_tests::fixture::udp4(CLIENT, cport, VIP, 53, b"query"),
        true,
        None,
    );
    n.client(row);
    let (_, lb_port) = n.nat_of(&key(c, cport, v, 53, UDP));
    let (addr, bport) = n.be_addr(&be);
    let bmac = n.lab.next_hop(addr, n.lab.cli).0;
    let lb: IpAddr = SNAT.into();

    // 8 bytes of UDP hold its checksum: the quoted one stays as it was.
    let quote = inner(L4::Udp(b"query"), (lb, lb_port), (addr, bport), Some(Q4));
    let want = l4_checksum_of(
        inner(L4::Udp(b"query"), (c, cport), (v, 53), Some(Q4)),
        &quote,
    );
    let row = n.icmp_to_client(
        "the backend's own port unreachable goes to the client from the VIP, quoting the client's datagram",
        icmp_frame(bmac, BE_SIDE_MAC, addr, lb, Kind::PortUnreachable, &quote),
        (v, c, Kind::PortUnreachable, &want),
    );
    n.backend(row);

    // Linux quotes the whole datagram.
    let quote = inner(L4::Udp(b"query"), (lb, lb_port), (addr, bport), None);
    let want = l4_checksum_of(inner(L4::Udp(b"query"), (c, cport), (v, 53), None), &quote);
    let row = n.icmp_to_client(
        "…quoting the whole datagram too",
        icmp_frame(bmac, BE_SIDE_MAC, addr, lb, Kind::PortUnreachable, &quote),
        (v, c, Kind::PortUnreachable, &want),
    );
    n.backend(row);

    // The other way: the client's side router cannot reach the client with the answer.
    let cr: IpAddr = CLIENT_ROUTER.into();
    let quote = inner(L4::Udp(b"answer"), (v, 53), (c, cport), Some(Q4));
    let want = l4_checksum_of(
        inner(L4::Udp(b"answer"), (addr, bport), (lb, lb_port), Some(Q4)),
        &quote,
    );
    let row = n.icmp_to_backend(
        "a host unreachable about the answer to the client goes to the backend, from the LB, quoting its answer",
        icmp_frame(CGW_MAC, LB_MAC, cr, v, Kind::HostUnreachable, &quote),
        (lb, addr, Kind::HostUnreachable, &want),
    );
    n.client(row);
}

fn v4_frag_needed_about_a_reply_goes_to_the_backend(n: &mut Nat) {
    let (v, fc): (IpAddr, IpAddr) = (VIP.into(), FAR_CLIENT.into());
    let p = n.port_to("web", fc, "web-a", 47_200);
    let lb_port = n.establish("web", "web-a", fc, p);
    let lb: IpAddr = SNAT.into();
    let (be, bport) = n.be_addr("web-a");
    let cr: IpAddr = CLIENT_ROUTER.into();
    let body = b"HTTP/1.1 200 OK\r\n\r\nhello";

    let quote = inner(L4::Data(body), (v, 80), (fc, p), Some(Q4));
    let want = inner(L4::Data(body), (be, bport), (lb, lb_port), Some(Q4));
    let row = n.icmp_to_backend(
        "a client-side router's frag-needed about a reply goes to the backend, from the flow's LB address, quoting the backend's reply (MTU kept)",
        icmp_frame(CGW_MAC, LB_MAC, cr, v, Kind::FragNeeded(1280), &quote),
        (lb, be, Kind::FragNeeded(1280), &want),
    );
    n.client(row);

    let quote = inner(L4::Data(body), (v, 80), (fc, p), None);
    let want = l4_checksum_of(
        inner(L4::Data(body), (be, bport), (lb, lb_port), None),
        &quote,
    );
    let row = n.icmp_to_backend(
        "…quoting the whole reply too",
        icmp_frame(CGW_MAC, LB_MAC, cr, v, Kind::FragNeeded(1280), &quote),
        (lb, be, Kind::FragNeeded(1280), &want),
    );
    n.client(row);

    // A pool service: the LB address is the flow's pool address, not the facing one.
    let pooled = vip(50);
    let cport = 47_210;
    let row = n.to_backend(
        "set-up: a SYN to a pool service",
        "pooled",
        "pooled-a",
        from_client(CLIENT.into(), cport, pooled, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let k = key(CLIENT.into(), cport, pooled, 80, TCP);
    let src = n.flow_source("pooled", &k);
    let (_, port) = n.nat_of(&k);
    let (pbe, pport) = n.be_addr("pooled-a");
    let quote = inner(
        L4::Data(body),
        (pooled, 80),
        (CLIENT.into(), cport),
        Some(Q4),
    );
    let want = inner(L4::Data(body), (pbe, pport), (src, port), Some(Q4));
    let row = n.icmp_to_backend(
        "a frag-needed about a pool flow's reply goes to the backend from the flow's pool address",
        icmp_frame(CGW_MAC, LB_MAC, cr, pooled, Kind::FragNeeded(1280), &quote),
        (src, pbe, Kind::FragNeeded(1280), &want),
    );
    n.client(row);
}

fn v6_packet_too_big_both_ways(n: &mut Nat) {
    let (far, c): (IpAddr, IpAddr) = (FAR6_VIP.into(), CLIENT6.into());
    let p = 47_300;
    let lb_port = n.establish("far6", "far6-a", c, p);
    let lb: IpAddr = SNAT6.into();
    let be: IpAddr = FAR_BE6.into();
    let router: IpAddr = ROUTER6.into();

    let quote = inner(L4::Syn, (lb, lb_port), (be, BE_PORT), Some(Q6));
    let want = inner(L4::Syn, (c, p), (far, 80), Some(Q6));
    let row = n.icmp_to_client(
        "a router's packet too big about the translated SYN goes to the client, from the router, quoting the client's SYN (MTU kept)",
        icmp_frame(GW_MAC, BE_SIDE_MAC, router, lb, Kind::TooBig(1400), &quote),
        (router, c, Kind::TooBig(1400), &want),
    );
    n.backend(row);

    let data = b"GET /big HTTP/1.1\r\n\r\n";
    let quote = inner(L4::Data(data), (lb, lb_port), (be, BE_PORT), None);
    let want = l4_checksum_of(inner(L4::Data(data), (c, p), (far, 80), None), &quote);
    let row = n.icmp_to_client(
        "…quoting the whole translated segment (as RFC 4443 asks) too",
        icmp_frame(GW_MAC, BE_SIDE_MAC, router, lb, Kind::TooBig(1400), &quote),
        (router, c, Kind::TooBig(1400), &want),
    );
    n.backend(row);

    let quote = inner(L4::Syn, (lb, lb_port), (be, BE_PORT), Some(Q6));
    let want = inner(L4::Syn, (c, p), (far, 80), Some(Q6));
    let row = n.icmp_to_client(
        "a router's hop limit exceeded about it goes to the client",
        icmp_frame(
            GW_MAC,
            BE_SIDE_MAC,
            router,
            lb,
            Kind::HopLimitExceeded,
            &quote,
        ),
        (router, c, Kind::HopLimitExceeded, &want),
    );
    n.backend(row);

    // The other way.
    let cr: IpAddr = CLIENT_ROUTER6.into();
    let body = b"HTTP/1.1 200 OK\r\n\r\n";
    let quote = inner(L4::Data(body), (far, 80), (c, p), Some(Q6));
    let want = inner(L4::Data(body), (be, BE_PORT), (lb, lb_port), Some(Q6));
    let row = n.icmp_to_backend(
        "a client-side router's packet too big about a reply goes to the backend, from the flow's LB address, quoting the backend's reply",
        icmp_frame(CGW_MAC, LB_MAC, cr, far, Kind::TooBig(1280), &quote),
        (lb, be, Kind::TooBig(1280), &want),
    );
    n.client(row);

    // UDP, from the backend itself.
    let v6: IpAddr = VIP6.into();
    let cport = 47_310;
    let row = n.to_backend(
        "set-up: an IPv6 datagram",
        "dns6",
        "dns6-a",
        steer_tests::fixture::udp6(CLIENT6, cport, VIP6, 53, b"query"),
        true,
        None,
    );
    n.client(row);
    let (_, port) = n.nat_of(&key(c, cport, v6, 53, UDP));
    let (dbe, dport) = n.be_addr("dns6-a");
    let quote = inner(L4::Udp(b"query"), (lb, port), (dbe, dport), None);
    let want = l4_checksum_of(inner(L4::Udp(b"query"), (c, cport), (v6, 53), None), &quote);
    let row = n.icmp_to_client(
        "the backend's own ICMPv6 port unreachable goes to the client from the VIP",
        icmp_frame(
            mac6(4),
            BE_SIDE_MAC,
            dbe,
            lb,
            Kind::PortUnreachable6,
            &quote,
        ),
        (v6, c, Kind::PortUnreachable6, &want),
    );
    n.backend(row);
}

fn what_is_not_translated_passes(n: &mut Nat) {
    let (v, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-b", 47_400);
    let lb_port = n.establish("web", "web-b", c, p);
    let lb: IpAddr = SNAT.into();
    let (be, bport) = n.be_addr("web-b");
    let router: IpAddr = ROUTER.into();
    let cr: IpAddr = CLIENT_ROUTER.into();

    let free = (20_000..=29_999)
        .rev()
        .find(|port| n.reverse(&n.rev_key("web-b", lb, *port, TCP)).is_none())
        .expect("a port no flow holds");
    n.backend(passed(
        "a frag-needed quoting a packet of no NAT flow (an LB port no flow holds) passes",
        icmp_frame(
            GW_MAC,
            BE_SIDE_MAC,
            router,
            lb,
            Kind::FragNeeded(1400),
            &inner(L4::Syn, (lb, free), (be, bport), Some(Q4)),
        ),
    ));
    n.client(passed(
        "a frag-needed to the VIP quoting a reply to a client with no flow passes",
        icmp_frame(
            CGW_MAC,
            LB_MAC,
            cr,
            v,
            Kind::FragNeeded(1400),
            &inner(L4::Syn, (v, 80), (c, p + 1), Some(Q4)),
        ),
    ));
    n.client(passed(
        "an echo request to the VIP passes",
        icmp_frame(CLIENT_MAC, LB_MAC, c, v, Kind::EchoRequest, b"ping"),
    ));
    n.client(passed(
        "an ICMPv6 echo request to the VIP passes",
        icmp_frame(
            CLIENT_MAC,
            LB_MAC,
            CLIENT6.into(),
            VIP6.into(),
            Kind::EchoRequest6,
            b"ping",
        ),
    ));

    // The flow exists; the quotes are not what the translation reads.
    let quote = inner(L4::Syn, (lb, lb_port), (be, bport), Some(Q4));
    n.backend(passed(
        "a frag-needed whose quote is cut short of the IP header + 8 bytes passes",
        icmp_frame(
            GW_MAC,
            BE_SIDE_MAC,
            router,
            lb,
            Kind::FragNeeded(1400),
            &quote[..Q4 - 4],
        ),
    ));
    let with_options = {
        // The quoted header with 4 bytes of options (IHL 6), its length and checksum fixed.
        let eth = Frame {
            bytes: [
                &[0u8; 12][..],
                &[0x08, 0x00],
                &inner(L4::Syn, (lb, lb_port), (be, bport), None),
            ]
            .concat(),
        }
        .ipv4_options(&[1, 1, 1, 0]);
        eth.bytes[14..14 + 24 + 8].to_vec()
    };
    n.backend(passed(
        "a frag-needed quoting an IPv4 header with options passes",
        icmp_frame(
            GW_MAC,
            BE_SIDE_MAC,
            router,
            lb,
            Kind::FragNeeded(1400),
            &with_options,
        ),
    ));
    n.backend(passed(
        "a redirect quoting the flow's packet passes (no error about it)",
        icmp_frame(GW_MAC, BE_SIDE_MAC, router, lb, Kind::Redirect, &quote),
    ));

    // IPv6: a quote with an extension header before TCP.
    let c6: IpAddr = CLIENT6.into();
    let p6 = n.port_to("web6", c6, "web6-a", 47_500);
    let port6 = n.establish("web6", "web6-a", c6, p6);
    let (be6, bport6) = n.be_addr("web6-a");
    let lb6: IpAddr = SNAT6.into();
    let with_ext = {
        let eth = Frame {
            bytes: [
                &[0u8; 12][..],
                &[0x86, 0xdd],
                &inner(L4::Syn, (lb6, port6), (be6, bport6), None),
            ]
            .concat(),
        }
        .ipv6_ext(&[Ext::of(IPV6_DEST_OPTS)]);
        eth.bytes[14..14 + Q6 + 8].to_vec()
    };
    n.backend(passed(
        "a packet too big quoting an IPv6 header with an extension header passes",
        icmp_frame(
            GW_MAC,
            BE_SIDE_MAC,
            ROUTER6.into(),
            lb6,
            Kind::TooBig(1400),
            &with_ext,
        ),
    ));
}
