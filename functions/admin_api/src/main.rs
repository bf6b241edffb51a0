//! The `admin_api` Lambda on its own (see `lib.rs`); deployed as `kirim-lambda` with
//! `KIRIM_FUNCTION=admin_api` (`functions/lambda`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    admin_api::run().await
}
