//! Arbitrary bytes as an archive from a guest, extracted on the host both ways (into a
//! directory, and as a new destination): it must work or fail with an error, never panic,
//! and never leave anything beside its destination.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vessel_archive::{extract, ExtractOptions};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).expect("destination");
    let _ = extract(data, &dest, &ExtractOptions::default());
    let _ = extract(data, &dir.path().join("new"), &ExtractOptions::default());
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let name = entry.expect("entry").file_name();
        assert!(name == "dest" || name == "new", "{name:?} written beside the destination");
    }
});
