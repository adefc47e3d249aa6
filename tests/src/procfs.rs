//! Reading a process's threads, affinity, file descriptors, memory peak and
//! listening sockets from /proc (Linux only, like ringgate itself).

use std::fs;

/// A `Key:` line of /proc/PID/status (or a task's status), value trimmed.
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    field_of(&format!("/proc/{pid}/status"), key)
}

fn field_of(path: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// Peak resident set size (VmHWM) in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    kib_field(pid, "VmHWM")
}

/// Resident set size (VmRSS) in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    kib_field(pid, "VmRSS")
}

fn kib_field(pid: u32, key: &str) -> u64 {
    let v = status_field(pid, key).unwrap_or_else(|| panic!("no {key} for pid {pid}"));
    v.trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad {key} {v:?}"))
}

/// One thread of a process.
#[derive(Clone, Debug)]
pub struct Task {
    pub tid: u32,
    pub comm: String,
    /// `Cpus_allowed_list` of the thread, e.g. "1" or "0-3".
    pub cpus_allowed_list: String,
}

pub fn tasks(pid: u32) -> Vec<Task> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let cpus = field_of(
            &format!("/proc/{pid}/task/{tid}/status"),
            "Cpus_allowed_list",
        )
        .unwrap_or_default();
        out.push(Task {
            tid,
            comm,
            cpus_allowed_list: cpus,
        });
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// The CPUs in a list like "0-2,5".
pub fn parse_cpu_list(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// How many of the process's file descriptors are io_uring instances.
pub fn io_uring_fds(pid: u32) -> usize {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            fs::read_link(e.path())
                .map(|t| t.to_string_lossy() == "anon_inode:[io_uring]")
                .unwrap_or(false)
        })
        .count()
}

/// Rows of /proc/net/tcp and /proc/net/tcp6 in LISTEN state (st 0A) whose
/// local port is `port`.
pub fn listening_sockets(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p).unwrap_or_default();
            text.lines()
                .skip(1)
                .filter(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    if cols.len() < 4 || cols[3] != "0A" {
                        return false;
                    }
                    cols[1]
                        .rsplit(':')
                        .next()
                        .and_then(|h| u16::from_str_radix(h, 16).ok())
                        == Some(port)
                })
                .count()
        })
        .sum()
}

/// How many of the process's file descriptors are sockets: its listeners
/// plus every client and upstream connection it holds open.
pub fn socket_fds(pid: u32) -> usize {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            fs::read_link(e.path())
                .map(|t| t.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
        })
        .count()
}
