//! Meta's webhook signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret,
//! raw body)>`, checked over the exact bytes received, in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature bytes of a `sha256=<hex>` header; `None` if it is not one (64 hex digits:
/// anything else could not match, so it is refused before any HMAC is computed).
pub fn parse_signature_header(header: Option<&str>) -> Option<[u8; 32]> {
    let hex = header?.strip_prefix("sha256=")?.trim();
    let mut sig = [0u8; 32];
    hex::decode_to_slice(hex, &mut sig).ok()?;
    Some(sig)
}

/// Whether `signature` is the HMAC-SHA256 of `raw` under `secret` (constant time).
pub fn signed_by(secret: &[u8], raw: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
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
        assert_eq!(parse_signature_header(None), None);
    }
}
