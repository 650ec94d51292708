//! A `/v1/chat/completions` body → the model's prompt, along the server's path: JSON parsing
//! (`ApiJson`), validation (`ChatPlan`), data-URL image loading (`MediaPolicy`), then the
//! family's preparation (template, tokenizer, image decoding, tiling, image-token expansion).
//! The first byte picks the fixture model (v1 or VL2); the rest is the body.
#![no_main]
use dsvl::models::{ChatMessage, ImageOptions};
use dsvl_fuzz::{v1, v2};
use dsvl_server::media::MediaPolicy;
use dsvl_server::openai::convert::{template_messages, ChatPlan};
use dsvl_server::openai::request::ChatRequest;
use libfuzzer_sys::fuzz_target;

/// Small enough that a decoded image stays cheap; the limit itself is what is exercised.
const MAX_PIXELS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let model = if pick & 1 == 0 { v1() } else { v2() };
    let Ok(req) = dsvl_server::extract::parse::<ChatRequest>(body) else {
        return;
    };
    let marker = model.family.image_marker();
    let media = MediaPolicy::default();
    let Ok(plan) = ChatPlan::try_from_request(req, 4, marker, &media.pdf) else {
        return;
    };
    let counted =
        model
            .family
            .prompt_from_counts(&model.tok, None, &template_messages(&plan.turns));
    let mut messages = Vec::new();
    for t in &plan.turns {
        let Ok(images) = t.images.iter().map(|i| media.load(i)).collect() else {
            return;
        };
        messages.push(ChatMessage::new(t.role, t.text.clone()).with_images(images));
    }
    let prepared = model
        .family
        .prepare(
            &model.tok,
            None,
            &messages,
            &ImageOptions {
                max_pixels: MAX_PIXELS,
                max_tiles: plan.max_tiles,
            },
        );
    // Both ways of building the prompt agree where the family allows counting alone.
    if let (Ok(Some(counted)), Ok(prepared)) = (&counted, &prepared) {
        assert_eq!(
            counted.ids, prepared.ids,
            "prompt from counts == prepared prompt"
        );
    }
});
