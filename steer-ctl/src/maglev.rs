//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! A table of prime size `M` maps a flow hash to a backend. Each backend has a permutation of the
//! slots derived from its name: `offset = h1(name) mod M`, `skip = h2(name) mod (M - 1) + 1`,
//! the `j`-th preference being `(offset + j × skip) mod M`. Backends take turns claiming their
//! next free preferred slot until the table is full; a backend of weight `w` takes `w / max_w` of
//! a turn per round (credits carried over), so its share of slots follows its weight.
//!
//! The table depends only on the set of (name, weight, id) given, in name order, and the fixed
//! hash of `steer_common::hash`: every LB host with the same config builds the same table.

use steer_common::{hash::bytes_hash, BACKEND_NONE, MAGLEV_MAX_SIZE};

const OFFSET_SEED: u32 = 0x2b0f_6e95;
const SKIP_SEED: u32 = 0x7a31_c2d3;

/// A backend as Maglev sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Stable identity: placement depends on the name, never on the id.
    pub name: &'a str,
    /// Relative weight; 0 keeps the backend out of the table.
    pub weight: u32,
    /// Value written in the slots it owns.
    pub id: u32,
}

/// Errors building a table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime between 3 and {MAGLEV_MAX_SIZE}")]
    BadSize(u32),
    #[error("backend name {0:?} appears twice")]
    DuplicateName(String),
}

/// True when `n` is prime.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Builds a table of `size` slots. With no backend of non-zero weight, every slot is
/// `BACKEND_NONE`.
/// A fingerprint of a built table as its backends' names, slot by slot (FNV-1a, 64 bits): the
/// same on every LB host given the same config, whatever ids each host gave the backends — so
/// operators (and tests) can check that the hosts behind one ECMP route choose alike.
pub fn digest(table: &[u32], entries: &[Entry<'_>]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let names: std::collections::HashMap<u32, &str> =
        entries.iter().map(|e| (e.id, e.name)).collect();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in table {
        for b in names.get(id).map_or(&b""[..], |n| n.as_bytes()) {
            h = (h ^ *b as u64).wrapping_mul(PRIME);
        }
        h = (h ^ 0xff).wrapping_mul(PRIME);
    }
    h
}

pub fn build(size: u32, entries: &[Entry<'_>]) -> Result<Vec<u32>, MaglevError> {
    if !(3..=MAGLEV_MAX_SIZE).contains(&size) || !is_prime(size) {
        return Err(MaglevError::BadSize(size));
    }
    let mut live: Vec<&Entry<'_>> = entries.iter().filter(|e| e.weight > 0).collect();
    live.sort_by(|a, b| a.name.cmp(b.name));
    if let Some(w) = live.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(MaglevError::DuplicateName(w[0].name.to_string()));
    }
    let m = size as u64;
    let mut table = vec![BACKEND_NONE; size as usize];
    if live.is_empty() {
        return Ok(table);
    }
    let max_w = live.iter().map(|e| e.weight).max().unwrap_or(1) as u64;
    // Per backend: offset, skip, next preference index, credit (in units of 1/max_w turns).
    let mut state: Vec<(u64, u64, u64, u64)> = live
        .iter()
        .map(|e| {
            let offset = bytes_hash(OFFSET_SEED, e.name.as_bytes()) as u64 % m;
            let skip = bytes_hash(SKIP_SEED, e.name.as_bytes()) as u64 % (m - 1) + 1;
            (offset, skip, 0, 0)
        })
        .collect();
    let mut filled = 0u64;
    'fill: loop {
        for (i, e) in live.iter().enumerate() {
            let st = &mut state[i];
            st.3 += e.weight as u64;
            while st.3 >= max_w {
                st.3 -= max_w;
                // The next preferred slot that is still free.
                let slot = loop {
                    let c = (st.0 + st.2 * st.1) % m;
                    st.2 += 1;
                    if table[c as usize] == BACKEND_NONE {
                        break c;
                    }
                };
                table[slot as usize] = e.id;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn entries(names: &[String]) -> Vec<Entry<'_>> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                name: n,
                weight: 1,
                id: i as u32,
            })
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537));
        assert!(is_prime(251));
        assert!(!is_prime(65_535));
        assert!(!is_prime(1));
        assert!(!is_prime(9));
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(build(100, &[]), Err(MaglevError::BadSize(100)));
        assert_eq!(build(131_071, &[]), Err(MaglevError::BadSize(131_071)));
        let n = names(1);
        let mut e = entries(&n);
        e.push(e[0].clone());
        assert_eq!(
            build(251, &e),
            Err(MaglevError::DuplicateName("backend-0".into()))
        );
    }

    #[test]
    fn empty_pool_is_all_none() {
        assert!(build(251, &[]).unwrap().iter().all(|&b| b == BACKEND_NONE));
    }

    #[test]
    fn balanced_and_full() {
        let n = names(5);
        let t = build(65_537, &entries(&n)).unwrap();
        let mut count = [0u32; 5];
        for &b in &t {
            count[b as usize] += 1;
        }
        for c in count {
            // Maglev's imbalance is at most a few percent for M ≫ N.
            assert!(
                (12_800..=13_400).contains(&c),
                "share {c} of 65537: {count:?}"
            );
        }
    }

    #[test]
    fn deterministic_whatever_the_input_order() {
        let n = names(7);
        let e = entries(&n);
        let mut r = e.clone();
        r.reverse();
        assert_eq!(build(65_537, &e).unwrap(), build(65_537, &r).unwrap());
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [3usize, 5, 10] {
            let all = names(n);
            let before = build(65_537, &entries(&all)).unwrap();
            let mut fewer = entries(&all);
            let gone = fewer.remove(n / 2).id;
            let after = build(65_537, &fewer).unwrap();
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let owned = before.iter().filter(|&&b| b == gone).count();
            // Every slot of the removed backend must move; of the others, only a few do.
            let extra = moved - owned;
            let share = moved as f64 / before.len() as f64;
            assert!(
                share < 1.0 / n as f64 * 1.15,
                "n={n}: {moved} slots moved ({share:.3}), expected about 1/{n}"
            );
            assert!(
                extra as f64 / (before.len() as f64) < 0.02,
                "n={n}: {extra} bystanders moved"
            );
            assert!(after.iter().all(|&b| b != gone));
        }
    }

    #[test]
    fn weights_shape_shares() {
        let n = names(3);
        let mut e = entries(&n);
        e[0].weight = 1;
        e[1].weight = 2;
        e[2].weight = 0;
        let t = build(65_537, &e).unwrap();
        let a = t.iter().filter(|&&b| b == 0).count() as f64;
        let b = t.iter().filter(|&&b| b == 1).count() as f64;
        assert!(
            t.iter().all(|&x| x == 0 || x == 1),
            "weight 0 is out of the table"
        );
        assert!((b / a - 2.0).abs() < 0.05, "ratio {}", b / a);
    }

    #[test]
    fn the_digest_names_backends_not_ids() {
        let a = [
            Entry {
                name: "web-a",
                weight: 1,
                id: 0,
            },
            Entry {
                name: "web-b",
                weight: 1,
                id: 1,
            },
        ];
        // Another host gave the same backends other ids.
        let b = [
            Entry {
                name: "web-a",
                weight: 1,
                id: 7,
            },
            Entry {
                name: "web-b",
                weight: 1,
                id: 3,
            },
        ];
        let (ta, tb) = (build(251, &a).unwrap(), build(251, &b).unwrap());
        assert_ne!(ta, tb);
        assert_eq!(digest(&ta, &a), digest(&tb, &b));
        let c = [
            Entry {
                name: "web-a",
                weight: 2,
                id: 0,
            },
            Entry {
                name: "web-b",
                weight: 1,
                id: 1,
            },
        ];
        assert_ne!(digest(&build(251, &c).unwrap(), &c), digest(&ta, &a));
    }
}
