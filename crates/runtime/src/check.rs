//! `vessel system check`: what this host has and lacks to run vessel, and how to fix each.

use crate::Host;
use serde::Serialize;
use vessel_vm::qemu::find_program;

#[derive(Debug, Clone, Serialize)]
pub struct CheckItem {
    pub name: &'static str,
    pub ok: bool,
    /// What was found (a path, a mode) or what is wrong.
    pub detail: String,
    /// The command that fixes it, when not ok.
    pub fix: Option<String>,
}

impl CheckItem {
    fn new(name: &'static str, result: Result<String, (String, String)>) -> CheckItem {
        match result {
            Ok(detail) => CheckItem { name, ok: true, detail, fix: None },
            Err((detail, fix)) => CheckItem { name, ok: false, detail, fix: Some(fix) },
        }
    }
}

/// Every check, in the order a user should fix them. Nothing here changes the host.
pub fn run(host: &Host) -> Vec<CheckItem> {
    let program = |env: &str, name: &str, fix: &str| {
        find_program(env, name, "")
            .map(|p| p.display().to_string())
            .map_err(|_| (format!("{name} not found in PATH"), fix.to_string()))
    };
    vec![
        CheckItem::new(
            "qemu",
            program("VESSEL_QEMU", "qemu-system-x86_64", "apt-get install qemu-system-x86"),
        ),
        CheckItem::new(
            "agent channel",
            program("VESSEL_VSOCK", vessel_vm::qemu::VSOCK_DEVICE, "scripts/build --install"),
        ),
        CheckItem::new(
            "guest kernel",
            host.kernel().map(|p| p.display().to_string()).map_err(|err| {
                (err.to_string(), "apt-get install linux-source-6.12 && kernel/build".to_string())
            }),
        ),
        CheckItem::new(
            "vessel-init",
            host.init()
                .map(|p| p.display().to_string())
                .map_err(|err| (err.to_string(), "scripts/build".to_string())),
        ),
        CheckItem::new(
            "virtiofsd",
            vessel_vm::virtiofs::find_virtiofsd(&host.cache)
                .map(|p| format!("{} (bind mounts)", p.display()))
                .map_err(|err| (err.to_string(), "scripts/deps".to_string())),
        ),
        CheckItem::new("accelerator", accel()),
        CheckItem::new(
            "/dev/net/tun",
            if std::path::Path::new("/dev/net/tun").exists() {
                Ok("present (container networking)".to_string())
            } else {
                Err((
                    "missing: containers cannot have network interfaces".to_string(),
                    "mkdir -p /dev/net && mknod /dev/net/tun c 10 200".to_string(),
                ))
            },
        ),
        CheckItem::new(
            "nft",
            find_program("", "nft", "")
                .ok()
                .or_else(|| Some(std::path::PathBuf::from("/usr/sbin/nft")).filter(|p| p.is_file()))
                .map(|p| format!("{} (the networks' egress rules)", p.display()))
                .ok_or_else(|| {
                    (
                        "nft not found: networks cannot be created".to_string(),
                        "apt-get install nftables".to_string(),
                    )
                }),
        ),
    ]
}

fn accel() -> Result<String, (String, String)> {
    if vessel_vm::accel::kvm_usable() {
        return Ok("kvm (hardware virtualization)".to_string());
    }
    let why = if !std::path::Path::new("/dev/kvm").exists() {
        "no /dev/kvm"
    } else if !vessel_vm::accel::cpu_has_hardware_virtualization() {
        "/dev/kvm without VMX/SVM (a paravirtual KVM cannot boot a stock guest)"
    } else {
        "/dev/kvm not accessible"
    };
    // TCG works everywhere: this is information, not a failure.
    Ok(format!("tcg (software emulation; {why})"))
}
