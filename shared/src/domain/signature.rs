//! Meta's webhook signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret,
//! raw body)>`, checked over the exact bytes received, in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// The signature bytes of a `sha256=<hex>` header; `None` if it is not one (64 hex digits,
/// either case, ASCII spaces or tabs around them: anything else could not match, so it is
/// refused before any HMAC is computed). Read from the header's bytes, as sent: a header
/// that is not visible ASCII has no hex digits to give.
pub fn parse_signature_header<H: AsRef<[u8]> + ?Sized>(header: Option<&H>) -> Option<[u8; 32]> {
    let hex = header?.as_ref().strip_prefix(b"sha256=")?.trim_ascii();
    if hex.len() != 64 {
        return None;
    }
    let mut sig = [0u8; 32];
    for (byte, pair) in sig.iter_mut().zip(hex.chunks_exact(2)) {
        let [hi, lo] = pair else {
            return None;
        };
        let (hi, lo) = (HEX_DIGIT[usize::from(*hi)], HEX_DIGIT[usize::from(*lo)]);
        if hi > 0xf || lo > 0xf {
            return None;
        }
        *byte = hi << 4 | lo;
    }
    Some(sig)
}

/// Each byte's value as a hex digit, or 0xff: one lookup a digit instead of the `hex`
/// crate's comparisons (with the header's UTF-8 check, 1% of a webhook's instructions).
const HEX_DIGIT: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Whether `signature` is the HMAC-SHA256 of `raw` under `secret` (constant time).
pub fn signed_by(secret: &[u8], raw: &[u8], signature: &[u8]) -> bool {
    Hmac::<Sha256>::new_from_slice(secret).is_ok_and(|mac| verifies(mac, raw, signature))
}

/// [`signed_by`] with the secret's key made ready once ([`Secret::hmac_sha256`]): the
/// same answer without hashing the key's two pads again for every body.
pub fn signed_by_secret(secret: &Secret, raw: &[u8], signature: &[u8]) -> bool {
    secret
        .hmac_sha256()
        .is_some_and(|mac| verifies(mac, raw, signature))
}

fn verifies(mut mac: Hmac<Sha256>, raw: &[u8], signature: &[u8]) -> bool {
    mac.update(raw);
    mac.verify_slice(signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, raw: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(raw);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn only_the_hmac_of_the_exact_body_under_the_secret_verifies() {
        let body = br#"{"entry":[]}"#;
        let header = sign("app-secret", body);
        let sig = parse_signature_header(Some(&header)).unwrap();
        assert!(signed_by(b"app-secret", body, &sig));
        assert!(!signed_by(b"other-secret", body, &sig));
        assert!(!signed_by(b"app-secret", br#"{"entry": []}"#, &sig));
        assert_eq!(parse_signature_header(Some("sha1=00")), None);
        assert_eq!(parse_signature_header(Some("sha256=zz")), None);
        // Only a SHA-256's length: a shorter or longer hex string is no signature.
        assert_eq!(parse_signature_header(Some("sha256=00")), None);
        let long = format!("{}00", header);
        assert_eq!(parse_signature_header(Some(&long)), None);
        // Whitespace around the digits is tolerated, as before.
        assert_eq!(
            parse_signature_header(Some(&format!("{header} "))),
            Some(sig)
        );
        assert_eq!(parse_signature_header::<str>(None), None);
    }

    #[test]
    fn a_secrets_ready_key_answers_as_the_key_derived_each_time() {
        let body = br#"{"entry":[{"changes":[]}]}"#;
        let short = Secret::new("app-secret");
        // Longer than SHA-256's block: HMAC hashes such a key first.
        let long = Secret::new("k".repeat(100));
        let other = Secret::new("other-secret");
        for secret in [&short, &long, &other] {
            let sig = parse_signature_header(Some(&sign(secret.expose(), body))).unwrap();
            for candidate in [&short, &long, &other] {
                let expected = signed_by(candidate.expose().as_bytes(), body, &sig);
                assert_eq!(expected, candidate == secret);
                // Twice: the first use makes the key, the second reuses it; a clone shares it.
                assert_eq!(signed_by_secret(candidate, body, &sig), expected);
                assert_eq!(signed_by_secret(&candidate.clone(), body, &sig), expected);
                let mut tampered = body.to_vec();
                tampered[2] ^= 1;
                assert!(!signed_by_secret(candidate, &tampered, &sig));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn a_header_is_read_as_the_hex_crate_reads_its_trimmed_digits(
            digits in "[0-9a-fA-FgG ]{60,68}",
            pad in "[ \t]{0,2}",
            raw in proptest::collection::vec(proptest::num::u8::ANY, 64),
        ) {
            for candidate in [
                format!("sha256={pad}{digits}{pad}").into_bytes(),
                [b"sha256=".as_slice(), &raw].concat(),
            ] {
                let expected = candidate
                    .strip_prefix(b"sha256=")
                    .map(|h| h.trim_ascii())
                    .and_then(|h| {
                        let mut sig = [0u8; 32];
                        hex::decode_to_slice(h, &mut sig).ok().map(|()| sig)
                    });
                proptest::prop_assert_eq!(parse_signature_header(Some(&candidate)), expected);
            }
        }
    }
}
