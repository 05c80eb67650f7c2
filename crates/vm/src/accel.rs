//! Choosing between hardware virtualization (KVM) and QEMU's software emulation (TCG).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM when the host can run an ordinary guest, TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// Resolves `Auto` for this host.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto if kvm_usable() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            other => other,
        }
    }
}

/// KVM runs a stock guest kernel only with hardware virtualization (VMX or SVM). Some hosts
/// expose `/dev/kvm` without it (PVM, a paravirtual KVM), where a normal kernel does not boot.
pub fn kvm_usable() -> bool {
    let device_ok = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    device_ok && cpu_has_hardware_virtualization()
}

pub fn cpu_has_hardware_virtualization() -> bool {
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else { return false };
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|flag| flag == "vmx" || flag == "svm"))
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!("unknown accelerator {other:?} (use auto, kvm or tcg)")),
        }
    }
}
