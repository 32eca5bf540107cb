//! Random identifiers and tokens.

/// `bytes` random bytes from the OS, hex-encoded (so `2 * bytes` characters).
///
/// Tokens guard the HTTP API and, later, the credential proxy: if the OS cannot give us
/// randomness we must not continue with a guessable value, so this aborts.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Err(e) = getrandom::fill(&mut buf) {
        // No sane recovery: every token we would hand out could be predictable.
        panic!("the operating system could not provide random bytes: {e}");
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// An id for a message we create ourselves (web channel, assistant replies).
pub fn message_id() -> String {
    random_hex(12)
}

/// A short id that names one agent run in logs.
pub fn run_id() -> String {
    random_hex(6)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_has_the_right_length_and_differs() {
        let a = super::random_hex(16);
        let b = super::random_hex(16);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
