//! Chat-template rendering and image-token expansion on arbitrary conversations: the v1
//! `deepseek` template (`prompt::template::render`, then the family's tokenize-and-expand), and
//! the VL2 prompt builder (`prompt::build_vl2_ids`) with arbitrary per-image token counts.
//!
//! Input: NUL-separated messages, each a role byte then UTF-8 text (lossy); a message's image
//! count is the number of markers in its text plus the low bits of its role byte.
#![no_main]
use dsvl::prompt::template::{render, Message, Role};
use dsvl::prompt::{build_vl2_ids, Vl2Turn};
use dsvl_fuzz::{split_nul, v1, v2};
use libfuzzer_sys::fuzz_target;

fn role(b: u8) -> Role {
    match b % 3 {
        0 => Role::User,
        1 => Role::Assistant,
        _ => Role::System,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let parts = split_nul(rest, 16);
    let system = (head & 1 == 1).then_some("You are helpful.");

    // v1: render, then the family's own tokenize-and-expand.
    let m = v1();
    let marker = m.family.image_marker();
    let messages: Vec<Message> = parts
        .iter()
        .filter_map(|p| p.split_first())
        .map(|(&r, text)| {
            let text = String::from_utf8_lossy(text);
            let n = text.matches(marker).count() + usize::from(r >> 6);
            Message::new(role(r), text).with_images(n)
        })
        .collect();
    let _ = render(system.unwrap_or(""), &messages);
    if let Ok(Some(p)) = m.family.prompt_from_counts(&m.tok, system, &messages) {
        let images: usize = messages.iter().map(|m| m.n_images).sum();
        let image_id = m.tok.image_id();
        let expanded = p.ids.iter().filter(|&&id| id == image_id).count();
        assert_eq!(
            expanded,
            images * m.family.tokens_per_image(),
            "every image expanded once"
        );
    }

    // VL2: the prompt builder, each image's token count taken from the input.
    let m = v2();
    let marker = m.family.image_marker();
    let turns: Vec<Vl2Turn> = messages
        .iter()
        .map(|msg| {
            let text = msg.content.replace("<image_placeholder>", marker);
            let n = text.matches(marker).count();
            Vl2Turn::new(msg.role, text).with_images(n)
        })
        .collect();
    let n_images: usize = turns.iter().map(|t| t.n_images).sum();
    let image_tokens: Vec<usize> = (0..n_images)
        .map(|k| 1 + usize::from(head.wrapping_add(k as u8)) % 64)
        .collect();
    if let Ok(p) = build_vl2_ids(&m.tok, marker, &turns, &image_tokens) {
        assert_eq!(p.image_spans.len(), n_images, "one span per image");
        for (span, &n) in p.image_spans.iter().zip(&image_tokens) {
            assert_eq!(span.len(), n, "span length is the image's token count");
            assert!(span.end <= p.ids.len(), "span inside the prompt");
        }
    }
});
