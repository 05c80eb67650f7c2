//! Arbitrary bytes as a layer (any compression): applying it must either work or fail
//! with an error, never panic; a finished image must read back.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vessel_ext4::{BuildOptions, Builder};

static IMAGE: OnceLock<tempfile::NamedTempFile> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let image = IMAGE.get_or_init(|| tempfile::NamedTempFile::new().expect("temp file"));
    let file = image.as_file().try_clone().expect("clone");
    // A fixed small size keeps each run cheap and exercises the "filesystem full" paths.
    let opts = BuildOptions { size: Some(16 << 20), uuid: Some([1; 16]), timestamp: Some(0), ..Default::default() };
    let Ok(mut b) = Builder::new(file, opts) else { return };
    let Ok((_, mut r)) = vessel_image::layer::compression::decoder(data) else { return };
    if vessel_image::layer::apply_layer(&mut b, &mut r, "fuzz", 1, &mut |_| {}).is_err() {
        return;
    }
    if b.finish().is_ok() {
        let reader = vessel_ext4::reader::Reader::open(image.path()).expect("finished image opens");
        reader.walk().expect("finished image reads back");
    }
});
