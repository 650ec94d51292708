//! Continuing a conversation (`Pipeline::generate_in`): the next turn keeps the keys/values of
//! the prefix its prompt shares with what the previous turn left (prompt and answer), prefills
//! only the rest, and answers what a fresh prefill of the whole conversation answers. Image
//! positions are shared only when the image is the same.

use std::ops::ControlFlow;

use candle_core::DType;
use dsvl::engine::{
    ChatMessage, Conversation, Event, GenerateParams, ImageSource, Outcome, Pipeline, Prepared,
};
use dsvl::prompt::template::Role;
use dsvl::sampling::SamplingParams;

use crate::v1::fixtures;
use crate::vl2::vl2_fixtures;

const NEW_TOKENS: usize = 6;

fn params() -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams {
            temperature: 0.0,
            max_new_tokens: NEW_TOKENS,
            ..Default::default()
        },
        ignore_eos: true,
        logprobs: Some(1),
        ..Default::default()
    }
}

/// The outcome and each token's logprob.
fn answer(
    p: &Pipeline,
    prepared: &Prepared,
    conversation: Option<&mut Conversation>,
) -> (Outcome, Vec<f32>) {
    let mut logprobs = Vec::new();
    let on_event = |ev: &Event| {
        if let Event::Token(t) = ev {
            logprobs.push(t.logprob.expect("logprobs requested"));
        }
        ControlFlow::Continue(())
    };
    let outcome = match conversation {
        Some(c) => p.generate_in(c, prepared, &params(), on_event),
        None => p.generate(prepared, &params(), on_event),
    }
    .expect("generates");
    (outcome, logprobs)
}

/// `got` (continued) against a fresh prefill of the same prompt.
fn same_answer(p: &Pipeline, prepared: &Prepared, got: &(Outcome, Vec<f32>), what: &str) {
    let fresh = answer(p, prepared, None);
    assert_eq!(got.0.ids, fresh.0.ids, "{what}: greedy ids");
    for (i, (a, b)) in got.1.iter().zip(&fresh.1).enumerate() {
        assert!((a - b).abs() <= 1e-3, "{what}: step {i} logprob {a} vs {b}");
    }
    assert_eq!(got.0.prompt_tokens, prepared.ids.len());
}

fn user(text: String, images: Vec<ImageSource>) -> ChatMessage {
    ChatMessage::new(Role::User, text).with_images(images)
}

fn check(p: &Pipeline, image: ImageSource, other: ImageSource, what: &str) {
    let marker = p.config().image_marker();
    let image_id = p.tokenizer().image_id();
    let mut conv = Conversation::new(64 << 20);

    // Turn 1: nothing to reuse; the same answer as without a conversation.
    let mut history = vec![user(
        format!("{marker}What is in this picture?"),
        vec![image],
    )];
    let prep1 = p.prepare(None, &history).expect("prepare");
    let turn1 = answer(p, &prep1, Some(&mut conv));
    assert_eq!(turn1.0.reused_prompt_tokens, 0, "{what}: turn 1");
    same_answer(p, &prep1, &turn1, &format!("{what} turn 1"));
    assert_eq!(conv.cached_tokens(), prep1.ids.len() + NEW_TOKENS - 1);

    // Turn 2: the first prompt (at least up to its last token, whose text may merge with the
    // answer's first) is not prefilled again; the image is not encoded again.
    history.push(ChatMessage::new(Role::Assistant, turn1.0.text.clone()));
    history.push(user("And what colour is it?".into(), vec![]));
    let prep2 = p.prepare(None, &history).expect("prepare");
    let turn2 = answer(p, &prep2, Some(&mut conv));
    let reused = turn2.0.reused_prompt_tokens;
    assert!(
        reused >= prep1.ids.len() - 1 && reused < prep2.ids.len(),
        "{what}: turn 2 reused {reused} of {} (turn 1 prompt {})",
        prep2.ids.len(),
        prep1.ids.len()
    );
    assert!(
        conv.features.hits >= 1,
        "{what}: the image was encoded again"
    );
    same_answer(p, &prep2, &turn2, &format!("{what} turn 2"));

    // Turn 3, a new conversation in the same cache: the same words about another image share
    // the text before the image only.
    let history = vec![user(
        format!("{marker}What is in this picture?"),
        vec![other],
    )];
    let prep3 = p.prepare(None, &history).expect("prepare");
    let first_image_pos = prep3
        .ids
        .iter()
        .position(|&id| id == image_id)
        .expect("image");
    let turn3 = answer(p, &prep3, Some(&mut conv));
    assert_eq!(
        turn3.0.reused_prompt_tokens, first_image_pos,
        "{what}: turn 3 must stop sharing at the (different) image"
    );
    same_answer(p, &prep3, &turn3, &format!("{what} turn 3"));

    // Cleared: nothing is reused.
    conv.clear();
    let again = answer(p, &prep3, Some(&mut conv));
    assert_eq!(again.0.reused_prompt_tokens, 0);
    assert_eq!(again.0.ids, turn3.0.ids);
}

fn load(dir: std::path::PathBuf) -> Pipeline {
    crate::batch::load(dir, DType::F32)
}

#[test]
fn continued_conversation_reuses_the_prefix_v1() {
    let image = ImageSource::Path(fixtures().join("images/landscape_500x333.png"));
    let other = ImageSource::Path(fixtures().join("images/photo_640x480_q90_420.jpg"));
    let p = load(fixtures().join("models/siglip-tiny"));
    check(&p, image, other, "siglip-tiny");
}

#[test]
fn continued_conversation_reuses_the_prefix_vl2() {
    let image = ImageSource::Path(vl2_fixtures().join("images/chart_520x390_L.png"));
    let other = ImageSource::Path(vl2_fixtures().join("images/icon_96x64_P.png"));
    for model in ["vl2-tiny-random", "vl2-small-random"] {
        let p = load(vl2_fixtures().join("models").join(model));
        check(&p, image.clone(), other.clone(), model);
    }
}
