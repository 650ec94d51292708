//! DeepSeek-VL2 (`DeepseekVLV2ForCausalLM`, v2 §3–§8): SigLIP-SO400M over 384 tiles, the
//! `downsample_mlp_gelu` projector, the 2-D tile layout with the learned `image_newline` and
//! `view_seperator` (sic) vectors, and the DeepSeekMoE language model.
//! Keys: `vision.*`, `projector.*`, `image_newline`, `view_seperator`, `language.*`.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::config::{DeepseekVl2Spec, GlobalViewPos};
use crate::error::Result;
use crate::llm::deepseek_v2::DeepseekV2;
use crate::llm::{KvCache, Logits};
use crate::models::inputs::TiledImage;
use crate::models::merge::merge_image_embeddings;
use crate::nn::QuantPlan;
use crate::projector::DownsampleProjector;
use crate::vision::siglip::Siglip;
use crate::weights::{Checkpoint, Progress};

/// Per-stage outputs of the vision path for one batch of tiles (parity tests, debugging).
pub struct Vl2VisionStages {
    /// `[T, g², width]`: the last block's output after the final LayerNorm.
    pub vision_out: Tensor,
    /// `[T, (g/2)², hidden]`.
    pub projector_out: Tensor,
}

/// A loaded DeepSeek-VL2 model.
pub struct DeepseekVl2 {
    spec: DeepseekVl2Spec,
    vision: Siglip,
    projector: DownsampleProjector,
    image_newline: Tensor,
    view_separator: Tensor,
    llm: DeepseekV2,
    dtype: DType,
    device: Device,
}

impl DeepseekVl2 {
    /// Loads the weights of `spec.dir` in `dtype` on `device`; the LLM's linear layers are
    /// stored as `quant` says (the vision tower and the projector are never quantized).
    pub fn load(
        spec: &DeepseekVl2Spec,
        dtype: DType,
        device: &Device,
        quant: QuantPlan,
        progress: Option<Progress>,
    ) -> Result<Self> {
        let ckpt = Arc::new(Checkpoint::open(
            &spec.dir,
            crate::CheckpointLayout::Original,
            progress,
        )?);
        let vb = ckpt.var_builder(dtype, device);
        let d = spec.llm.hidden_size;
        let built = (|| -> candle_core::Result<_> {
            let vision = Siglip::new(&spec.vision, vb.pp("vision"))?;
            let projector = DownsampleProjector::new(&spec.projector, vb.pp("projector"))?;
            let image_newline = vb.get(d, "image_newline")?;
            let view_separator = vb.get(d, "view_seperator")?;
            let llm = DeepseekV2::new_quantized(&spec.llm, quant, vb.pp("language"))?;
            Ok((vision, projector, image_newline, view_separator, llm))
        })();
        let (vision, projector, image_newline, view_separator, llm) = ckpt.finish(built)?;
        Ok(Self {
            spec: spec.clone(),
            vision,
            projector,
            image_newline,
            view_separator,
            llm,
            dtype,
            device: device.clone(),
        })
    }

    pub fn spec(&self) -> &DeepseekVl2Spec {
        &self.spec
    }
    pub fn llm(&self) -> &DeepseekV2 {
        &self.llm
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `tiles`: normalised pixels `[T, 3, S, S]` (f32, as the processor makes them). The
    /// processor output is cast to the model dtype before the tower (v2 §2.7).
    pub fn vision_stages(&self, tiles: &Tensor) -> Result<Vl2VisionStages> {
        let _span = tracing::debug_span!("vision", tiles = tiles.dim(0).unwrap_or(0)).entered();
        let x = tiles.to_dtype(self.dtype)?.to_device(&self.device)?;
        // Tiles are independent through the tower and the projector. On the CPU they go through
        // one at a time: a tile's rows already fill the GEMMs, and the attention scores of all
        // tiles at once (T × heads × 729² floats, several times over in the softmax) are held
        // only one tile at a time.
        let passes = match self.device.is_cpu() {
            true => x.chunk(x.dim(0)?.max(1), 0)?,
            false => vec![x],
        };
        let (mut vision_out, mut projector_out) = (Vec::new(), Vec::new());
        for tiles in &passes {
            let v = self.vision.forward(tiles)?;
            projector_out.push(self.projector.forward(&v)?);
            vision_out.push(v);
        }
        Ok(Vl2VisionStages {
            vision_out: Tensor::cat(&vision_out, 0)?,
            projector_out: Tensor::cat(&projector_out, 0)?,
        })
    }

    /// The image's embedding sequence `[N, hidden]` (v2 §5, §7) from its tiles
    /// `[1 + nw·nh, 3, S, S]` (global view first, then the local tiles row-major).
    pub fn encode_tiled(&self, image: &TiledImage) -> Result<Tensor> {
        let (nw, nh) = image.grid();
        let feats = self.vision_stages(image.tiles())?.projector_out;
        self.layout_image(&feats, nw, nh)
    }

    /// Arranges projected tiles `[1 + nw·nh, g², D]` into the 2-D sequence: global rows each
    /// followed by `image_newline`, `view_seperator`, then the stitched local grid (rows of
    /// `g·nw` tokens each followed by `image_newline`); with `global_view_pos: tail` the local
    /// grid comes first.
    pub fn layout_image(&self, feats: &Tensor, nw: usize, nh: usize) -> Result<Tensor> {
        let (_, hw, d) = feats.dims3()?;
        let g = (hw as f64).sqrt() as usize;
        let newline = self.image_newline.to_dtype(feats.dtype())?;
        let separator = self
            .view_separator
            .to_dtype(feats.dtype())?
            .reshape((1, d))?;
        let with_newlines = |grid: Tensor, rows: usize| -> Result<Tensor> {
            let nl = newline.reshape((1, 1, d))?.expand((rows, 1, d))?;
            let cols = grid.dim(1)?;
            Ok(Tensor::cat(&[grid, nl], 1)?.reshape((rows * (cols + 1), d))?)
        };
        let global = with_newlines(feats.get(0)?.reshape((g, g, d))?, g)?;
        // "(th tw) (h w) d -> (th h) (tw w) d"
        let local = feats
            .narrow(0, 1, nw * nh)?
            .reshape((nh, nw, g, g, d))?
            .permute((0, 2, 1, 3, 4))?
            .reshape((nh * g, nw * g, d))?;
        let local = with_newlines(local, nh * g)?;
        let parts = match self.spec.global_view_pos {
            GlobalViewPos::Head => [global, separator, local],
            GlobalViewPos::Tail => [local, separator, global],
        };
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Token embeddings `[1, T, hidden]` with the positions holding `image_token_id` replaced,
    /// in order, by the rows of the per-image sequences `images` (each `[N_i, hidden]`).
    pub fn input_embeddings(
        &self,
        ids: &[u32],
        image_token_id: u32,
        images: &[Tensor],
    ) -> Result<Tensor> {
        let ids_t = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let text = self.llm.embed(&ids_t)?;
        if images.is_empty() {
            return Ok(text);
        }
        let rows = Tensor::cat(images, 0)?.unsqueeze(0)?;
        merge_image_embeddings(&text, ids, image_token_id, &rows, "<image>")
    }

    /// Runs `embeds` `[1, T, hidden]` through the LM, appending to `cache`; f32 logits `[vocab]`.
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
        let ids = Tensor::new(&[id], &self.device)?.unsqueeze(0)?;
        let embeds = self.llm.embed(&ids)?;
        self.forward_embeds(&embeds, cache)
    }
}
