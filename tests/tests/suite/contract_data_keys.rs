//! The data-key port's contract (`kirim::ports::DataKeys`), the same assertions on the
//! local key (memory backend) and on KMS (moto): a data key unwraps to itself only with
//! the context it was generated for, under the key that wrapped it, untampered.

use std::sync::Arc;

use kirim::adapters::aws::KmsDataKeys;
use kirim::adapters::memory::LocalDataKeys;
use kirim::config::Backend;
use kirim::domain::TenantId;
use kirim::ports::{DataKeys, KeyContext};

/// A fresh wrapping key: a new key in moto's KMS, or a new local key.
async fn key(b: Backend) -> Arc<dyn DataKeys> {
    match b {
        Backend::Aws => {
            let kms = aws_sdk_kms::Client::new(&kirim_tests::moto_sdk().await);
            let meta = kms.create_key().send().await.unwrap().key_metadata.unwrap();
            Arc::new(KmsDataKeys::new(kms, meta.arn().unwrap()))
        }
        Backend::Memory => Arc::new(LocalDataKeys::generate()),
    }
}

fn ctx(tenant: &str, user: &str) -> KeyContext {
    KeyContext::totp_seed(&TenantId::from_trusted(tenant), user)
}

async fn a_data_key_unwraps_to_itself_with_its_context_and_key_only(b: Backend) {
    let keys = key(b).await;
    let c = ctx("t_1", "u_1");
    let dk = keys.generate(&c).await.unwrap();
    assert_eq!(dk.plain.expose().len(), 32);
    assert_ne!(dk.wrapped.as_slice(), dk.plain.expose().as_slice());
    let unwrapped = keys.unwrap(&dk.wrapped, &c).await.unwrap().unwrap();
    assert_eq!(unwrapped.expose(), dk.plain.expose());

    // Another user, another tenant: refused.
    for other in [ctx("t_1", "u_2"), ctx("t_2", "u_1")] {
        assert!(keys.unwrap(&dk.wrapped, &other).await.unwrap().is_none());
    }
    // Another wrapping key: refused.
    let stranger = key(b).await;
    assert!(stranger.unwrap(&dk.wrapped, &c).await.unwrap().is_none());
}

async fn a_tampered_or_garbage_wrapped_key_is_refused_not_an_error(b: Backend) {
    let keys = key(b).await;
    let c = ctx("t_1", "u_1");
    let dk = keys.generate(&c).await.unwrap();
    let mut flipped = dk.wrapped.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let short = dk.wrapped[..dk.wrapped.len() / 2].to_vec();
    for wrapped in [flipped, short, b"not a wrapped key".to_vec(), vec![0u8]] {
        assert!(keys.unwrap(&wrapped, &c).await.unwrap().is_none());
    }
}

async fn each_data_key_is_new(b: Backend) {
    let keys = key(b).await;
    let c = ctx("t_1", "u_1");
    let (one, two) = (
        keys.generate(&c).await.unwrap(),
        keys.generate(&c).await.unwrap(),
    );
    assert_ne!(one.plain.expose(), two.plain.expose());
    assert_ne!(one.wrapped, two.wrapped);
}

on_both_backends!(
    a_data_key_unwraps_to_itself_with_its_context_and_key_only,
    a_tampered_or_garbage_wrapped_key_is_refused_not_an_error,
    each_data_key_is_new,
);

/// Local mode on a persistent emulator finds its key again by alias: what it wrapped before
/// a restart still opens after it.
#[tokio::test]
async fn a_second_bootstrap_of_an_emulator_stack_keeps_its_totp_seed_key() {
    let sdk = kirim_tests::moto_sdk().await;
    let stack = kirim_tests::unique_stack();
    let first = kirim_infra::bootstrap::ensure_stack(&sdk, &stack)
        .await
        .unwrap();
    let second = kirim_infra::bootstrap::ensure_stack(&sdk, &stack)
        .await
        .unwrap();
    let arn = first.kms_keys.get("TotpSeedKey").unwrap();
    assert_eq!(second.kms_keys.get("TotpSeedKey"), Some(arn));
    let kms = aws_sdk_kms::Client::new(&sdk);
    let alias = kms
        .describe_key()
        .key_id(format!("alias/{stack}/totp-seeds"))
        .send()
        .await
        .unwrap();
    assert_eq!(alias.key_metadata().unwrap().arn(), Some(arn.as_str()));
    let rotation = kms
        .get_key_rotation_status()
        .key_id(arn)
        .send()
        .await
        .unwrap();
    assert!(rotation.key_rotation_enabled());
}
