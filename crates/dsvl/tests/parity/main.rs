//! The one parity test binary: each stage module against reference fixtures.

mod batch;
mod checkpoints;
mod conversation;
mod errors;
mod fuzz_regressions;
mod image;
mod npy;
mod ocr;
mod pdf;
mod quant;
mod structured;
mod tol;
mod v1;
mod vl2;
mod vl2_errors;
mod vl2_llm;
mod vl2_prep;

/// Where the fixture models run: `DSVL_TEST_DEVICE` (`cpu`, `cuda`, `cuda:N`; default `cpu`), so
/// the same test binary, built with `--features dsvl/cuda`, checks a GPU against the same
/// references (issue #5). An unusable device fails the test with the reason.
pub fn test_device() -> candle_core::Device {
    let choice = std::env::var("DSVL_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let choice: dsvl::device::DeviceChoice = choice
        .parse()
        .unwrap_or_else(|e| panic!("DSVL_TEST_DEVICE: {e}"));
    match dsvl::device::select(choice) {
        Ok(selected) => selected.device,
        Err(e) => panic!("DSVL_TEST_DEVICE={choice}: {e}"),
    }
}
