//! CPU time of a process tree from /proc (Linux only). Read-only: no signals
//! or process control here (that is [`crate::process`]).

use std::collections::HashMap;
use std::fs;

/// The fields of /proc/PID/stat the runner needs, CPU times in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub ppid: u32,
    /// utime + stime of the process (all its threads).
    pub own_ticks: u64,
    /// cutime + cstime: children it has already reaped.
    pub reaped_children_ticks: u64,
}

/// Parses one /proc/PID/stat line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last ')'.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // proc(5): field k (1-based) is fields[k - 3] here; ppid is 4, utime 14,
    // stime 15, cutime 16, cstime 17.
    let num = |k: usize| fields.get(k - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(num(4)?).ok()?,
        own_ticks: num(14)? + num(15)?,
        reaped_children_ticks: num(16)? + num(17)?,
    })
}

fn stat_of(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid` and every live descendant (nginx's workers are children of its
/// master; taskset has already exec'd into the program).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(stat) = stat_of(p) {
                children.entry(stat.ppid).or_default().push(p);
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree
}

/// User + system CPU time, in clock ticks, of `pid` and its descendants,
/// live or reaped. Processes that vanished meanwhile count as zero.
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(stat_of)
        .map(|s| s.own_ticks + s.reaped_children_ticks)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_paren() {
        let line = "4242 (nginx: worker (x) ) S 4241 4241 4241 0 -1 4194624 \
                    100 0 0 0 1234 567 8 9 20 0 1 0 100 1000000 500 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(
            stat,
            Stat {
                ppid: 4241,
                own_ticks: 1234 + 567,
                reaped_children_ticks: 8 + 9,
            }
        );
    }

    #[test]
    fn own_process_is_its_own_tree_root_and_has_cpu_time() {
        let me = std::process::id();
        assert_eq!(process_tree(me)[0], me);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(tree_cpu_ticks(me) > 0);
    }
}
