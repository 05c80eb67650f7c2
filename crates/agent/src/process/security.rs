//! What a container process may do: its capabilities and resource limits. Requests are
//! checked before the fork, so a bad one is an error of the call; the child only applies.

use nix::errno::Errno;
use nix::sys::resource::Resource;
use vessel_proto::agent::{Capabilities, Rlimit};

/// Capability names, by number (linux/capability.h).
const CAPABILITIES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// A set of capabilities, one bit per number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The set a request asks for: docker's default when it names none.
    pub fn from_request(requested: Option<&Capabilities>) -> Result<CapSet, String> {
        let Some(requested) = requested else {
            return vessel_proto::DEFAULT_CAPABILITIES
                .iter()
                .try_fold(CapSet(0), |set, name| set.with(name));
        };
        requested.names.iter().try_fold(CapSet(0), |set, name| set.with(name))
    }

    fn with(self, name: &str) -> Result<CapSet, String> {
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
        if bare == "all" {
            return Ok(CapSet(u64::MAX >> (64 - CAPABILITIES.len())));
        }
        let number = CAPABILITIES
            .iter()
            .position(|known| *known == bare)
            .ok_or_else(|| format!("unknown capability {name:?}"))?;
        Ok(CapSet(self.0 | 1 << number))
    }

    fn contains(self, number: u32) -> bool {
        number < 64 && self.0 & (1 << number) != 0
    }
}

/// The highest capability number the running kernel knows.
pub fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(CAPABILITIES.len() as u32 - 1)
}

/// Drops every capability outside `keep` from the bounding set, which no later exec can
/// regain. Needs CAP_SETPCAP, so it comes before the switch of user.
pub fn limit_bounding_set(keep: CapSet, last: u32) -> Result<(), Errno> {
    for number in (0..=last).filter(|number| !keep.contains(*number)) {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
        let result =
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(number), 0, 0, 0) };
        Errno::result(result)?;
    }
    Ok(())
}

/// Sets the permitted and effective sets to `set`, and empties the inheritable and ambient
/// ones (as docker does since CVE-2022-24769), so exec grants nothing beyond the bounding
/// set. For a user other than root, pass an empty set: exec would drop the rest anyway.
pub fn set_capabilities(set: CapSet) -> Result<(), Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: VERSION_3, pid: 0 };
    let (low, high) = (set.0 as u32, (set.0 >> 32) as u32);
    let data = [
        Data { effective: low, permitted: low, inheritable: 0 },
        Data { effective: high, permitted: high, inheritable: 0 },
    ];
    // SAFETY: capset version 3 reads one header and two data structs, both alive and
    // laid out as the kernel's for the whole call.
    let result =
        unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    Errno::result(result)?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let result =
        unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    Errno::result(result).map(drop)
}

/// One resource limit, checked.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    resource: Resource,
    soft: u64,
    hard: u64,
}

pub fn parse_rlimits(requested: &[Rlimit]) -> Result<Vec<Limit>, String> {
    requested
        .iter()
        .map(|limit| {
            let lower = limit.r#type.to_ascii_lowercase();
            let bare = lower.strip_prefix("rlimit_").unwrap_or(&lower);
            let resource = match bare {
                "as" => Resource::RLIMIT_AS,
                "core" => Resource::RLIMIT_CORE,
                "cpu" => Resource::RLIMIT_CPU,
                "data" => Resource::RLIMIT_DATA,
                "fsize" => Resource::RLIMIT_FSIZE,
                "locks" => Resource::RLIMIT_LOCKS,
                "memlock" => Resource::RLIMIT_MEMLOCK,
                "msgqueue" => Resource::RLIMIT_MSGQUEUE,
                "nice" => Resource::RLIMIT_NICE,
                "nofile" => Resource::RLIMIT_NOFILE,
                "nproc" => Resource::RLIMIT_NPROC,
                "rss" => Resource::RLIMIT_RSS,
                "rtprio" => Resource::RLIMIT_RTPRIO,
                "rttime" => Resource::RLIMIT_RTTIME,
                "sigpending" => Resource::RLIMIT_SIGPENDING,
                "stack" => Resource::RLIMIT_STACK,
                _ => return Err(format!("unknown resource limit {:?}", limit.r#type)),
            };
            if limit.soft > limit.hard {
                return Err(format!(
                    "soft limit {} of {} is above its hard limit {}",
                    limit.soft, limit.r#type, limit.hard
                ));
            }
            Ok(Limit { resource, soft: limit.soft, hard: limit.hard })
        })
        .collect()
}

/// Sets the limits. Raising a hard limit needs CAP_SYS_RESOURCE: before the user switch.
pub fn apply_rlimits(limits: &[Limit]) -> Result<(), Errno> {
    for limit in limits {
        nix::sys::resource::setrlimit(limit.resource, limit.soft, limit.hard)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_s_default_set_is_the_default() {
        assert_eq!(CapSet::from_request(None).unwrap(), CapSet(0xa804_25fb));
        assert_eq!(CapSet::from_request(Some(&Capabilities::default())).unwrap(), CapSet(0));
        let named = Capabilities { names: vec!["CAP_NET_ADMIN".into(), "chown".into()] };
        assert_eq!(CapSet::from_request(Some(&named)).unwrap(), CapSet(0x1001));
        let all = Capabilities { names: vec!["ALL".into()] };
        assert_eq!(CapSet::from_request(Some(&all)).unwrap(), CapSet((1 << 41) - 1));
        let bad = Capabilities { names: vec!["CAP_FLY".into()] };
        assert!(CapSet::from_request(Some(&bad)).unwrap_err().contains("CAP_FLY"));
    }

    #[test]
    fn rlimits_take_either_spelling_and_must_be_ordered() {
        let limit = |name: &str, soft, hard| Rlimit { r#type: name.into(), soft, hard };
        let parsed = parse_rlimits(&[limit("RLIMIT_NOFILE", 10, 20), limit("nproc", 1, 1)]);
        assert_eq!(parsed.unwrap().len(), 2);
        assert!(parse_rlimits(&[limit("nofile", 20, 10)]).is_err());
        assert!(parse_rlimits(&[limit("RLIMIT_WINGS", 1, 1)]).is_err());
    }
}
