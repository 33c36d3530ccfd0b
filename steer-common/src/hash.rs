//! The fixed hash functions of steer. They are part of the wire contract between LB hosts: two
//! hosts with the same config must pick the same backend for the same flow, so these never
//! change within a map version, and never depend on the platform (bytes are read little-endian).
//!
//! The mixing steps are MurmurHash3's (x86_32), which is public domain and cheap in BPF: 32-bit
//! multiplies, shifts and xors, no tables.

use crate::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Seed of the flow hash.
pub const FLOW_SEED: u32 = 0x5f3e_e7a1;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// MurmurHash3's finaliser of one word: spreads `x`'s bits over the result (a slot index of a
/// small table, a start among source ports).
#[inline(always)]
pub fn mix32(x: u32) -> u32 {
    finish(x, 4)
}

/// Hash of a flow's 5-tuple; selects its Maglev slot.
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = FLOW_SEED;
    h = mix(h, word(&k.src, 0));
    h = mix(h, word(&k.src, 4));
    h = mix(h, word(&k.src, 8));
    h = mix(h, word(&k.src, 12));
    h = mix(h, word(&k.dst, 0));
    h = mix(h, word(&k.dst, 4));
    h = mix(h, word(&k.dst, 8));
    h = mix(h, word(&k.dst, 12));
    h = mix(h, (k.sport_be as u32) | ((k.dport_be as u32) << 16));
    h = mix(h, (k.proto as u32) | ((k.family as u32) << 8));
    finish(h, 40)
}

/// The words of an address, folded into one by xor (host byte order: the pre-filter and the
/// flow cache are private to one host, so their hashes need not match across platforms).
#[inline(always)]
pub fn fold_addr(a: &[u8; 16]) -> u32 {
    // SAFETY: same size, plain integers; callers' addresses sit at 4-byte aligned offsets.
    let w = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*a) };
    w[0] ^ w[1] ^ w[2] ^ w[3]
}

/// Fibonacci hashing's multiplier: one multiply spreads a folded key over the high bits.
const FIB32: u32 = 0x9e37_79b1;

/// Bit of the pre-filter (`STEER_FILTER_V1`) for a destination: an address, port (network
/// order) and protocol of a service, or an address alone (port 0, protocol 0) that NAT
/// replies come to. A few ALU instructions: the filter exists to be cheaper than the
/// services map's lookup it saves.
#[inline(always)]
pub fn filter_bit(addr: &[u8; 16], port_be: u16, proto: u8) -> u32 {
    let x = fold_addr(addr) ^ (((port_be as u32) << 16) | proto as u32);
    x.wrapping_mul(FIB32) >> (32 - crate::FILTER_BITS_LOG2)
}

/// Slot of a service's address, port and protocol in the service index (`STEER_SVCX_V1`):
/// the top `SERVICE_INDEX_LOG2` bits of the pre-filter's hash (a NAT service's two filter
/// bits share them).
#[inline(always)]
pub fn service_slot(addr: &[u8; 16], port_be: u16, proto: u8) -> u32 {
    filter_bit(addr, port_be, proto) >> (crate::FILTER_BITS_LOG2 - crate::SERVICE_INDEX_LOG2)
}

/// Second bit of the pre-filter for a NAT service's address, port and protocol: a packet whose
/// bit is set is looked for in the NAT flow cache before the DSR one. The neighbour of its
/// service's bit, so that one word read tells both.
#[inline(always)]
pub fn nat_filter_bit(addr: &[u8; 16], port_be: u16, proto: u8) -> u32 {
    filter_bit(addr, port_be, proto) ^ 1
}

/// Hash of a 5-tuple for the flow cache and the flow epochs: folds and one multiply, a
/// fraction of `flow_hash`'s cost (the cache's whole point is to be cheap; a collision only
/// costs a miss). Slot: the top `FLOW_CACHE_LOG2` bits; epoch bucket: the top
/// `FLOW_EPOCH_LOG2` bits.
#[inline(always)]
pub fn cache_hash(k: &FlowKey) -> u32 {
    let x = fold_addr(&k.src)
        ^ fold_addr(&k.dst).rotate_left(16)
        ^ ((k.sport_be as u32) | ((k.dport_be as u32) << 16))
        ^ k.proto as u32;
    x.wrapping_mul(FIB32)
}

/// The seal of an `Attempt`: a 64-bit mix of its fields, never 0 (an empty slot's). Two CPUs
/// writing one slot at once can leave one's key with the other's backend; the seal then does
/// not match, and the slot reads as empty.
#[inline(always)]
pub fn attempt_check(k: &FlowKey, backend: u32, gen: u16, last_seen_ns: u64) -> u64 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    // SAFETY: `FlowKey` is 40 bytes aligned to 8.
    let w = unsafe { &*(k as *const FlowKey as *const [u64; 5]) };
    let mut h = (backend as u64 | (gen as u64) << 32) ^ last_seen_ns.rotate_left(23);
    h = (h ^ w[0]).wrapping_mul(M);
    h = (h ^ (h >> 29) ^ w[1]).wrapping_mul(M);
    h = (h ^ (h >> 29) ^ w[2]).wrapping_mul(M);
    h = (h ^ (h >> 29) ^ w[3]).wrapping_mul(M);
    h = (h ^ (h >> 29) ^ w[4]).wrapping_mul(M);
    (h ^ (h >> 32)) | 1
}

/// MurmurHash3 (x86_32) of a byte string; used by userspace to place backends in Maglev tables.
pub fn bytes_hash(seed: u32, data: &[u8]) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut k = 0u32;
        for (i, b) in rest.iter().enumerate() {
            k |= (*b as u32) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    finish(h, data.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_vectors() {
        // Published MurmurHash3_x86_32 vectors.
        assert_eq!(bytes_hash(0, b""), 0);
        assert_eq!(bytes_hash(1, b""), 0x514e_28b7);
        assert_eq!(bytes_hash(0, b"hello"), 0x248b_fa47);
        assert_eq!(bytes_hash(0, b"Hello, world!"), 0xc036_3e43);
        assert_eq!(
            bytes_hash(0x9747_b28c, b"The quick brown fox jumps over the lazy dog"),
            0x2fa8_26cd
        );
    }

    #[test]
    fn filter_bits_differ_by_port_protocol_and_address() {
        let a = [10, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let b = filter_bit(&a, 80u16.to_be(), crate::PROTO_TCP);
        assert!(b < 1 << crate::FILTER_BITS_LOG2);
        assert_ne!(b, filter_bit(&a, 443u16.to_be(), crate::PROTO_TCP));
        assert_ne!(b, filter_bit(&a, 80u16.to_be(), crate::PROTO_UDP));
        assert_ne!(b, filter_bit(&a, 0, 0));
        let mut c = a;
        c[3] = 11;
        assert_ne!(b, filter_bit(&c, 80u16.to_be(), crate::PROTO_TCP));
    }

    #[test]
    fn an_attempt_holds_only_whole_and_its_own_and_in_time() {
        let k = FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
        };
        let now = 1_000_000_000_000;
        let a = crate::Attempt {
            key: k,
            backend: 3,
            gen: 7,
            _pad: 0,
            last_seen_ns: now,
            check: attempt_check(&k, 3, 7, now),
        };
        assert!(a.holds(&k, now));
        assert!(a.holds(&k, now + crate::ATTEMPT_TTL_NS - 1));
        assert!(!a.holds(&k, now + crate::ATTEMPT_TTL_NS), "expired");
        assert!(a.holds(&k, now - 5), "another CPU's clock a little behind");
        let mut o = k;
        o.sport_be = 40001u16.to_be();
        assert!(!a.holds(&o, now), "another 5-tuple");
        // A write torn by another CPU's: one's key and seal, the other's backend or time.
        assert!(!crate::Attempt { backend: 4, ..a }.holds(&k, now));
        assert!(!crate::Attempt { gen: 8, ..a }.holds(&k, now));
        assert!(!crate::Attempt {
            last_seen_ns: now + 1,
            ..a
        }
        .holds(&k, now + 1));
        assert!(!crate::Attempt { check: 0, ..a }.holds(&k, now), "cleared");
        assert_ne!(attempt_check(&k, 0, 0, 0), 0);
    }

    #[test]
    fn flow_hash_is_stable_and_uses_every_field() {
        let k = FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
        };
        let h = flow_hash(&k);
        assert_eq!(h, flow_hash(&k));
        let mut o = k;
        o.sport_be = 40001u16.to_be();
        assert_ne!(h, flow_hash(&o));
        let mut o = k;
        o.src[15] = 1;
        assert_ne!(h, flow_hash(&o));
        let mut o = k;
        o.proto = crate::PROTO_UDP;
        assert_ne!(h, flow_hash(&o));
    }
}
