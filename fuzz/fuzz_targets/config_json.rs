//! A model directory's JSON configuration: `config.json`, `processor_config.json` and
//! `preprocessor_config.json` (NUL-separated in the input; a missing part is a missing file),
//! resolved by `models::from_dir` for whichever family `model_type` names, then described.
#![no_main]
use dsvl_fuzz::{scratch_dir, split_nul};
use libfuzzer_sys::fuzz_target;

const FILES: [&str; 3] = [
    "config.json",
    "processor_config.json",
    "preprocessor_config.json",
];

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir();
    for (name, part) in FILES.iter().zip(split_nul(data, 3)) {
        std::fs::write(dir.join(name), part).expect("write config");
    }
    let Ok(family) = dsvl::models::from_dir(dir) else {
        return;
    };
    let _ = family.describe();
    let _ = family.llm_facts();
    assert!(
        family.context_length() > 0,
        "a resolved model has a context"
    );
    assert!(
        !family.image_marker().is_empty(),
        "a resolved model has an image marker"
    );
    let _ = family.tokens_per_image();
    let _ = family.image_size();
});
