//! `vessel rootfs create`: an ext4 root filesystem image from OCI layer tarballs, or an
//! empty journaled filesystem when no layer is given. A thin adapter over
//! `vessel_image::rootfs`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use vessel_image::{create_empty, create_rootfs, Progress, RootfsOptions};

/// Size of an empty writable filesystem when `--size` is not given (sparse on disk).
const DEFAULT_EMPTY_SIZE: u64 = 1 << 30;

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Image size, in bytes or with a suffix (512M, 4G); sized from the content when
    /// omitted (1G for an empty filesystem)
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Layer tarball (gzip, zstd or uncompressed), applied in the order given
    #[arg(long = "layer", value_name = "FILE")]
    pub layers: Vec<PathBuf>,
    /// Image file to write (replaced only once complete)
    pub output: PathBuf,
}

/// Parses `1234`, `64K`, `512M`, `4G`, `1T` (binary units; `KiB` and `MB` spellings too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?} (try 512M or 4G)"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("invalid size unit in {s:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("size {s:?} is too large"))
}

/// A one-line progress display on stderr, only when stderr is a terminal.
struct Bar {
    enabled: bool,
    last: Instant,
    shown: bool,
}

impl Bar {
    fn update(&mut self, p: Progress<'_>) {
        let finishing = matches!(p, Progress::Finishing);
        if !self.enabled
            || (!finishing && self.shown && self.last.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let line = match p {
            Progress::Layer { index, count, read, total, entries, .. } => {
                let pct = read.saturating_mul(100).checked_div(total).unwrap_or(0);
                format!("layer {}/{count}: {pct:>3}% ({entries} entries)", index + 1)
            }
            Progress::Finishing => "writing metadata".to_string(),
        };
        let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
    }

    fn done(&self) {
        if self.enabled && self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

pub fn create(args: CreateArgs) -> anyhow::Result<()> {
    let opts = RootfsOptions { size: args.size, ..Default::default() };
    let out = args.output.display().to_string();
    if args.layers.is_empty() {
        let size = args.size.unwrap_or(DEFAULT_EMPTY_SIZE);
        create_empty(&args.output, size, &opts)
            .with_context(|| format!("cannot create filesystem {out}"))?;
        return Ok(());
    }
    let mut bar =
        Bar { enabled: std::io::stderr().is_terminal(), last: Instant::now(), shown: false };
    let result = create_rootfs(&args.output, &args.layers, &opts, &mut |p| bar.update(p));
    bar.done();
    result.with_context(|| format!("cannot create root filesystem {out}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
