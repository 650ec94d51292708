//! Embedding merge (v1 §9): `E[images_seq_mask] = img[images_emb_mask]`, i.e. the image-token
//! positions receive the image embeddings row by row, in order.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// `text`: `[1, T, D]` token embeddings; `ids`: the T ids; `images`: `[N, tokens, D]`.
/// Every position whose id is `image_id` takes the next image row. The number of such positions
/// must be exactly `N × tokens`; `marker` names the prompt marker in the error otherwise.
pub fn merge_image_embeddings(
    text: &Tensor,
    ids: &[u32],
    image_id: u32,
    images: &Tensor,
    marker: &str,
) -> Result<Tensor> {
    let (n, per, d) = images.dims3()?;
    let slots = ids.iter().filter(|&&i| i == image_id).count();
    if slots != n * per {
        return Err(Error::ImageCountMismatch {
            markers: slots / per.max(1),
            images: n,
            marker: marker.into(),
        });
    }
    let rows = images.reshape((n * per, d))?.to_dtype(text.dtype())?;
    let text = text.squeeze(0)?;
    let mut parts = Vec::new();
    let (mut pos, mut next_row) = (0, 0);
    while pos < ids.len() {
        let is_img = ids[pos] == image_id;
        let run = ids[pos..]
            .iter()
            .take_while(|&&i| (i == image_id) == is_img)
            .count();
        parts.push(if is_img {
            let p = rows.narrow(0, next_row, run)?;
            next_row += run;
            p
        } else {
            text.narrow(0, pos, run)?
        });
        pos += run;
    }
    Ok(Tensor::cat(&parts, 0)?.unsqueeze(0)?)
}
