//! Writing a complete root filesystem image from layer files, atomically: the image is
//! built in an unnamed temporary file in the output's directory and given its name only
//! when complete, so a failed or interrupted run never leaves a partial OUTPUT.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tempfile::NamedTempFile;
use vessel_ext4::{BuildOptions, Builder, Ext4Error, Summary};

use crate::layer::{self, LayerError};

/// The directory of the filesystem root that holds the image's tree when
/// [`RootfsOptions::nested`] is set.
pub const NESTED_ROOT: &str = "rootfs";

#[derive(Debug, Clone, Default)]
pub struct RootfsOptions {
    /// Image size in bytes; `None` sizes it from the content, with headroom.
    pub size: Option<u64>,
    /// Fixed filesystem UUID (for reproducible images); random when `None`.
    pub uuid: Option<[u8; 16]>,
    /// Superblock timestamps; now when `None`.
    pub timestamp: Option<i64>,
    /// Write the image's tree into the directory [`NESTED_ROOT`] of the filesystem, which
    /// takes the image root's metadata (mode, owner, times, xattrs), rather than into the
    /// filesystem root. The `lost+found` every ext4 root has (e2fsck wants it) is then
    /// beside the image, not in it. Snapshots are written so; `vessel rootfs create` not.
    pub nested: bool,
}

/// Progress reports, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Inside layer `index` (0-based) of `count`: compressed bytes read of `total`.
    Layer { index: usize, count: usize, name: &'a str, read: u64, total: u64, entries: u64 },
    /// Writing inode tables, directories and bitmaps.
    Finishing,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("cannot create the image file in {dir}")]
    Create {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot move the finished image to {path}")]
    Persist {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the filesystem image")]
    Ext4(#[from] Ext4Error),
}

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The image under construction. Preferably an unnamed `O_TMPFILE` file, which vanishes
/// by itself if the process dies; a named `.OUTPUT.XXXX.partial` file where the
/// filesystem has no `O_TMPFILE`.
enum Temp {
    Anonymous { file: File, dir: PathBuf },
    Named(NamedTempFile),
}

fn out_dir(output: &Path) -> PathBuf {
    match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_beside(output: &Path) -> Result<Temp, RootfsError> {
    use rustix::fs::{Mode, OFlags};
    let dir = out_dir(output);
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    if let Ok(fd) = rustix::fs::open(&dir, flags, Mode::from_raw_mode(0o644)) {
        return Ok(Temp::Anonymous { file: File::from(fd), dir });
    }
    let base = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{base}."))
        .suffix(".partial")
        .tempfile_in(&dir)
        .map(Temp::Named)
        .map_err(|source| RootfsError::Create { dir, source })
}

impl Temp {
    fn file(&self) -> Result<File, RootfsError> {
        let (f, dir) = match self {
            Temp::Anonymous { file, dir } => (file, dir.clone()),
            Temp::Named(t) => (t.as_file(), t.path().to_path_buf()),
        };
        f.try_clone().map_err(|source| RootfsError::Create { dir, source })
    }

    /// Gives the finished image its name, replacing any previous OUTPUT atomically.
    fn persist(self, output: &Path) -> Result<(), RootfsError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |source| RootfsError::Persist { path: output.to_path_buf(), source };
        match self {
            Temp::Anonymous { file, dir } => {
                use std::os::fd::AsRawFd;
                // linkat(2) cannot replace a file: link under a unique name, then rename.
                let base = output
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp_name = dir.join(format!(".{base}.{}.partial", std::process::id()));
                let _ = std::fs::remove_file(&tmp_name);
                let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    proc_path.as_str(),
                    rustix::fs::CWD,
                    &tmp_name,
                    rustix::fs::AtFlags::SYMLINK_FOLLOW,
                )
                .map_err(|e| err(e.into()))?;
                if let Err(e) = std::fs::rename(&tmp_name, output) {
                    let _ = std::fs::remove_file(&tmp_name);
                    return Err(err(e));
                }
                Ok(())
            }
            Temp::Named(tmp) => {
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o644))
                    .map_err(err)?;
                tmp.persist(output).map_err(|e| err(e.error))?;
                Ok(())
            }
        }
    }
}

fn builder_for(tmp: &Temp, opts: BuildOptions) -> Result<Builder, RootfsError> {
    Ok(Builder::new(tmp.file()?, opts)?)
}

/// Builds `output` from `layers` (applied in order; gzip, zstd or uncompressed).
pub fn create_rootfs(
    output: &Path,
    layers: &[PathBuf],
    opts: &RootfsOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Summary, RootfsError> {
    let tmp = temp_beside(output)?;
    let mut b = builder_for(
        &tmp,
        BuildOptions {
            size: opts.size,
            journal: false,
            uuid: opts.uuid,
            timestamp: opts.timestamp,
        },
    )?;
    for (index, path) in layers.iter().enumerate() {
        let name = path.display().to_string();
        let open = |source| LayerError::Open { layer: name.clone(), source };
        let file = File::open(path).map_err(open)?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let count = Arc::new(AtomicU64::new(0));
        let counting = Counting { inner: file, count: count.clone() };
        let (_, mut r) = layer::compression::threaded_decoder(counting)
            .map_err(|source| LayerError::Corrupt { layer: name.clone(), entry: None, source })?;
        let n = layers.len();
        let mut report = |s: &layer::LayerStats| {
            progress(Progress::Layer {
                index,
                count: n,
                name: &name,
                read: count.load(Ordering::Relaxed),
                total,
                entries: s.entries,
            })
        };
        layer::apply_layer(&mut b, &mut r, &name, index as u32 + 1, &mut report)?;
    }
    if opts.nested {
        b.nest_root(NESTED_ROOT.as_bytes())?;
    }
    progress(Progress::Finishing);
    let summary = b.finish()?;
    tmp.persist(output)?;
    Ok(summary)
}

/// Writes an empty, journaled, writable filesystem of `size` bytes to `output`.
pub fn create_empty(
    output: &Path,
    size: u64,
    opts: &RootfsOptions,
) -> Result<Summary, RootfsError> {
    create_with_dirs(output, size, opts, &[])
}

/// Writes a journaled, writable filesystem of `size` bytes to `output`, holding only the
/// empty directories `dirs` (0755, owned by root) in its root. Made here, they cost a guest
/// nothing; made by a guest, each is a journaled change at its first start.
pub fn create_with_dirs(
    output: &Path,
    size: u64,
    opts: &RootfsOptions,
    dirs: &[&str],
) -> Result<Summary, RootfsError> {
    let tmp = temp_beside(output)?;
    let mut b = builder_for(
        &tmp,
        BuildOptions {
            size: Some(size),
            journal: true,
            uuid: opts.uuid,
            timestamp: opts.timestamp,
        },
    )?;
    for dir in dirs {
        b.add_root_dir(dir.as_bytes())?;
    }
    let summary = b.finish()?;
    tmp.persist(output)?;
    Ok(summary)
}
