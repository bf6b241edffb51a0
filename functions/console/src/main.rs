//! The `console` Lambda on its own (see `lib.rs`); deployed as `kirim-lambda` with
//! `KIRIM_FUNCTION=console` (`functions/lambda`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    console::run().await
}
