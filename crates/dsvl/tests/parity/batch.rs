//! Batched decode (`Pipeline::decode_batch`, the server's continuous batching) gives every
//! sequence bit for bit the logits of decoding it alone, on v1 (f32 and bf16) and on
//! DeepSeek-VL2 with MoE (MHA tiny, MLA small), with sequences of different lengths leaving
//! the batch at different steps.

use candle_core::DType;
use dsvl::engine::{ChatMessage, GenerateParams, ImageSource, LoadOptions, Pipeline, Sequence};
use dsvl::prompt::template::Role;
use dsvl::sampling::SamplingParams;

use crate::v1::fixtures;
use crate::vl2::vl2_fixtures;

fn params(max_new_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams {
            temperature: 0.0,
            max_new_tokens,
            ..Default::default()
        },
        ignore_eos: true,
        ..Default::default()
    }
}

/// Four prompts of different lengths, one with an image.
fn prompts(p: &Pipeline, image: ImageSource) -> Vec<(dsvl::engine::Prepared, usize)> {
    let marker = p.config().image_marker();
    let texts = [
        format!("{marker}What is in this picture?"),
        "Hi".to_string(),
        "Write a long story about a lighthouse keeper and the sea, please.".to_string(),
        "Count to five.".to_string(),
    ];
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let images = if i == 0 { vec![image.clone()] } else { vec![] };
            let msg = vec![ChatMessage::new(Role::User, t.as_str()).with_images(images)];
            let max = 3 + 2 * i;
            (p.prepare(None, &msg).expect("prompt prepares"), max)
        })
        .collect()
}

fn check(p: &Pipeline, image: ImageSource, what: &str) {
    let prompts = prompts(p, image);
    let start = |(prep, max): &(dsvl::engine::Prepared, usize)| -> Sequence<'_> {
        p.start(prep, &params(*max), None).expect("prefill")
    };
    let mut alone: Vec<Sequence<'_>> = prompts.iter().map(start).collect();
    let mut batched: Vec<Option<Sequence<'_>>> = prompts.iter().map(|x| Some(start(x))).collect();
    let cont = |_: &dsvl::engine::Event| std::ops::ControlFlow::Continue(());

    // Alone: each sequence to its end, logits recorded at every step.
    let mut want: Vec<Vec<Vec<f32>>> = Vec::new();
    for seq in &mut alone {
        let mut steps = vec![seq.logits().to_vec()];
        while let Some(id) = seq.step(cont).expect("step") {
            seq.decode(id).expect("decode");
            steps.push(seq.logits().to_vec());
        }
        want.push(steps);
    }

    // Batched: all together, one decode_batch per step, finished ones leave.
    let mut step = 0;
    let mut rows_per_step = Vec::new();
    loop {
        step += 1;
        let mut batch = Vec::new();
        for (i, slot) in batched.iter_mut().enumerate() {
            let Some(seq) = slot.as_mut() else { continue };
            match seq.step(cont).expect("step") {
                Some(id) => batch.push((i, id)),
                None => *slot = None,
            }
        }
        if batch.is_empty() {
            break;
        }
        rows_per_step.push(batch.len());
        let idx: Vec<usize> = batch.iter().map(|(i, _)| *i).collect();
        {
            let mut refs: Vec<(&mut Sequence<'_>, u32)> = Vec::new();
            for (i, slot) in batched.iter_mut().enumerate() {
                if let (Some(seq), Some(pos)) = (slot.as_mut(), idx.iter().position(|j| *j == i)) {
                    refs.push((seq, batch[pos].1));
                }
            }
            p.decode_batch(&mut refs).expect("batched decode");
        }
        for i in idx {
            let got = batched[i].as_ref().expect("running").logits();
            let exp = &want[i][step];
            assert!(
                got.iter().zip(exp).all(|(a, b)| a.to_bits() == b.to_bits())
                    && got.len() == exp.len(),
                "{what}: sequence {i}, step {step}: batched logits differ from alone"
            );
        }
    }
    assert_eq!(
        rows_per_step.first(),
        Some(&4),
        "{what}: all four decoded together"
    );
    assert!(
        rows_per_step.windows(2).all(|w| w[1] <= w[0]),
        "{what}: {rows_per_step:?}"
    );
    assert!(
        rows_per_step.last() < rows_per_step.first(),
        "{what}: sequences left the batch"
    );
}

/// A fixture model on the test device.
pub fn load(dir: std::path::PathBuf, dtype: DType) -> Pipeline {
    let opts = LoadOptions {
        dtype,
        device: crate::test_device(),
        ..Default::default()
    };
    Pipeline::load(&dir, &opts).expect("fixture model loads")
}

#[test]
fn batched_decode_equals_alone_v1() {
    let image = ImageSource::Path(fixtures().join("images/landscape_500x333.png"));
    for dtype in [DType::F32, DType::BF16] {
        let p = load(fixtures().join("models/siglip-tiny"), dtype);
        check(&p, image.clone(), &format!("siglip-tiny {dtype:?}"));
    }
}

#[test]
fn batched_decode_equals_alone_vl2_moe() {
    let image = ImageSource::Path(vl2_fixtures().join("images/chart_520x390_L.png"));
    for model in ["vl2-tiny-random", "vl2-small-random"] {
        let p = load(vl2_fixtures().join("models").join(model), DType::F32);
        check(&p, image.clone(), model);
    }
}

/// A bf16 model on the CPU keeps its KV cache in f32 (`KvCache::for_model`); its logits must be
/// bit for bit those of a bf16 cache: v1 Llama, VL2 MHA and MLA (both forms are used: the
/// prefill picks the expanded one, decode steps the absorbed one).
#[test]
fn f32_kv_cache_of_a_bf16_model_changes_no_bit() {
    let models = [
        fixtures().join("models/siglip-tiny"),
        vl2_fixtures().join("models/vl2-tiny-random"),
        vl2_fixtures().join("models/vl2-small-random"),
    ];
    for dir in models {
        let p = load(dir.clone(), DType::BF16);
        let model = p.model();
        if !model.device().is_cpu() {
            return; // the f32 cache is a CPU policy
        }
        let msg = vec![ChatMessage::new(Role::User, "Count to five, slowly.")];
        let prep = p.prepare(None, &msg).expect("prepare");
        let embeds = model
            .input_embeddings(&prep.ids, p.tokenizer().image_id(), &[])
            .expect("embeddings");
        let mut wide = model.new_cache();
        let mut narrow = model.new_cache().with_storage(None);
        let bits = |t: candle_core::Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        let a = bits(model.forward_embeds(&embeds, &mut wide).expect("prefill"));
        let b = bits(model.forward_embeds(&embeds, &mut narrow).expect("prefill"));
        assert_eq!(a, b, "{}: prefill logits", dir.display());
        for (step, id) in [17u32, 5, 99].into_iter().enumerate() {
            let a = bits(model.decode_step(id, &mut wide).expect("decode"));
            let b = bits(model.decode_step(id, &mut narrow).expect("decode"));
            assert_eq!(a, b, "{}: decode step {step}", dir.display());
        }
    }
}
