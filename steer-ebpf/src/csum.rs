//! Internet checksum (RFC 1071).

/// Folds a 32-bit sum of 16-bit words into the one's complement 16-bit checksum.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// An incremental checksum update (RFC 1624): the one's complement sum of what was replaced
/// (complemented) and of what replaced it. Words are added as they sit in the packet (native
/// loads of network-order bytes): the one's complement sum is byte-order independent, so the
/// result is stored back the same way.
#[derive(Clone, Copy, Default)]
pub struct Delta(u64);

impl Delta {
    /// A 32-bit word `old` became `new` (two 16-bit words at once: 2^16 ≡ 1 mod 0xffff).
    #[inline(always)]
    pub fn word32(self, old: u32, new: u32) -> Delta {
        Delta(self.0 + (!old) as u64 + new as u64)
    }

    /// A 16-bit word `old` became `new`.
    #[inline(always)]
    pub fn word16(self, old: u16, new: u16) -> Delta {
        Delta(self.0 + (!old) as u64 + new as u64)
    }

    /// The running sum (to carry a delta across a BPF call).
    #[inline(always)]
    pub fn sum(self) -> u64 {
        self.0
    }

    /// A delta from its running sum.
    #[inline(always)]
    pub fn from_sum(sum: u64) -> Delta {
        Delta(sum)
    }

    /// Both deltas together.
    #[inline(always)]
    pub fn plus(self, o: Delta) -> Delta {
        Delta(self.0 + o.0)
    }

    /// The checksum field `old` (as it sits in the packet) after the changes: HC' = ~(~HC +
    /// ~m + m').
    #[inline(always)]
    pub fn apply(self, old: u16) -> u16 {
        let mut s = (!old) as u64 + self.0;
        s = (s & 0xffff_ffff) + (s >> 32);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        !(s as u16)
    }
}

/// The checksum field `old` (as it sits in the packet) after changes whose sum is `sum`,
/// folded to 16 bits (`Delta`'s, folded once for all): `Delta::apply` with two folds instead
/// of four (the sum of two 16-bit values has at most one carry).
#[inline(always)]
pub fn apply_folded(old: u16, sum: u16) -> u16 {
    let mut s = (!old) as u32 + sum as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Replaces the first `n` words (1 for IPv4, 4 for IPv6) of the address at `at` (in the
/// packet) with `new`'s, one word at a time — few registers live (BPF keeps four across a
/// call; more spill to the stack) — adding each change to `d`. Plain word loads and stores,
/// as in `parse`: the JITs handle unaligned words, where `read_unaligned` would be split
/// into bytes.
///
/// # Safety
/// `at` must point at `4 * n` writable bytes.
#[inline(always)]
pub unsafe fn swap_addr(at: *mut u8, new: &[u8; 16], n: usize, mut d: Delta) -> Delta {
    let from = new.as_ptr() as *const u32;
    for i in 0..4 {
        if i < n {
            // SAFETY: `i < 4` words of the 16-byte address; the caller vouches for `at`.
            unsafe {
                let w = at.add(4 * i) as *mut u32;
                let v = *from.add(i);
                d = d.word32(*w, v);
                *w = v;
            }
        }
    }
    d
}
