//! The `status_callback` Lambda on its own (see `lib.rs`); deployed as `kirim-lambda` with
//! `KIRIM_FUNCTION=status_callback` (`functions/lambda`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    status_callback::run().await
}
