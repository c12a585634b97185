//! FNV-1a 64, the one stable hash both planes share: the `Percentage` lane operator
//! (`fnv1a64(value) % 100 < n`, DESIGN §4) and resource versions (the same content gives the same
//! version on every replica, build and platform, unlike `std`'s `DefaultHasher`).

/// FNV-1a, 64 bit (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), chosen because
/// every language has it, so other tools can predict which users land in a lane.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The version of a resource whose encoding is `bytes`: [`fnv1a64`] in 16 hex digits.
pub fn version_of(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a64(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        // Vectors from the FNV reference (isthe.com/chongo/tech/comp/fnv, FNV-1a 64).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(version_of(b"a"), "af63dc4c8601ec8c");
    }
}
