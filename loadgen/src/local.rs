//! The server under test when it runs on this machine: which process owns
//! the listening socket of a target, and which CPUs its threads run on, so
//! ringload can keep its workers off them (or say plainly that it shares).
//!
//! Found through /proc, by the socket and not by a process name, so it
//! works for ringgate, nginx or anything else: a listening TCP socket on the
//! target's port and address (or the wildcard) in /proc/net/tcp{,6} gives an
//! inode; the processes holding `socket:[inode]` among their fds own it;
//! `Cpus_allowed_list` of each of their threads gives the CPUs. A server that
//! pins threads (ringgate's workers, a `taskset` nginx) is taken to run on
//! its pinned threads' CPUs; one that pins none may run on any CPU of its
//! mask. Everything here is best effort: a target that is not local, a
//! process another user owns, or a kernel without these files gives `None`,
//! and ringload then behaves as before.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// The local process(es) serving a target and the CPUs they run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalServer {
    /// `name (pid N)` of each owning process, for messages.
    pub processes: Vec<String>,
    pub cpus: BTreeSet<usize>,
}

impl LocalServer {
    /// `ringgate (pid 12)`, or several joined with `, `.
    pub fn who(&self) -> String {
        self.processes.join(", ")
    }
}

/// CPU ids in the kernel's list syntax, `0-3,8,10-11`, as a set.
pub fn parse_cpu_list(s: &str) -> Option<BTreeSet<usize>> {
    let mut set = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                set.extend(a..=b);
            }
            None => {
                set.insert(part.parse().ok()?);
            }
        }
    }
    Some(set)
}

/// The CPUs ringload's workers take from its `allowed` mask, and which of
/// them (or, unpinned, of the whole mask) the local server also runs on.
/// By default every CPU the server leaves free, or, when it leaves none,
/// every allowed CPU (shared); with `cores`, free CPUs first.
pub fn choose_cpus(
    allowed: &[usize],
    server: Option<&BTreeSet<usize>>,
    cores: Option<usize>,
    pin: bool,
) -> (Vec<usize>, Vec<usize>) {
    let Some(server) = server else {
        return (
            allowed
                .iter()
                .copied()
                .take(cores.unwrap_or(allowed.len()))
                .collect(),
            Vec::new(),
        );
    };
    let (busy, free): (Vec<usize>, Vec<usize>) =
        allowed.iter().copied().partition(|c| server.contains(c));
    let chosen: Vec<usize> = match cores {
        None if !free.is_empty() => free,
        None => busy.clone(),
        Some(n) => free
            .into_iter()
            .chain(busy.iter().copied())
            .take(n)
            .collect(),
    };
    let shared = if pin {
        chosen
            .iter()
            .copied()
            .filter(|c| server.contains(c))
            .collect()
    } else {
        // Unpinned workers may run on any CPU of the mask.
        busy
    };
    (chosen, shared)
}

/// `0,1,3` for messages.
pub fn cpu_list(cpus: impl IntoIterator<Item = usize>) -> String {
    cpus.into_iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `ip` is an address of this machine: loopback, or one a socket
/// can be bound to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// An address as /proc/net/tcp{,6} prints it: the raw in-memory words of the
/// address, each printed as a native-endian u32 in hex.
fn parse_proc_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Whether a listener bound to `bound` accepts connections to `target`.
fn listener_serves(bound: IpAddr, target: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    bound.is_unspecified() || canonical(bound) == canonical(target)
}

/// Inodes of the listening sockets in a /proc/net/tcp{,6} table that serve
/// `target`.
pub fn listening_inodes(table: &str, target: SocketAddr) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
        if f.len() < 10 || f[3] != LISTEN {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        let (Some(ip), Ok(port)) = (parse_proc_addr(addr), u16::from_str_radix(port, 16)) else {
            continue;
        };
        if port == target.port() && listener_serves(ip, target.ip()) {
            if let Ok(inode) = f[9].parse() {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// Processes other than this one holding one of `inodes` among their fds.
fn socket_owners(inodes: &[u64]) -> Vec<u32> {
    let me = std::process::id();
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut owners = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return owners;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path())
                .ok()
                .and_then(|l| l.to_str().map(|l| wanted.iter().any(|w| w == l)))
                .unwrap_or(false)
        });
        if holds {
            owners.push(pid);
        }
    }
    owners
}

/// CPUs a thread may run on, from its `status` file.
fn thread_cpus(status: &str) -> Option<BTreeSet<usize>> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(line)
}

/// The CPUs a server runs on, from each of its threads' allowed CPUs: the
/// pinned threads' (those allowed fewer than all `online` CPUs) when there
/// are any, else every CPU any thread may use.
pub fn server_cpus(threads: &[BTreeSet<usize>], online: &BTreeSet<usize>) -> BTreeSet<usize> {
    let pinned: BTreeSet<usize> = threads
        .iter()
        .filter(|t| t.len() < online.len())
        .flatten()
        .copied()
        .collect();
    if pinned.is_empty() {
        threads.iter().flatten().copied().collect()
    } else {
        pinned
    }
}

fn online_cpus() -> BTreeSet<usize> {
    fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        })
}

/// The local server behind `targets`, if any of them is served on this
/// machine by a process whose /proc entries this user may read.
pub fn find(targets: &[SocketAddr]) -> Option<LocalServer> {
    let local: Vec<SocketAddr> = targets
        .iter()
        .copied()
        .filter(|t| is_local(t.ip()))
        .collect();
    if local.is_empty() {
        return None;
    }
    let tables: String = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n");
    let mut inodes: Vec<u64> = local
        .iter()
        .flat_map(|t| listening_inodes(&tables, *t))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    if inodes.is_empty() {
        return None;
    }
    let online = online_cpus();
    let mut processes = Vec::new();
    let mut cpus = BTreeSet::new();
    for pid in socket_owners(&inodes) {
        let name = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let threads: Vec<BTreeSet<usize>> = fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("status")).ok())
            .filter_map(|s| thread_cpus(&s))
            .collect();
        cpus.extend(server_cpus(&threads, &online));
        processes.push(format!("{name} (pid {pid})"));
    }
    if processes.is_empty() {
        return None;
    }
    Some(LocalServer { processes, cpus })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[usize]) -> BTreeSet<usize> {
        v.iter().copied().collect()
    }

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(set(&[0, 1, 2, 3, 8, 10, 11]))
        );
        assert_eq!(parse_cpu_list("1"), Some(set(&[1])));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(cpu_list(set(&[0, 2])), "0,2");
    }

    #[test]
    fn listeners_match_by_port_and_address_or_wildcard() {
        // 127.0.0.1:8080 and 0.0.0.0:9000 listening, one established socket
        // on 8080, and [::]:7000 (wildcard v6).
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {lo}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 111 1\n\
             1: 00000000:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 222 1\n\
             2: {lo}:1F90 {lo}:C350 01 00000000:00000000 00:00000000 00000000 0 0 333 1\n\
             0: 00000000000000000000000000000000:1B58 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 444 1\n",
            lo = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]))
        );
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(listening_inodes(&table, at("127.0.0.1:8080")), vec![111]);
        assert_eq!(
            listening_inodes(&table, at("127.0.0.2:8080")),
            Vec::<u64>::new()
        );
        assert_eq!(listening_inodes(&table, at("127.0.0.1:9000")), vec![222]);
        assert_eq!(listening_inodes(&table, at("127.0.0.1:7000")), vec![444]);
        assert_eq!(
            listening_inodes(&table, at("127.0.0.1:1")),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn workers_keep_off_the_servers_cpus_or_say_they_share() {
        let two = [0, 1];
        let on0 = set(&[0]);
        let both = set(&[0, 1]);
        // No local server: as many CPUs as asked, nothing shared.
        assert_eq!(choose_cpus(&two, None, None, true), (vec![0, 1], vec![]));
        // The server on CPU 0: ringload takes CPU 1 alone.
        assert_eq!(choose_cpus(&two, Some(&on0), None, true), (vec![1], vec![]));
        // Asked for 2 cores: the free one first, then the shared one.
        assert_eq!(
            choose_cpus(&two, Some(&on0), Some(2), true),
            (vec![1, 0], vec![0])
        );
        // The server on every CPU: all of them, all shared.
        assert_eq!(
            choose_cpus(&two, Some(&both), None, true),
            (vec![0, 1], vec![0, 1])
        );
        assert_eq!(
            choose_cpus(&two, Some(&both), Some(1), true),
            (vec![0], vec![0])
        );
        // Unpinned workers float over the mask, so the server's CPUs in it are shared.
        assert_eq!(
            choose_cpus(&two, Some(&on0), None, false),
            (vec![1], vec![0])
        );
    }

    #[test]
    fn pinned_threads_name_the_servers_cpus() {
        let online = set(&[0, 1, 2, 3]);
        // ringgate: workers pinned to 0 and 1, admin and signal threads free.
        let ringgate = [set(&[0, 1, 2, 3]), set(&[0]), set(&[1]), set(&[0, 1, 2, 3])];
        assert_eq!(server_cpus(&ringgate, &online), set(&[0, 1]));
        // Started under `taskset -c 2`: every thread on 2.
        assert_eq!(server_cpus(&[set(&[2]), set(&[2])], &online), set(&[2]));
        // Nothing pinned: it may run anywhere.
        assert_eq!(server_cpus(std::slice::from_ref(&online), &online), online);
    }

    #[test]
    fn a_real_listener_of_another_process_is_found_with_its_cpus() {
        // Another process holding a real listening socket (as its stdin),
        // pinned to CPU 0 the way `taskset -c 0 nginx` is; this test
        // process's own copy of the socket is skipped.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut child = std::process::Command::new("taskset")
            .args(["-c", "0", "sleep", "30"])
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                listener.try_clone().unwrap(),
            )))
            .spawn()
            .expect("taskset (util-linux) runs");
        // Until taskset has set the mask and exec'd sleep.
        let comm = format!("/proc/{}/comm", child.id());
        while fs::read_to_string(&comm).map_or(true, |c| c.trim() != "sleep") {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("taskset -c 0 sleep exited: {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let found = find(&[addr]);
        let _ = child.kill();
        let _ = child.wait();
        drop(listener);
        let found = found.expect("the child holds the listener");
        assert_eq!(found.processes.len(), 1, "{found:?}");
        assert!(found.processes[0].starts_with("sleep (pid "), "{found:?}");
        assert_eq!(found.cpus, set(&[0]));
        assert_eq!(find(&["10.255.255.1:80".parse().unwrap()]), None);
    }
}
