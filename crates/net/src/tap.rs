//! TAP devices for VMs. A TAP is opened non-persistent: it exists while some process holds
//! its file descriptor, so when the VMM (and every copy of the fd) is gone, the kernel
//! deletes the device and takes it off its bridge. A killed supervisor therefore leaves no
//! TAP behind, with no cleanup code to run.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = 15;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Frames carry a virtio-net header, so the guest can hand checksums and segmentation to
/// the host (QEMU sees the flag and uses it).
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

nix::ioctl_write_int!(tun_set_iff, b'T', 202);

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("interface name {0:?} is empty, longer than 15 bytes or not plain ASCII")]
    BadName(String),
    #[error("cannot open /dev/net/tun (is the tun module loaded?)")]
    OpenTun(#[source] std::io::Error),
    #[error("cannot create TAP device {name}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// An open TAP device; dropping the last copy of its fd deletes it.
#[derive(Debug)]
pub struct Tap {
    name: String,
    fd: OwnedFd,
}

impl Tap {
    /// Creates the TAP `name` (which must not exist yet) with a virtio-net header. The fd is
    /// close-on-exec; hand a VMM a copy of its own ([`Tap::fd`]).
    pub fn create(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut request = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        for (slot, byte) in request.name.iter_mut().zip(name.bytes()) {
            *slot = byte as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads a `struct ifreq`, which `IfReq` lays out (40 bytes, name
        // NUL-terminated since it is at most 15 bytes); the kernel writes nothing back we
        // rely on and the pointer outlives the call.
        let result = unsafe { tun_set_iff(file.as_raw_fd(), &mut request as *mut IfReq as u64) };
        result.map_err(|errno| TapError::Create {
            name: name.to_string(),
            source: std::io::Error::from(errno),
        })?;
        Ok(Tap { name: name.to_string(), fd: file.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_names_the_kernel_would_cut_or_reject() {
        for name in ["", "a-name-longer-than-15", "bad/name", "sp ace"] {
            assert!(matches!(Tap::create(name), Err(TapError::BadName(_))), "{name:?}");
        }
    }
}
