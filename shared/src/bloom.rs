//! A Bloom filter of user ids: a compact set that may say "maybe" of an id it does
//! not hold, never "no" of one it does. The inventory object sends one to the Worker
//! naming every buyer who may replay a purchase, so the Worker can answer everyone
//! else "sold out" by itself, however many buyers a drop has.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFilter {
    /// The bits, hex-encoded (64 bits a word, little end first).
    bits: String,
    hashes: u32,
    #[serde(skip)]
    words: Vec<u64>,
}

impl UserFilter {
    /// A filter holding `users`, sized for a false-positive rate near 1%.
    pub fn of(users: &[Uuid]) -> Self {
        // About 9.6 bits and 7 hashes per member give 1%.
        let words = (users.len() as u64 * 96 / 10).max(64).div_ceil(64);
        let mut filter = Self { bits: String::new(), hashes: 7, words: vec![0; words as usize] };
        for user in users {
            let positions: Vec<usize> = filter.positions(user).collect();
            for i in positions {
                filter.words[i / 64] |= 1 << (i % 64);
            }
        }
        filter.bits = filter.words.iter().map(|w| format!("{w:016x}")).collect();
        filter
    }

    /// Whether `user` may be in the set (false: certainly not).
    pub fn may_hold(&self, user: &Uuid) -> bool {
        self.positions(user).all(|i| self.words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0))
    }

    /// Reads the words back after decoding (serde skips them).
    pub fn ready(mut self) -> Option<Self> {
        if !self.bits.len().is_multiple_of(16) || self.bits.is_empty() {
            return None;
        }
        self.words = (0..self.bits.len() / 16)
            .map(|i| u64::from_str_radix(&self.bits[i * 16..i * 16 + 16], 16).ok())
            .collect::<Option<_>>()?;
        Some(self)
    }

    /// The bit positions of `user`: double hashing over one SHA-256 digest.
    fn positions(&self, user: &Uuid) -> impl Iterator<Item = usize> + '_ {
        let digest = Sha256::digest(user.as_bytes());
        let h1 = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
        let h2 = u64::from_le_bytes(digest[8..16].try_into().unwrap_or_default()) | 1;
        let m = (self.words.len() * 64).max(1) as u64;
        (0..u64::from(self.hashes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    /// Its size on the wire, in bytes (for the note and the tests).
    pub fn encoded_len(&self) -> usize {
        self.bits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_every_member_misses_most_others_and_survives_the_wire() {
        let members: Vec<Uuid> = (0..100_000u128).map(|i| Uuid::from_u128(i * 7919 + 1)).collect();
        let filter = UserFilter::of(&members);
        let back: UserFilter =
            serde_json::from_str::<UserFilter>(&serde_json::to_string(&filter).unwrap()).unwrap().ready().unwrap();
        assert!(members.iter().all(|m| back.may_hold(m)), "never a false no");
        let strangers = (0..20_000u128).map(|i| Uuid::from_u128(u128::MAX - i)).filter(|s| back.may_hold(s)).count();
        assert!(strangers < 20_000 * 3 / 100, "{strangers} false yeses of 20,000 (about 1% expected)");
        assert!(filter.encoded_len() < 250_000, "100,000 holders in {} bytes", filter.encoded_len());
        let empty = UserFilter::of(&[]).ready().unwrap();
        assert!(!empty.may_hold(&Uuid::from_u128(5)));
    }
}
