//! What /proc tells of a process: memory, CPU time, bytes written to files.

/// The number after `name` in a /proc file of `name: value [unit]` lines.
pub fn proc_value<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident and peak memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mib = |name: &str| Some(proc_value::<f64>(&s, name)? / 1024.0);
    Some((mib("VmRSS:")?, mib("VmHWM:")?))
}

/// Bytes a process has sent to the storage layer so far (`write_bytes` of
/// /proc/PID/io: its writes to files, counted as it dirties the page cache;
/// not its socket writes).
pub fn storage_writes(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    proc_value(&s, "write_bytes:")
}

/// What the server and the load generator have used so far; a window's use
/// is the difference of two samples.
#[derive(Default)]
pub struct Usage {
    pub server_cpu: Option<f64>,
    pub server_writes: Option<u64>,
    pub bench_cpu: Option<f64>,
    /// Every `postgres` process on this machine (the store's database
    /// server, when it runs here).
    pub postgres_cpu: Option<f64>,
}

impl Usage {
    pub fn of(server_pid: Option<&str>, postgres: bool) -> Usage {
        Usage {
            server_cpu: server_pid.and_then(cpu_secs),
            server_writes: server_pid.and_then(storage_writes),
            bench_cpu: cpu_secs("self"),
            postgres_cpu: postgres.then(postgres_cpu_secs).flatten(),
        }
    }
}

/// User+system CPU seconds of the live processes named `postgres`; None
/// when there are none.
pub fn postgres_cpu_secs() -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == "postgres" {
            if let Some(secs) = cpu_secs(pid) {
                total = Some(total.unwrap_or(0.0) + secs);
            }
        }
    }
    total
}

/// User+system CPU seconds of a process so far (clock ticks of 1/100 s).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn storage_writes_count_what_a_process_writes_to_files() {
        let before = storage_writes("self").expect("/proc/self/io");
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let after = storage_writes("self").unwrap();
        assert!(after >= before + (1 << 20), "{before} -> {after}");
        assert_eq!(storage_writes("0"), None, "no such process");
    }
}
