//! `mkrootfs OUTPUT [LAYER...]`: the library behind `vessel rootfs create`, without the
//! CLI (for benchmarks and debugging). No layer: an empty journaled 1 GiB filesystem.

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let Some(output) = args.next() else {
        eprintln!("usage: mkrootfs OUTPUT [LAYER...]");
        std::process::exit(2);
    };
    let layers: Vec<PathBuf> = args.collect();
    let opts = vessel_image::RootfsOptions::default();
    let r = if layers.is_empty() {
        vessel_image::create_empty(&output, 1 << 30, &opts)
    } else {
        vessel_image::create_rootfs(&output, &layers, &opts, &mut |_| {})
    };
    match r {
        Ok(s) => eprintln!(
            "{}: {} MiB, {} inodes",
            output.display(),
            s.size_bytes >> 20,
            s.inodes - s.free_inodes
        ),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            eprintln!("mkrootfs: {msg}");
            std::process::exit(1);
        }
    }
}
