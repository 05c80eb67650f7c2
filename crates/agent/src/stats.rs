//! A container's resource use, read from its cgroup (v2) files.

use std::collections::HashMap;
use std::path::Path;
use tonic::Status;
use vessel_proto::agent::StatsResponse;

pub fn read(cgroup: &Path) -> Result<StatsResponse, Status> {
    if !cgroup.is_dir() {
        return Err(Status::internal(format!("cgroup {} is gone", cgroup.display())));
    }
    ensure_pids_controller(cgroup);
    let cpu = keyed(&cgroup.join("cpu.stat"));
    let memory = keyed(&cgroup.join("memory.stat"));
    let (block_read_bytes, block_write_bytes) = io_totals(&cgroup.join("io.stat"));
    let uptime = crate::server::uptime().as_micros();
    Ok(StatsResponse {
        cpu_usage_usec: cpu.get("usage_usec").copied().unwrap_or(0),
        cpu_user_usec: cpu.get("user_usec").copied().unwrap_or(0),
        cpu_system_usec: cpu.get("system_usec").copied().unwrap_or(0),
        memory_usage_bytes: single(&cgroup.join("memory.current")).unwrap_or(0),
        // "max" reads as no number: no limit.
        memory_limit_bytes: single(&cgroup.join("memory.max")).unwrap_or(0),
        memory_inactive_file_bytes: memory.get("inactive_file").copied().unwrap_or(0),
        pids_current: single(&cgroup.join("pids.current")).unwrap_or(0),
        block_read_bytes,
        block_write_bytes,
        uptime_usec: u64::try_from(uptime).unwrap_or(u64::MAX),
    })
}

/// pids.current exists only where the parent delegates the pids controller; delegate it
/// if the container was made without it.
fn ensure_pids_controller(cgroup: &Path) {
    if cgroup.join("pids.current").exists() {
        return;
    }
    if let Some(parent) = cgroup.parent() {
        let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+pids");
    }
}

/// A file of one number.
fn single(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A file of `key value` lines (cpu.stat, memory.stat).
fn keyed(path: &Path) -> HashMap<String, u64> {
    parse_keyed(&std::fs::read_to_string(path).unwrap_or_default())
}

fn parse_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Bytes read and written, summed over the devices of io.stat
/// (`254:0 rbytes=… wbytes=… rios=… …`).
fn io_totals(path: &Path) -> (u64, u64) {
    parse_io(&std::fs::read_to_string(path).unwrap_or_default())
}

fn parse_io(text: &str) -> (u64, u64) {
    let (mut read, mut written) = (0u64, 0u64);
    for field in text.lines().flat_map(|line| line.split_whitespace().skip(1)) {
        let Some((key, value)) = field.split_once('=') else { continue };
        let Ok(value) = value.parse::<u64>() else { continue };
        match key {
            "rbytes" => read = read.saturating_add(value),
            "wbytes" => written = written.saturating_add(value),
            _ => {}
        }
    }
    (read, written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_is_summed_over_devices() {
        let text = "254:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n\
                    254:16 rbytes=100 wbytes=8192 rios=2 wios=2 dbytes=0 dios=0\n";
        assert_eq!(parse_io(text), (4196, 8192));
        assert_eq!(parse_io(""), (0, 0));
    }

    #[test]
    fn keyed_files_parse_numbers_only() {
        let stat = parse_keyed("usage_usec 1234\nuser_usec 1000\nbogus x\n");
        assert_eq!(stat.get("usage_usec"), Some(&1234));
        assert_eq!(stat.get("bogus"), None);
    }
}
