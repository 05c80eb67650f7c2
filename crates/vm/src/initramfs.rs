//! Writes the VM's initramfs: a newc cpio archive holding `/init`, `/dev` and `/dev/console`.
//! Built at run time from the init binary, so no archive is ever stale.

use std::io::{self, Write};

/// Device numbers of `/dev/console`: without this node the kernel cannot give PID 1 a console.
const CONSOLE_MAJOR: u32 = 5;
const CONSOLE_MINOR: u32 = 1;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Writes an archive whose `/init` holds `init`.
pub fn write(out: &mut impl Write, init: &[u8]) -> io::Result<()> {
    let mut archive = Archive { out, next_ino: 1 };
    archive.entry("dev", S_IFDIR | 0o755, 2, (0, 0), &[])?;
    archive.entry("dev/console", S_IFCHR | 0o600, 1, (CONSOLE_MAJOR, CONSOLE_MINOR), &[])?;
    archive.entry("init", S_IFREG | 0o755, 1, (0, 0), init)?;
    archive.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
    Ok(())
}

struct Archive<'a, W: Write> {
    out: &'a mut W,
    next_ino: u32,
}

impl<W: Write> Archive<'_, W> {
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let name_size = name.len() as u32 + 1;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + name_size as usize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    /// newc aligns both the header+name and the data to 4 bytes.
    fn pad(&mut self, len: usize) -> io::Result<()> {
        let padding = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..padding])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_lists_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("initramfs.cpio");
        let mut bytes = Vec::new();
        write(&mut bytes, b"#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(bytes.len() % 4, 0);
        std::fs::write(&path, &bytes).unwrap();
        let Ok(output) =
            std::process::Command::new("cpio").args(["-itv", "-F"]).arg(&path).output()
        else {
            panic!("cpio is needed for this test (apt-get install cpio)");
        };
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let listing = String::from_utf8_lossy(&output.stdout);
        assert!(listing.contains("dev/console"), "{listing}");
        assert!(listing.lines().any(|l| l.starts_with("crw-------") && l.contains("5,")));
        assert!(listing.lines().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")));
    }
}
