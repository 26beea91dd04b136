//! CPU time and resident memory of a process and all its descendants, from `/proc`.

use std::collections::HashMap;

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU seconds, summed over the tree.
    pub cpu_seconds: f64,
    /// Peak resident set (VmHWM), summed over the tree, in bytes.
    pub peak_rss_bytes: u64,
    /// Current resident set (VmRSS), summed over the tree, in bytes.
    pub rss_bytes: u64,
}

/// `pid` and every process below it.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some(ppid) =
            stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse::<u32>().ok()))
        {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn usage(root: u32) -> Usage {
    let mut u = Usage::default();
    for pid in tree(root) {
        if let Some(f) = stat_fields(pid) {
            // utime and stime are fields 14 and 15 of stat, 11 and 12 after the name.
            let ticks: f64 = f.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
                + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            u.cpu_seconds += ticks / TICKS_PER_SECOND;
        }
        u.peak_rss_bytes += status_kib(pid, "VmHWM:") * 1024;
        u.rss_bytes += status_kib(pid, "VmRSS:") * 1024;
    }
    u
}

/// The hypervisor's `steal` counter of `/proc/stat`: CPU time this machine's CPUs wanted
/// to run but the host gave to others, summed over `cpus` CPUs since boot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostSteal {
    pub seconds: f64,
    pub cpus: usize,
}

impl HostSteal {
    pub fn now() -> HostSteal {
        HostSteal::parse(&std::fs::read_to_string("/proc/stat").unwrap_or_default())
    }

    /// The share of all CPUs' time stolen between `earlier` and `self`, `elapsed` apart.
    pub fn share_since(&self, earlier: &HostSteal, elapsed: std::time::Duration) -> f64 {
        (self.seconds - earlier.seconds) / (elapsed.as_secs_f64() * self.cpus.max(1) as f64)
    }

    fn parse(stat: &str) -> HostSteal {
        // cpu  user nice system idle iowait irq softirq steal ...; then one line per CPU.
        let steal = stat
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(8))
            .and_then(|s| s.parse::<f64>().ok());
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        HostSteal {
            seconds: steal.unwrap_or(0.0) / TICKS_PER_SECOND,
            cpus,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let before = usage(me);
        // Burn at least a few clock ticks of CPU, which the compiler cannot fold away.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = usage(me);
        assert!(
            after.cpu_seconds > before.cpu_seconds,
            "{before:?} {after:?}"
        );
        assert!(after.peak_rss_bytes >= after.rss_bytes && after.rss_bytes > 1 << 20);
        assert_eq!(tree(me)[0], me);
    }

    #[test]
    fn steal_is_the_eighth_figure_of_the_cpu_line_summed_over_the_cpus() {
        let stat = "cpu  4651029 2024 761983 1313710 29909 0 52582 52888 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\ncpu1 1 2 3 4 5 6 7 8 0 0\nintr 1\n";
        let later = HostSteal::parse(stat);
        assert_eq!(
            later,
            HostSteal {
                seconds: 528.88,
                cpus: 2
            }
        );
        let earlier = HostSteal {
            seconds: 527.88,
            ..later
        };
        assert_eq!(
            later.share_since(&earlier, std::time::Duration::from_secs(5)),
            0.1
        );
        assert_eq!(
            HostSteal::parse("cpu  1 2 3 4\ncpu0 1 2 3 4\n").seconds,
            0.0,
            "kernels that do not report it"
        );
    }
}
