//! 16-byte addresses (an IPv4 address in the first word, the rest 0) as words: BPF has no
//! memcmp or memcpy, and a byte loop is 16 loads where four do.

/// The address as four words (in memory order).
#[inline(always)]
pub fn words(a: &[u8; 16]) -> [u32; 4] {
    // SAFETY: same size, plain integers.
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(*a) }
}

/// Whether the words `w` (from `words`) are address `a`.
#[inline(always)]
pub fn is(w: &[u32; 4], a: &[u8; 16]) -> bool {
    let a = words(a);
    (w[0] ^ a[0]) | (w[1] ^ a[1]) | (w[2] ^ a[2]) | (w[3] ^ a[3]) == 0
}

/// Address equality in four word compares.
#[inline(always)]
pub fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    is(&words(a), b)
}
