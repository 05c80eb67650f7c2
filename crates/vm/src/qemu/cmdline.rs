//! The QEMU and guest kernel command lines. Pure functions, so every flag is unit-tested.
//!
//! Hard-won facts (QEMU 7.2 microvm, Linux 6.12), each checked on these hosts:
//! - `acpi=off,auto-kernel-cmdline=off`: we name virtio-mmio devices on the kernel command
//!   line ourselves; entries must come before any `--`, or they become init's arguments.
//! - `-cpu max,-erms` under TCG: with ERMS exposed, guest `rep movsb` copies are 4-5x slower.
//! - `-accel tcg,tb-size=64` keeps the translation cache at 64 MiB instead of 1 GiB.
//! - `noapictimer`, `tsc_early_khz=`, `lpj=`: skip timer calibration (~0.3 s under TCG, and
//!   it can hang calibrating against the PIT).
//! - `reboot=t` + `-no-reboot`: a guest reboot ends QEMU; a plain power-off only halts.
//! - `rcupdate.rcu_expedited=1`: moving a process into a cgroup and tearing namespaces down
//!   wait for RCU grace periods, which take several timer ticks; expedited ones do not
//!   (`vessel run --rm IMAGE true` ~26 ms faster under TCG).

use crate::{Accel, VmConfig, VmError};
use std::path::{Path, PathBuf};

/// First virtio-mmio transport of the microvm machine, and the size of each.
const MMIO_BASE: u64 = 0xfeb0_0000;
const MMIO_SIZE: u64 = 0x200;
/// Without ACPI the guest sees only the first IOAPIC, so microvm offers 8 transports on
/// GSIs 5..13: at most 8 virtio devices per VM.
pub const MMIO_TRANSPORTS: u64 = 8;
/// Devices every VM has (the agent's serial port and rng); the other transports are for a
/// NIC, disks and shares.
const FIXED_DEVICES: usize = 2;
const MMIO_IRQ_BASE: u64 = 5;
/// The fd number QEMU finds the NIC's TAP at (`-netdev tap,fd=3`); see `process.rs`.
pub const NIC_FD: i32 = 3;
/// The fd of a restored VM's saved state (`migrate-incoming fd:4`).
pub const STATE_FD: i32 = 4;
/// The fd of QEMU's end of its monitor (QMP) socket pair, for saves and restores.
pub const QMP_FD: i32 = 5;
/// The fd of a restored VM's saved RAM file (`mem-path=/proc/self/fd/6`).
pub const RAM_FD: i32 = 6;

/// How a VM begins (see `template.rs`).
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// A boot.
    Cold,
    /// A boot to be saved: guest RAM in the file `ram`, shared, so that the save leaves it
    /// out; a monitor on [`QMP_FD`].
    Template { ram: &'a Path },
    /// A saved VM restored: its RAM file, open on [`RAM_FD`], mapped copy-on-write; its
    /// state loaded from [`STATE_FD`] once the monitor on [`QMP_FD`] says so.
    Restore,
}

/// The guest's timing hints, from the host's TSC frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingHints {
    pub tsc_khz: u64,
}

impl TimingHints {
    /// Loops per jiffy for a kernel with HZ=250: the TSC ticks of one jiffy.
    pub fn lpj(&self) -> u64 {
        self.tsc_khz * 1000 / 250
    }
}

/// Virtio devices in the order they are put on the QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Device {
    /// A virtio-serial device with one port: the agent channel (vessel_proto::serial).
    AgentPort,
    Rng,
    Nic,
    Disk {
        index: usize,
    },
    Share {
        index: usize,
    },
}

/// Disks come before shares, so disks keep their names (`vda`, `vdb`, …) whatever is shared.
/// The NIC comes right after rng: it always sits in the same transport, and adding it
/// leaves the disks' order alone.
fn devices(config: &VmConfig) -> Vec<Device> {
    let mut devices = vec![Device::AgentPort, Device::Rng];
    devices.extend(config.nic.as_ref().map(|_| Device::Nic));
    devices.extend((0..config.disks.len()).map(|index| Device::Disk { index }));
    devices.extend((0..config.shares.len()).map(|index| Device::Share { index }));
    debug_assert_eq!(
        devices.len(),
        FIXED_DEVICES + nics(config) + config.disks.len() + config.shares.len()
    );
    devices
}

fn nics(config: &VmConfig) -> usize {
    usize::from(config.nic.is_some())
}

/// Every device of `config` needs a virtio-mmio transport of its own.
pub fn check_transports(config: &VmConfig) -> Result<(), VmError> {
    let needed = devices(config).len();
    let available = MMIO_TRANSPORTS as usize;
    if needed <= available {
        return Ok(());
    }
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let nic = if config.nic.is_some() { "a NIC, " } else { "" };
    Err(VmError::TooManyDevices {
        devices: format!(
            "the agent port, rng, {nic}{} and {}",
            plural(config.disks.len(), "disk"),
            plural(config.shares.len(), "share")
        ),
        needed,
        available,
        spare: available - FIXED_DEVICES - nics(config),
    })
}

/// QEMU fills virtio-mmio transports from the last one down: the n-th `-device` on the
/// command line sits in transport `MMIO_TRANSPORTS - 1 - n`.
fn transport(position: usize) -> (u64, u64) {
    let slot = MMIO_TRANSPORTS - 1 - position as u64;
    (MMIO_BASE + slot * MMIO_SIZE, MMIO_IRQ_BASE + slot)
}

/// The guest kernel command line.
pub fn guest_cmdline(config: &VmConfig, hints: TimingHints) -> String {
    let mut args: Vec<String> = [
        "console=ttyS0",
        "quiet",
        "reboot=t",
        "panic=-1",
        "noapictimer",
        "noreplace-smp",
        "tsc=reliable",
        "8250.nr_uarts=1",
        "rcupdate.rcu_expedited=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("tsc_early_khz={}", hints.tsc_khz));
    args.push(format!("lpj={}", hints.lpj()));
    // The kernel probes devices in the order listed, so disks become vda, vdb, ... in the
    // order the caller gave them.
    for (position, _) in devices(config).iter().enumerate() {
        let (address, irq) = transport(position);
        args.push(format!("virtio_mmio.device={MMIO_SIZE}@{address:#x}:{irq}"));
    }
    args.extend(config.kernel_args.iter().cloned());
    args.join(" ")
}

/// QEMU's arguments for `config`; `agent_socket` is where vessel-vsock serves the agent
/// port, `share_sockets` are the virtiofsd sockets of `config.shares`, in order.
pub fn qemu_args(
    config: &VmConfig,
    accel: Accel,
    start: Start<'_>,
    agent_socket: &Path,
    share_sockets: &[PathBuf],
    console: &Path,
    tsc_khz: u64,
) -> Vec<String> {
    debug_assert_eq!(share_sockets.len(), config.shares.len());
    let memory = format!("{}M", config.memory_mib);
    let mut args: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("vessel-{}", config.name)]);
    push(&["-M", "microvm,acpi=off,auto-kernel-cmdline=off,memory-backend=mem"]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        _ if config.cpus > 1 => {
            // Multi-threaded TCG on a small host boots slower than one translation thread.
            push(&["-accel", "tcg,tb-size=64,thread=single", "-cpu", "max,-erms"])
        }
        _ => push(&["-accel", "tcg,tb-size=64", "-cpu", "max,-erms"]),
    }
    push(&["-smp", &config.cpus.to_string(), "-m", &memory]);
    let backend = match start {
        // Shared memfd memory: vhost-user backends (virtiofsd) map guest memory from it.
        Start::Cold => format!("memory-backend-memfd,id=mem,size={memory},share=on"),
        Start::Template { ram } => format!(
            "memory-backend-file,id=mem,size={memory},mem-path={},share=on",
            escape_option(&ram.display().to_string())
        ),
        // share=off: the guest's writes stay in this VM, the file never changes.
        Start::Restore => format!(
            "memory-backend-file,id=mem,size={memory},mem-path=/proc/self/fd/{RAM_FD},share=off"
        ),
    };
    push(&["-object", &backend]);
    if !matches!(start, Start::Cold) {
        push(&[
            "-chardev",
            &format!("socket,id=qmp,fd={QMP_FD}"),
            "-mon",
            "chardev=qmp,mode=control",
        ]);
    }
    if matches!(start, Start::Restore) {
        push(&["-incoming", "defer"]);
    }
    push(&["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none"]);
    push(&["-serial", &format!("file:{}", console.display())]);
    push(&["-kernel", &config.kernel.display().to_string()]);
    push(&["-initrd", &config.initramfs.display().to_string()]);
    push(&["-append", &guest_cmdline(config, TimingHints { tsc_khz })]);
    for device in devices(config) {
        match device {
            Device::AgentPort => push(&[
                "-chardev",
                &format!(
                    "socket,id=agent,path={}",
                    escape_option(&agent_socket.display().to_string())
                ),
                "-device",
                // Port 0 is kept for a console, so the agent port is port 1.
                "virtio-serial-device,max_ports=2",
                "-device",
                &format!(
                    "virtserialport,id=agent-port,chardev=agent,name={}",
                    vessel_proto::serial::PORT_NAME
                ),
            ]),
            Device::Rng => push(&["-device", "virtio-rng-device"]),
            Device::Nic => {
                let mac = config.nic.as_ref().map(|nic| nic.mac_string()).unwrap_or_default();
                push(&[
                    // vhost=off: hosts often lack /dev/vhost-net; QEMU moves the packets.
                    "-netdev",
                    &format!("tap,id=net0,fd={NIC_FD},vhost=off"),
                    "-device",
                    &format!("virtio-net-device,netdev=net0,mac={mac}"),
                ])
            }
            Device::Disk { index } => {
                let disk = &config.disks[index];
                let read_only = if disk.read_only { "on" } else { "off" };
                // cache=writeback: guest reads come from the host's page cache, which every
                // container of an image shares (with cache=none each one went to the disk,
                // ~50 ms of a `run`); the guest's flushes still reach the disk.
                push(&[
                    "-drive",
                    &format!(
                        "id=disk{index},file={},format=raw,if=none,readonly={read_only},\
                         cache=writeback,aio=threads,discard=unmap",
                        escape_option(&disk.path.display().to_string())
                    ),
                    "-device",
                    &format!("virtio-blk-device,drive=disk{index}"),
                ])
            }
            Device::Share { index } => push(&[
                "-chardev",
                &format!(
                    "socket,id=fs{index},path={}",
                    escape_option(&share_sockets[index].display().to_string())
                ),
                "-device",
                // The tag is checked to be plain (crate::virtiofs::validate).
                &format!("vhost-user-fs-device,chardev=fs{index},tag={}", config.shares[index].tag),
            ]),
        }
    }
    // Deny the syscalls QEMU never needs (spawning, privilege changes, obsolete calls).
    push(&["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);
    args
}

/// QEMU option values use `,` as separator; a literal comma is written twice.
fn escape_option(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disk, Share};

    /// QEMU's arguments for a boot, with made-up paths.
    fn cold_args(config: &VmConfig, accel: Accel, share_sockets: &[PathBuf]) -> Vec<String> {
        let (agent, console) = (Path::new("/v"), Path::new("/c"));
        qemu_args(config, accel, Start::Cold, agent, share_sockets, console, 1)
    }

    fn config(disks: usize) -> VmConfig {
        config_with(disks, 0)
    }

    fn config_with(disks: usize, shares: usize) -> VmConfig {
        VmConfig {
            name: "t".into(),
            kernel: "/k".into(),
            initramfs: "/i".into(),
            kernel_args: vec!["vessel.debug=1".into()],
            cpus: 1,
            memory_mib: 256,
            disks: (0..disks)
                .map(|i| Disk { path: PathBuf::from(format!("/d{i},x")), read_only: i == 0 })
                .collect(),
            shares: (0..shares)
                .map(|i| Share {
                    tag: format!("share{i}"),
                    host_path: PathBuf::from(format!("/s{i}")),
                    read_only: i == 1,
                    owner: None,
                })
                .collect(),
            nic: None,
            run_dir: "/run/x".into(),
            accel: Accel::Tcg,
            echo_console: false,
            templates: None,
        }
    }

    #[test]
    fn timing_hints_follow_the_tsc() {
        let hints = TimingHints { tsc_khz: 2_600_000 };
        assert_eq!(hints.lpj(), 10_400_000);
        let line = guest_cmdline(&config(0), hints);
        assert!(line.contains("tsc_early_khz=2600000 lpj=10400000"), "{line}");
    }

    #[test]
    fn rcu_grace_periods_are_expedited() {
        let line = guest_cmdline(&config(0), TimingHints { tsc_khz: 1 });
        assert!(line.split(' ').any(|arg| arg == "rcupdate.rcu_expedited=1"), "{line}");
    }

    #[test]
    fn every_device_has_one_mmio_entry_before_extra_args() {
        let line = guest_cmdline(&config(2), TimingHints { tsc_khz: 1_000_000 });
        let entries: Vec<&str> =
            line.split(' ').filter(|a| a.starts_with("virtio_mmio.device=")).collect();
        assert_eq!(entries.len(), 4);
        // The first device on the QEMU command line sits in the last transport.
        assert!(entries.contains(&"virtio_mmio.device=512@0xfeb00e00:12"), "{entries:?}");
        assert!(line.ends_with("vessel.debug=1"));
        assert!(!line.contains(" -- "));
    }

    #[test]
    fn disks_keep_their_order_and_mode() {
        let args = cold_args(&config(2), Accel::Tcg, &[]);
        let drives: Vec<&String> = args.iter().filter(|a| a.starts_with("id=disk")).collect();
        assert!(
            drives[0].starts_with("id=disk0,file=/d0,,x,") && drives[0].contains("readonly=on")
        );
        assert!(drives[1].contains("readonly=off"));
    }

    #[test]
    fn tcg_hides_erms_and_kvm_uses_the_host_cpu() {
        let tcg = cold_args(&config(0), Accel::Tcg, &[]);
        assert!(tcg.windows(2).any(|w| w[0] == "-cpu" && w[1] == "max,-erms"));
        let kvm = cold_args(&config(0), Accel::Kvm, &[]);
        assert!(kvm.windows(2).any(|w| w[0] == "-accel" && w[1] == "kvm"));
    }

    #[test]
    fn shares_follow_disks_each_with_a_vhost_user_fs_device() {
        let config = config_with(2, 2);
        let sockets = [PathBuf::from("/run/x/virtiofs-0.sock"), PathBuf::from("/r,un/fs1.sock")];
        let args = cold_args(&config, Accel::Tcg, &sockets);
        let devices: Vec<&String> =
            args.windows(2).filter(|w| w[0] == "-device").map(|w| &w[1]).collect();
        assert_eq!(
            devices,
            [
                "virtio-serial-device,max_ports=2",
                "virtserialport,id=agent-port,chardev=agent,name=vessel.agent",
                "virtio-rng-device",
                "virtio-blk-device,drive=disk0",
                "virtio-blk-device,drive=disk1",
                "vhost-user-fs-device,chardev=fs0,tag=share0",
                "vhost-user-fs-device,chardev=fs1,tag=share1",
            ]
        );
        assert!(args.contains(&"socket,id=fs0,path=/run/x/virtiofs-0.sock".to_string()));
        assert!(args.contains(&"socket,id=fs1,path=/r,,un/fs1.sock".to_string()));
        // Guest memory is a shared memfd, which vhost-user-fs needs.
        assert!(args
            .iter()
            .any(|a| a.starts_with("memory-backend-memfd,") && a.ends_with("share=on")));
        let line = guest_cmdline(&config, TimingHints { tsc_khz: 1 });
        assert_eq!(line.matches("virtio_mmio.device=").count(), 6, "{line}");
        // The sixth device sits in the third transport.
        assert!(line.contains("virtio_mmio.device=512@0xfeb00400:7"), "{line}");
    }

    #[test]
    fn transports_are_counted_over_disks_and_shares() {
        assert!(check_transports(&config_with(6, 0)).is_ok());
        assert!(check_transports(&config_with(3, 3)).is_ok());
        let err = check_transports(&config_with(4, 3)).unwrap_err().to_string();
        assert_eq!(
            err,
            "the agent port, rng, 4 disks and 3 shares need 9 virtio-mmio transports, a microvm has 8 \
             (at most 6 disks and shares together)"
        );
        let err = check_transports(&config_with(0, 7)).unwrap_err().to_string();
        assert!(err.starts_with("the agent port, rng, 0 disks and 7 shares need 9"), "{err}");
    }

    fn with_nic(mut config: VmConfig) -> VmConfig {
        let fd = std::fs::File::open("/dev/null").unwrap();
        config.nic = Some(crate::Nic::new(fd.into(), [0x02, 0x76, 0x0a, 0xd5, 0xfa, 0x02]));
        config
    }

    #[test]
    fn the_nic_follows_rng_and_disks_keep_their_order() {
        let config = with_nic(config_with(2, 1));
        let sockets = [PathBuf::from("/run/x/virtiofs-0.sock")];
        let args = cold_args(&config, Accel::Tcg, &sockets);
        let devices: Vec<&String> =
            args.windows(2).filter(|w| w[0] == "-device").map(|w| &w[1]).collect();
        assert_eq!(
            devices,
            [
                "virtio-serial-device,max_ports=2",
                "virtserialport,id=agent-port,chardev=agent,name=vessel.agent",
                "virtio-rng-device",
                "virtio-net-device,netdev=net0,mac=02:76:0a:d5:fa:02",
                "virtio-blk-device,drive=disk0",
                "virtio-blk-device,drive=disk1",
                "vhost-user-fs-device,chardev=fs0,tag=share0",
            ]
        );
        assert!(args.windows(2).any(|w| w[0] == "-netdev" && w[1] == "tap,id=net0,fd=3,vhost=off"));
        let line = guest_cmdline(&config, TimingHints { tsc_khz: 1 });
        let entries: Vec<&str> =
            line.split(' ').filter(|a| a.starts_with("virtio_mmio.device=")).collect();
        assert_eq!(entries.len(), 6, "{line}");
        // The third device: always the same transport for the NIC.
        assert_eq!(entries[2], "virtio_mmio.device=512@0xfeb00a00:10");
    }

    #[test]
    fn no_nic_no_netdev() {
        let args = cold_args(&config(1), Accel::Tcg, &[]);
        assert!(!args.iter().any(|a| a == "-netdev" || a.contains("virtio-net")));
    }

    #[test]
    fn the_nic_takes_a_transport() {
        assert!(check_transports(&with_nic(config_with(3, 2))).is_ok());
        let err = check_transports(&with_nic(config_with(3, 3))).unwrap_err().to_string();
        assert_eq!(
            err,
            "the agent port, rng, a NIC, 3 disks and 3 shares need 9 virtio-mmio transports, a microvm \
             has 8 (at most 5 disks and shares together)"
        );
    }

    #[test]
    fn templates_share_their_ram_and_restores_map_it_privately() {
        let config = with_nic(config(2));
        let ram = Path::new("/t/ram");
        let args =
            |start| qemu_args(&config, Accel::Tcg, start, Path::new("/v"), &[], Path::new("/c"), 1);
        let template = args(Start::Template { ram });
        assert!(template.contains(
            &"memory-backend-file,id=mem,size=256M,mem-path=/t/ram,share=on".to_string()
        ));
        assert!(template.contains(&"socket,id=qmp,fd=5".to_string()));
        assert!(!template.contains(&"-incoming".to_string()));
        let restore = args(Start::Restore);
        assert!(restore.contains(
            &"memory-backend-file,id=mem,size=256M,mem-path=/proc/self/fd/6,share=off".to_string()
        ));
        assert!(restore.windows(2).any(|w| w[0] == "-incoming" && w[1] == "defer"));
        assert!(restore
            .windows(2)
            .any(|w| w[0] == "-netdev" && w[1] == "tap,id=net0,fd=3,vhost=off"));
        // Apart from memory and monitor, a restore is its template.
        let devices = |args: &[String]| -> Vec<String> {
            args.windows(2).filter(|w| w[0] == "-device").map(|w| w[1].clone()).collect()
        };
        assert_eq!(devices(&template), devices(&restore));
        let cold = args(Start::Cold);
        assert!(!cold.iter().any(|a| a.contains("qmp") || a == "-incoming"));
    }
}
