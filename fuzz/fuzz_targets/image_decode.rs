//! Image bytes → RGB through the library's decoder with the server's default pixel limit:
//! every format it recognises (JPEG via libjpeg-turbo, PNG, GIF, BMP, TIFF, WebP).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(img) = dsvl::image::decode(data, "fuzz", dsvl::image::DEFAULT_MAX_PIXELS) else {
        return;
    };
    assert_eq!(
        img.data.len(),
        img.width as usize * img.height as usize * 3,
        "decoded buffer matches its dimensions"
    );
});
