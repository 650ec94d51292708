//! `tokenizer.json` (and `tokenizer_config.json` after a NUL) loaded as a model directory's
//! tokenizer (`PromptTokenizer::from_model_dir`), then a prompt with an image marker encoded and
//! decoded.
#![no_main]
use dsvl::prompt::PromptTokenizer;
use dsvl_fuzz::{scratch_dir, split_nul, tolerate_caught_tokenizers_panics};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tolerate_caught_tokenizers_panics();
    let dir = scratch_dir();
    let parts = split_nul(data, 2);
    std::fs::write(dir.join("tokenizer.json"), parts[0]).expect("write tokenizer");
    if let Some(cfg) = parts.get(1) {
        std::fs::write(dir.join("tokenizer_config.json"), cfg).expect("write tokenizer config");
    }
    let Ok(tok) = PromptTokenizer::from_model_dir(dir, "<image>") else {
        return;
    };
    if let Ok(ids) = tok.encode_prompt("User: <image>\nDescribe it. 你好 🙂\n\nAssistant:") {
        let _ = tok.decode(&ids, false);
        let _ = tok.decode(&ids, true);
    }
});
