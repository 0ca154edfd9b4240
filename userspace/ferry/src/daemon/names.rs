//! Names for containers run without `--name`: an adjective and a noun, as
//! Docker users expect (`brisk_harbor`), with a number added on a clash.

use super::ApiError;

const ADJECTIVES: [&str; 48] = [
    "able", "agile", "amber", "bold", "brave", "breezy", "bright", "brisk", "calm", "clever",
    "cosy", "crisp", "daring", "eager", "early", "fair", "fast", "fond", "gentle", "glad",
    "golden", "grand", "happy", "hardy", "jolly", "keen", "kind", "lively", "lucky", "merry",
    "misty", "nimble", "noble", "plucky", "proud", "quick", "quiet", "rapid", "salty", "sharp",
    "silent", "steady", "sturdy", "sunny", "swift", "tidy", "vivid", "witty",
];

const NOUNS: [&str; 48] = [
    "anchor",
    "beacon",
    "berth",
    "bow",
    "breakwater",
    "buoy",
    "cabin",
    "canal",
    "cape",
    "cargo",
    "channel",
    "compass",
    "cove",
    "current",
    "deck",
    "delta",
    "dock",
    "estuary",
    "fjord",
    "galley",
    "gull",
    "harbor",
    "haven",
    "helm",
    "inlet",
    "island",
    "jetty",
    "keel",
    "lagoon",
    "lantern",
    "lighthouse",
    "mast",
    "mooring",
    "oar",
    "pier",
    "quay",
    "reef",
    "rudder",
    "sail",
    "shoal",
    "shore",
    "sound",
    "stern",
    "strait",
    "tide",
    "wake",
    "wharf",
    "wave",
];

fn random_u32() -> Result<u32, ApiError> {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(ApiError::Internal(format!(
            "getrandom: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(u32::from_le_bytes(bytes))
}

/// A name `taken` says is free.
pub(super) fn generate(taken: impl Fn(&str) -> bool) -> Result<String, ApiError> {
    for attempt in 0..64u32 {
        let r = random_u32()?;
        let a = ADJECTIVES[r as usize % ADJECTIVES.len()];
        let n = NOUNS[(r >> 16) as usize % NOUNS.len()];
        let name = if attempt < 8 {
            format!("{a}_{n}")
        } else {
            format!("{a}_{n}{}", r % 1000)
        };
        if !taken(&name) {
            return Ok(name);
        }
    }
    Err(ApiError::Internal("no free container name found".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_and_avoid_taken_ones() {
        let first = generate(|_| false).expect("a name");
        assert!(crate::validate::name(&first).is_ok(), "{first}");
        let (a, n) = first.split_once('_').expect("adjective_noun");
        assert!(ADJECTIVES.contains(&a) && NOUNS.contains(&n), "{first}");
        let other = generate(|n| n == first).expect("another name");
        assert_ne!(other, first);
    }
}
