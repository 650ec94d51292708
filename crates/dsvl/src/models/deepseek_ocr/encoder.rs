//! The DeepEncoder and the image-token layout (`DeepseekOCRForCausalLM._pixel_values_to_embedding`
//! of `deepseek_ocr.py`, github deepseek-ai/DeepSeek-OCR @ e4ac34e).
//!
//! Per view: SAM → `[B, 1024, g, g]`; CLIP-L over those features → `[B, 1 + g², 1024]`;
//! `cat(clip[:, 1:], sam.flatten(2).permute(0, 2, 1))` → `[B, g², 2048]`; the linear projector →
//! `[B, g², 1280]`. Keys under `model.`: `sam_model.*`, `vision_model.*`, `projector.layers.*`,
//! `image_newline`, `view_seperator` (sic).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::DeepEncoderSpec;
use crate::nn::{linear, Linear};
use crate::vision::clip_l::ClipL;
use crate::vision::sam::Sam;

/// Every stage of one batch of views, for parity checks.
pub struct EncoderStages {
    /// `[B, C_sam, g, g]`.
    pub sam: Tensor,
    /// `[B, 1 + g², C_clip]`, class token first.
    pub clip: Tensor,
    /// `[B, g², n_embed]`.
    pub projected: Tensor,
}

pub struct DeepEncoder {
    sam_model: Sam,
    vision_model: ClipL,
    projector: Linear,
    image_newline: Tensor,
    view_seperator: Tensor,
}

impl DeepEncoder {
    /// `vb` at the checkpoint's `model` prefix.
    pub fn new(spec: &DeepEncoderSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            sam_model: Sam::new_deep_encoder(&spec.sam, vb.pp("sam_model"))?,
            vision_model: ClipL::new(&spec.clip, vb.pp("vision_model"))?,
            projector: linear(
                spec.projector_in,
                spec.n_embed,
                true,
                vb.pp("projector.layers"),
            )?,
            image_newline: vb.get(spec.n_embed, "image_newline")?,
            view_seperator: vb.get(spec.n_embed, "view_seperator")?,
        })
    }

    /// Normalised views `[B, 3, S, S]` → every stage.
    pub fn encode_stages(&self, views: &Tensor) -> Result<EncoderStages> {
        let sam = self.sam_model.features(views)?;
        let clip = self.vision_model.forward(&sam)?;
        let tokens = clip.dim(1)? - 1;
        // ref: torch.cat((features_2[:, 1:], features_1.flatten(2).permute(0, 2, 1)), dim=-1)
        let features = Tensor::cat(
            &[
                &clip.narrow(1, 1, tokens)?,
                &sam.flatten_from(2)?.transpose(1, 2)?.contiguous()?,
            ],
            2,
        )?;
        let projected = self.projector.forward(&features)?;
        Ok(EncoderStages {
            sam,
            clip,
            projected,
        })
    }

    /// `[g², D]` features of one view as `g` rows of `g` features plus the newline: `[g·(g + 1), D]`.
    fn with_newlines(&self, grid: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
        let d = grid.dim(1)?;
        let grid = grid.reshape((rows, cols, d))?;
        let nl = self
            .image_newline
            .reshape((1, 1, d))?
            .broadcast_as((rows, 1, d))?;
        Tensor::cat(&[&grid, &nl], 1)?.reshape((rows * (cols + 1), d))
    }

    /// One image's embeddings in token order: the local tiles as one `(rows·h) × (cols·w)` grid with a
    /// newline per row (when tiled), then the global grid with newlines, then the view separator.
    /// In: the projected global view `[1, h², D]` and the projected tiles `[rows·cols, w², D]` with
    /// their grid `(cols, rows)`. Out: `[N, D]`.
    pub fn layout(
        &self,
        global: &Tensor,
        tiles: Option<(&Tensor, (usize, usize))>,
    ) -> Result<Tensor> {
        let (_, hw, d) = global.dims3()?;
        let h = (hw as f64).sqrt() as usize;
        let global = self.with_newlines(&global.squeeze(0)?, h, h)?;
        let sep = self.view_seperator.reshape((1, d))?;
        let Some((tiles, (cols, rows))) = tiles else {
            return Tensor::cat(&[&global, &sep], 0);
        };
        let (_, hw2, _) = tiles.dims3()?;
        let h2 = (hw2 as f64).sqrt() as usize;
        // ref: view(rows, cols, h2, w2, D).permute(0, 2, 1, 3, 4).reshape(rows·h2, cols·w2, D)
        let local = tiles
            .reshape((rows, cols, h2, h2, d))?
            .permute((0, 2, 1, 3, 4))?
            .reshape((rows * h2 * cols * h2, d))?;
        let local = self.with_newlines(&local, rows * h2, cols * h2)?;
        Tensor::cat(&[&local, &global, &sep], 0)
    }

    /// One image, views already normalised: `global [1, 3, B, B]`, `tiles [n, 3, s, s]` with grid
    /// `(cols, rows)`. Out: `[N, D]` image embeddings.
    pub fn encode_image(
        &self,
        global: &Tensor,
        tiles: Option<(&Tensor, (usize, usize))>,
    ) -> Result<Tensor> {
        let g = self.encode_stages(global)?.projected;
        match tiles {
            Some((t, grid)) => {
                let local = self.encode_stages(t)?.projected;
                self.layout(&g, Some((&local, grid)))
            }
            None => self.layout(&g, None),
        }
    }
}
