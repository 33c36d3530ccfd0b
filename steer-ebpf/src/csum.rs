//! Internet checksum (RFC 1071).

/// Folds a 32-bit sum of 16-bit words into the one's complement 16-bit checksum.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
