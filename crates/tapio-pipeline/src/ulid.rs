//! ULID event ids: 48-bit millisecond time + 80 random bits, Crockford base32.
//!
//! Hand-written because the encoding is a few lines and the ulid crate would bring a random
//! number stack into a binary whose size is a product budget. Ids need uniqueness, not
//! cryptographic strength: a per-process xorshift generator seeded from the kernel suffices.

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Generates ULIDs; one per thread that stamps events.
pub struct UlidGen {
    state: u64,
    /// The millisecond `time_digits` encode (`u64::MAX`: none yet): under load many records
    /// share one, so its ten digits are worked out once.
    millis: u64,
    time_digits: [u8; 10],
}

impl UlidGen {
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom fills the buffer we own; a short read leaves zeros, then mixed
        // with the clock below so the generator never starts from a fixed state.
        unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let state = u64::from_ne_bytes(seed) ^ crate::clock::wall_now_ns() ^ 0x9e37_79b9_7f4a_7c15;
        Self { state: state | 1, millis: u64::MAX, time_digits: [b'0'; 10] }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A ULID for an event that happened at `unix_ns`.
    pub fn generate(&mut self, unix_ns: u64) -> Ulid {
        let millis = (unix_ns / 1_000_000) & ((1 << 48) - 1);
        if millis != self.millis {
            self.time_digits.copy_from_slice(&encode(u128::from(millis) << 80).as_bytes()[..10]);
            self.millis = millis;
        }
        // The 80 random bits, as two 40-bit halves of eight digits each.
        let (high, low) = (self.next_u64(), self.next_u64() >> 48);
        let mut out = [0u8; 26];
        out[..10].copy_from_slice(&self.time_digits);
        encode_40_bits(&mut out[10..18], high >> 24);
        encode_40_bits(&mut out[18..], (high & 0xff_ffff) << 16 | low);
        // The alphabet is ASCII: this never falls back.
        Ulid::from_ascii(&out).unwrap_or_default()
    }
}

impl Default for UlidGen {
    fn default() -> Self {
        Self::new()
    }
}

/// One id, held inline (every evidence record carries one); ordered as its text.
pub type Ulid = tapio_util::text::AsciiText<26>;

/// Eight digits of 40 bits, most significant first.
fn encode_40_bits(out: &mut [u8], bits: u64) {
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = ALPHABET[((bits >> (35 - 5 * i)) & 0x1f) as usize];
    }
}

fn encode(value: u128) -> String {
    // Every record's id: the 26 digits are taken from the low end of each 64-bit half (the
    // high half's 2 spare bits are the first digit's), then the text is copied once.
    let (high, low) = ((value >> 64) as u64, value as u64);
    let mut out = [0u8; 26];
    for (i, slot) in out.iter_mut().rev().enumerate() {
        // Digit i from the right holds bits 5i..5i+5: digit 12 straddles the halves.
        let bits = match i {
            0..=11 => low >> (5 * i),
            12 => (low >> 60) | (high << 4),
            _ => high >> (5 * i - 64),
        };
        *slot = ALPHABET[(bits & 0x1f) as usize];
    }
    // The alphabet is ASCII: this never falls back.
    std::str::from_utf8(&out).map(String::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_timestamp_prefix() {
        // 1469918176385 ms is "01ARYZ6S41" in the ULID spec's example.
        let id = UlidGen::new().generate(1_469_918_176_385 * 1_000_000);
        assert_eq!(&id.as_str()[..10], "01ARYZ6S41");
        assert_eq!(id.as_str().len(), 26);
        assert!(id.as_str().bytes().all(|b| ALPHABET.contains(&b)));
    }

    #[test]
    fn each_digit_is_five_bits_of_the_128_bit_value() {
        let mut g = UlidGen::new();
        for value in [0, u128::MAX, 1 << 60, 1 << 64, (1 << 64) - 1, 0x1f << 60]
            .into_iter()
            .chain((0..1000).map(|_| u128::from(g.next_u64()) << 64 | u128::from(g.next_u64())))
        {
            let slow: String = (0..26).map(|i| ALPHABET[((value >> (125 - 5 * i)) & 0x1f) as usize] as char).collect();
            assert_eq!(encode(value), slow, "{value:#x}");
        }
    }

    /// An id is the encoding of its millisecond and the generator's next 80 bits, whether
    /// its millisecond's digits were kept from the id before or worked out anew.
    #[test]
    fn ids_encode_their_millisecond_and_80_random_bits() {
        let mut g = UlidGen::new();
        let mut replay = UlidGen { state: g.state, millis: u64::MAX, time_digits: [0; 10] };
        for unix_ns in [0, 1_469_918_176_385_000_000, 1_469_918_176_385_999_999, 1_469_918_176_386_000_000, u64::MAX]
            .into_iter()
            .chain((0..500).map(|i| 1_795_242_384_941_531_851 + i * 77_777))
        {
            let millis = u128::from(unix_ns / 1_000_000) & ((1 << 48) - 1);
            let random = (u128::from(replay.next_u64()) << 16 | u128::from(replay.next_u64() >> 48)) & ((1 << 80) - 1);
            assert_eq!(g.generate(unix_ns).as_str(), encode(millis << 80 | random), "{unix_ns}");
        }
    }

    #[test]
    fn ids_are_unique_and_sort_by_time() {
        let mut g = UlidGen::new();
        let a = g.generate(1_000_000_000);
        let b = g.generate(1_000_000_000);
        let c = g.generate(2_000_000_000);
        assert_ne!(a, b);
        assert!(c > a && c > b);
    }
}
