//! DeepSeek-VL v1 (`MultiModalityCausalLM`): vision tower(s) + aligner + Llama (v1 §15).
//! The three children are loaded under the key prefixes `vision_model`, `aligner`, `language_model`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::config::{DeepseekVlSpec, VisionSpec};
use crate::error::Result;
use crate::llm::{KvCache, Llama, Logits};
use crate::models::merge::merge_image_embeddings;
use crate::nn::QuantPlan;
use crate::projector::{Aligner, HybridAligner};
use crate::vision::normalize;
use crate::vision::sam::{Sam, SamSpec};
use crate::vision::siglip::{Siglip, SiglipSpec};
use crate::weights::{Checkpoint, Progress};

/// The vision tower(s), each with the spec of its input (size, normalisation), and the aligner
/// that takes their features.
enum VisionTower {
    /// `vision_model.vision_tower` (CLIPVisionTower around SigLIP).
    Siglip(Box<SiglipTower>),
    /// `vision_model.vision_tower_high.vision_tower` (SAM) and `…_low.vision_tower` (SigLIP).
    Hybrid(Box<HybridTower>),
}

/// The 1.3B `CLIPVisionTower` and its aligner.
struct SiglipTower {
    siglip: Siglip,
    spec: SiglipSpec,
    aligner: Aligner,
}

/// The 7B `HybridVisionTower` and its split aligner.
struct HybridTower {
    sam: Sam,
    sam_spec: SamSpec,
    siglip: Siglip,
    siglip_spec: SiglipSpec,
    aligner: HybridAligner,
}

/// Per-stage outputs of the vision path, for parity tests and debugging.
pub struct VisionStages {
    /// The SigLIP input before normalisation `[N, 3, 384, 384]` (hybrid: the antialiased 384 view).
    pub low_res: Tensor,
    pub siglip_out: Tensor,
    pub sam_out: Option<Tensor>,
    /// `[N, 576, hidden]`
    pub aligner_out: Tensor,
}

/// A loaded DeepSeek-VL model.
pub struct DeepseekVl {
    spec: DeepseekVlSpec,
    vision: VisionTower,
    llm: Llama,
    dtype: DType,
    device: Device,
}

impl DeepseekVl {
    /// Loads the weights of `spec.dir` in `dtype` on `device`; the LLM's linear layers are
    /// stored as `quant` says (the vision towers and the aligner are never quantized).
    pub fn load(
        spec: &DeepseekVlSpec,
        dtype: DType,
        device: &Device,
        quant: QuantPlan,
        progress: Option<Progress>,
    ) -> Result<Self> {
        let ckpt = Arc::new(Checkpoint::open(&spec.dir, spec.layout, progress)?);
        let vb = ckpt.var_builder(dtype, device);
        let built = (|| -> candle_core::Result<_> {
            let vm = vb.pp("vision_model");
            // Fields load in the order written: the tower(s), then the aligner.
            let vision = match &spec.vision {
                VisionSpec::Siglip(s) => VisionTower::Siglip(Box::new(SiglipTower {
                    siglip: Siglip::new(s, vm.pp("vision_tower"))?,
                    spec: s.clone(),
                    aligner: Aligner::new(&spec.aligner, vb.pp("aligner"))?,
                })),
                VisionSpec::Hybrid { sam, siglip } => VisionTower::Hybrid(Box::new(HybridTower {
                    sam: Sam::new(sam, vm.pp("vision_tower_high").pp("vision_tower"))?,
                    sam_spec: sam.clone(),
                    siglip: Siglip::new(siglip, vm.pp("vision_tower_low").pp("vision_tower"))?,
                    siglip_spec: siglip.clone(),
                    aligner: HybridAligner::new(&spec.aligner, vb.pp("aligner"))?,
                })),
            };
            let llm = Llama::new_quantized(&spec.llm, quant, vb.pp("language_model"))?;
            Ok((vision, llm))
        })();
        let (vision, llm) = ckpt.finish(built)?;
        Ok(Self {
            spec: spec.clone(),
            vision,
            llm,
            dtype,
            device: device.clone(),
        })
    }

    pub fn spec(&self) -> &DeepseekVlSpec {
        &self.spec
    }
    pub fn llm(&self) -> &Llama {
        &self.llm
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `pixels`: preprocessed images `[N, 3, S, S]`, f32 values in [0, 1] (v1 §3.1 step 7).
    /// Returns every stage of the vision path; `aligner_out` is `[N, 576, hidden]` in the model dtype.
    pub fn vision_stages(&self, pixels: &Tensor) -> Result<VisionStages> {
        let _span = tracing::debug_span!("vision", images = pixels.dim(0).unwrap_or(0)).entered();
        // v1 §3.1 step 8: the processor output is cast to the model dtype before the tower.
        // Cast where the pixels are (the host), so the 384 view below is made there before
        // anything goes to a GPU, instead of copying the image back from it.
        let x_host = pixels.to_dtype(self.dtype)?;
        let x = x_host.to_device(&self.device)?;
        let (siglip_out, aligner_out, low_res, sam_out) = match &self.vision {
            VisionTower::Siglip(tower) => {
                let SiglipTower {
                    siglip,
                    spec: s,
                    aligner,
                } = tower.as_ref();
                let out = siglip.forward(&normalize(&x, s.pixel_mean, s.pixel_std)?)?;
                let aligned = aligner.forward(&out)?;
                (out, aligned, x, None)
            }
            VisionTower::Hybrid(tower) => {
                let HybridTower {
                    sam,
                    sam_spec: ss,
                    siglip,
                    siglip_spec: ls,
                    aligner,
                } = tower.as_ref();
                // v1 §3.3: the 384 view is derived from the (model-dtype) padded image, in f32, with
                // antialiased bilinear, before either branch normalises.
                let low = low_res_view(&x_host, ls.image_size)?.to_device(&self.device)?;
                let high = sam.forward(&normalize(&x, ss.pixel_mean, ss.pixel_std)?)?;
                let lo = siglip.forward(&normalize(&low, ls.pixel_mean, ls.pixel_std)?)?;
                let aligned = aligner.forward(&high, &lo)?;
                (lo, aligned, low, Some(high))
            }
        };
        Ok(VisionStages {
            low_res,
            siglip_out,
            sam_out,
            aligner_out,
        })
    }

    /// Image embeddings `[N, 576, hidden]` for preprocessed pixels `[N, 3, S, S]`.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision_stages(pixels)?.aligner_out)
    }

    /// Token embeddings `[1, T, hidden]` with the rows at `image_token_id` replaced, in order, by
    /// the rows of `image_embeds` (`[N, 576, hidden]`) (v1 §9).
    pub fn input_embeddings(
        &self,
        ids: &[u32],
        image_token_id: u32,
        image_embeds: Option<&Tensor>,
    ) -> Result<Tensor> {
        let ids_t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let text = self.llm.embed(&ids_t)?;
        match image_embeds {
            Some(img) => {
                merge_image_embeddings(&text, ids, image_token_id, img, "<image_placeholder>")
            }
            None => Ok(text),
        }
    }

    /// Runs `embeds` `[1, T, hidden]` through the LLM, appending to `cache`; f32 logits of the last position `[vocab]`.
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let _span = tracing::debug_span!("llm", tokens = embeds.dim(1).unwrap_or(0)).entered();
        Ok(self.llm.forward(embeds, cache, Logits::Last)?.squeeze(0)?)
    }

    /// One decode step for each of several sequences; f32 logits `[B, vocab]`.
    pub fn decode_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        Ok(self.llm.decode_batch(ids, caches)?)
    }

    /// One decode step for token `id`; f32 logits `[vocab]`.
    pub fn decode_step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor> {
        let embeds = self.input_embeddings(&[id], u32::MAX, None)?;
        self.forward_embeds(&embeds, cache)
    }
}

/// v1 §3.3: `Resize(384, antialias=True)` on the padded image: cast to f32, antialiased bilinear,
/// cast back to the working dtype.
fn low_res_view(x: &Tensor, size: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if (h, w) == (size, size) {
        return Ok(x.clone());
    }
    let data = x
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let per = c * h * w;
    let mut out = Vec::with_capacity(n * c * size * size);
    for img in data.chunks(per) {
        out.extend(crate::image::resize_bilinear_antialias_f32(
            img, c, h, w, size, size,
        )?);
    }
    Ok(Tensor::from_vec(out, (n, c, size, size), &Device::Cpu)?
        .to_dtype(x.dtype())?
        .to_device(x.device())?)
}
