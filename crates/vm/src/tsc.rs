//! The host's TSC frequency. A guest told it up front (`tsc_early_khz=`, `lpj=`) skips
//! calibrating the TSC against the PIT, which under TCG can take long or hang.

use std::path::Path;
use std::time::{Duration, Instant};

/// The TSC frequency in kHz, measured once per host boot and cached in `cache`.
pub fn host_khz(cache: &Path) -> u64 {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let boot_id = boot_id.trim();
    if let Ok(cached) = std::fs::read_to_string(cache) {
        if let Some((id, khz)) = cached.trim().split_once(' ') {
            if id == boot_id {
                if let Ok(khz) = khz.parse() {
                    return khz;
                }
            }
        }
    }
    let khz = measure_khz();
    // A lost cache only costs another measurement.
    let _ = std::fs::write(cache, format!("{boot_id} {khz}\n"));
    khz
}

/// Counts TSC ticks over a short sleep, rounded to whole MHz (kernel-reported values are).
pub fn measure_khz() -> u64 {
    let (start_tsc, start) = (read_tsc(), Instant::now());
    std::thread::sleep(Duration::from_millis(20));
    let (end_tsc, elapsed) = (read_tsc(), start.elapsed());
    let ticks = end_tsc.saturating_sub(start_tsc);
    let khz = u128::from(ticks) * 1000 / elapsed.as_micros().max(1);
    let khz = u64::try_from(khz).unwrap_or(u64::MAX);
    (khz + 500) / 1000 * 1000
}

#[cfg(target_arch = "x86_64")]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64; it only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_plausible_frequency() {
        let khz = measure_khz();
        assert!((100_000..10_000_000).contains(&khz), "TSC at {khz} kHz");
    }

    #[test]
    fn caches_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("tsc");
        let first = host_khz(&cache);
        std::fs::write(&cache, format!("{} 1234000\n", boot_id())).unwrap();
        assert_eq!(host_khz(&cache), 1_234_000);
        std::fs::write(&cache, "another-boot 1234000\n").unwrap();
        let remeasured = host_khz(&cache);
        assert!(remeasured.abs_diff(first) < first / 10);
    }

    fn boot_id() -> String {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string()
    }
}
