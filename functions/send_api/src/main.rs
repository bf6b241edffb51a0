//! The `send_api` Lambda on its own (see `lib.rs`); deployed as `kirim-lambda` with
//! `KIRIM_FUNCTION=send_api` (`functions/lambda`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    send_api::run().await
}
