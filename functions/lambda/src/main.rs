//! The multi-call Lambda binary: one build and one link for all seven functions, one zip
//! that every function in `template.yaml` deploys (issue #13). The function's
//! `KIRIM_FUNCTION` environment variable (set per function in the template) picks which
//! function's `run` this process is; a missing or unknown name fails the init, naming the
//! ones it knows, as a missing setting does.

use kirim::wiring::Function;

/// mimalloc instead of glibc's malloc: a webhook makes about 40 allocations, and glibc's
/// took 6% of its instructions (its fast cache stops at 1 KB, and the kilobyte futures
/// and bodies above it consolidate its bins). BENCHMARKS.md "Webhook side by side".
#[global_allocator]
static ALLOCATOR: kirim::alloc::Mimalloc = kirim::alloc::Mimalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let name = std::env::var("KIRIM_FUNCTION").unwrap_or_default();
    match Function::from_name(&name) {
        Some(Function::SendApi) => send_api::run().await,
        Some(Function::AdminApi) => admin_api::run().await,
        Some(Function::Webhook) => webhook::run().await,
        Some(Function::Dispatcher) => dispatcher::run().await,
        Some(Function::StatusCallback) => status_callback::run().await,
        Some(Function::Retention) => retention::run().await,
        Some(Function::Console) => console::run().await,
        None => Err(unknown(&name).into()),
    }
}

fn unknown(name: &str) -> String {
    let known: Vec<&str> = Function::ALL.iter().map(|f| f.name()).collect();
    format!(
        "KIRIM_FUNCTION is {name:?}; it must be one of {}",
        known.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_is_known_by_its_crate_name() {
        for f in Function::ALL {
            assert_eq!(Function::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn an_unknown_name_is_refused_naming_the_known_ones() {
        assert_eq!(Function::from_name("webhooks"), None);
        assert_eq!(Function::from_name(""), None);
        let message = unknown("webhooks");
        assert!(message.contains("\"webhooks\""), "{message}");
        assert!(
            message.contains("send_api, admin_api, webhook"),
            "{message}"
        );
    }
}
