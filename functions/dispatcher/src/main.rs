//! The `dispatcher` Lambda on its own (see `lib.rs`); deployed as `kirim-lambda` with
//! `KIRIM_FUNCTION=dispatcher` (`functions/lambda`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    dispatcher::run().await
}
