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

    /// Sixteen address bytes `old` became `new`.
    #[inline(always)]
    pub fn addr16(self, old: &[u32; 4], new: &[u32; 4]) -> Delta {
        self.word32(old[0], new[0])
            .word32(old[1], new[1])
            .word32(old[2], new[2])
            .word32(old[3], new[3])
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
