//! JPEG through libjpeg-turbo's decoder (mozjpeg), configured as Pillow configures it (v1 §13.18): islow IDCT,
//! fancy upsampling, colour conversion by libjpeg to RGB. Gray JPEGs are replicated to RGB by libjpeg
//! (`gray_rgb_convert`, the same bytes as Pillow's `L` → `RGB`). CMYK/YCCK JPEGs are decoded to CMYK, read as
//! Adobe-inverted (`CMYK;I`, Pillow "assumes adobe conventions") and converted with Pillow's `cmyk2rgb`.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return. Ours unwinds with
//! `resume_unwind` (mozjpeg-sys feature `unwinding` builds the C code with `-fexceptions`), and
//! [`decode_jpeg`] catches it, destroys the decompressor and returns [`Error::ImageDecode`]. A premature end of
//! data is only a warning in libjpeg; Pillow refuses such files ("image file is truncated"), so do we.

use std::ffi::CStr;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use mozjpeg_sys as jpeg;

use super::decode::check_pixels;
use super::rgb::RgbImage;
use crate::error::{Error, Result};

/// Our error manager: libjpeg's struct first, so `cinfo.err` can be cast back to it in the callbacks.
#[repr(C)]
struct ErrorMgr {
    mgr: jpeg::jpeg_error_mgr,
    premature_eof: bool,
}

/// Payload of the unwind started in `error_exit`.
struct LibjpegError(String);

/// libjpeg's text for the current `msg_code`.
unsafe fn message(cinfo: &mut jpeg::jpeg_common_struct) -> String {
    // mozjpeg-sys declares the buffer as `&[u8; 80]`, but libjpeg writes into it: call through a pointer
    // signature so Rust never sees a write behind a shared reference.
    type FormatRaw = unsafe extern "C-unwind" fn(*mut jpeg::jpeg_common_struct, *mut u8);
    let mut buf = [0u8; 80];
    if let Some(format) = (*cinfo.err).format_message {
        // SAFETY: same ABI (two pointers); the C side writes at most 80 bytes, NUL-terminated.
        let format: FormatRaw = std::mem::transmute::<
            unsafe extern "C-unwind" fn(&mut jpeg::jpeg_common_struct, &[u8; 80]),
            FormatRaw,
        >(format);
        format(cinfo, buf.as_mut_ptr());
    }
    buf[79] = 0;
    CStr::from_bytes_until_nul(&buf).map_or_else(
        |_| "libjpeg error".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    )
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg::jpeg_common_struct) {
    let msg = message(cinfo);
    resume_unwind(Box::new(LibjpegError(msg)));
}

unsafe extern "C-unwind" fn emit_message(
    cinfo: &mut jpeg::jpeg_common_struct,
    msg_level: jpeg::c_int,
) {
    if msg_level < 0 {
        // A warning. Pillow's decoder carries on after corrupt-data warnings (same bytes as ours), but a
        // premature end of the data makes Pillow's loader raise; remember it.
        let mgr = &mut *(cinfo.err as *mut ErrorMgr);
        mgr.mgr.num_warnings += 1;
        if mgr.mgr.msg_code == jpeg::JWRN_JPEG_EOF as jpeg::c_int {
            mgr.premature_eof = true;
        }
    }
}

unsafe extern "C-unwind" fn output_message(_cinfo: &mut jpeg::jpeg_common_struct) {}

/// Decoded samples before conversion to RGB.
enum Samples {
    Rgb(Vec<u8>),
    /// Raw CMYK as libjpeg returns it (Adobe convention: inverted).
    Cmyk(Vec<u8>),
}

/// Decode a JPEG to RGB8 `[H, W, 3]` exactly as Pillow's `Image.open(f).convert("RGB")` does. The pixel
/// count is checked against `max_pixels` after `jpeg_read_header`, before any scan is decoded.
pub(super) fn decode_jpeg(bytes: &[u8], source_name: &str, max_pixels: u64) -> Result<RgbImage> {
    let decode_err = |message: String| Error::ImageDecode {
        source_name: source_name.to_owned(),
        message,
    };
    let mut err = Box::new(ErrorMgr {
        // SAFETY: jpeg_error_mgr is a plain C struct; all-zero is a valid value before jpeg_std_error fills it.
        mgr: unsafe { std::mem::zeroed() },
        premature_eof: false,
    });
    // SAFETY: as above; jpeg_create_decompress initialises the struct.
    let mut cinfo: Box<jpeg::jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });

    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(u32, u32, Samples)> {
        // SAFETY: standard libjpeg sequence on structs we own; `bytes` outlives the decompressor; errors
        // unwind out of the C frames (compiled with -fexceptions) to this catch_unwind.
        unsafe {
            jpeg::jpeg_std_error(&mut err.mgr);
            err.mgr.error_exit = Some(error_exit);
            err.mgr.emit_message = Some(emit_message);
            err.mgr.output_message = Some(output_message);
            cinfo.common.err = &mut err.mgr;
            jpeg::jpeg_create_decompress(&mut *cinfo);
            jpeg::jpeg_mem_src(&mut cinfo, bytes.as_ptr(), bytes.len() as jpeg::c_ulong);
            jpeg::jpeg_read_header(&mut cinfo, 1);

            let (width, height) = (cinfo.image_width, cinfo.image_height);
            check_pixels(source_name, width, height, max_pixels)?;
            let cmyk = matches!(cinfo.jpeg_color_space, jpeg::JCS_CMYK | jpeg::JCS_YCCK);
            cinfo.out_color_space = if cmyk { jpeg::JCS_CMYK } else { jpeg::JCS_RGB };
            // Library defaults are Pillow's: JDCT_ISLOW, do_fancy_upsampling = TRUE, no scaling.
            jpeg::jpeg_start_decompress(&mut cinfo);
            let comps = cinfo.output_components as usize;
            let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
            let stride = w * comps;
            let mut data = vec![0u8; stride * h];
            while (cinfo.output_scanline as usize) < h {
                let row = cinfo.output_scanline as usize;
                let mut ptr = data[row * stride..].as_mut_ptr();
                if jpeg::jpeg_read_scanlines(&mut cinfo, &mut ptr, 1) != 1 {
                    return Err(decode_err(
                        "the JPEG decoder stopped before the last row".into(),
                    ));
                }
            }
            if err.premature_eof {
                return Err(decode_err(
                    "image file is truncated: the JPEG data ends before the last scan".into(),
                ));
            }
            jpeg::jpeg_finish_decompress(&mut cinfo);
            let samples = if cmyk {
                Samples::Cmyk(data)
            } else {
                Samples::Rgb(data)
            };
            Ok((w as u32, h as u32, samples))
        }
    }));
    // SAFETY: valid after jpeg_create_decompress, also after an error; a no-op on a zeroed struct.
    unsafe { jpeg::jpeg_destroy_decompress(&mut cinfo) };

    let (width, height, samples) = match outcome {
        Ok(result) => result?,
        Err(payload) => {
            let msg = match payload.downcast::<LibjpegError>() {
                Ok(e) => e.0,
                Err(_) => "internal error in the JPEG decoder".into(),
            };
            let truncated = if err.premature_eof {
                " (image file is truncated)"
            } else {
                ""
            };
            return Err(decode_err(format!("invalid JPEG data: {msg}{truncated}")));
        }
    };
    let data = match samples {
        Samples::Rgb(data) => data,
        Samples::Cmyk(data) => cmyk_inverted_to_rgb(&data),
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// Pillow `CMYK;I` unpack (`255 − v`) followed by `Convert.c::cmyk2rgb`:
/// `nk = 255 − k; out = clip8(nk − MULDIV255(c, nk))`, `MULDIV255(a, b) = ((a·b + 128) >> 8 + a·b + 128) >> 8`.
fn cmyk_inverted_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let [c, m, y, k] = [px[0], px[1], px[2], px[3]].map(|v| i32::from(255 - v));
        let nk = 255 - k;
        for v in [c, m, y] {
            out.push((nk - muldiv255(v, nk)).clamp(0, 255) as u8);
        }
    }
    out
}
