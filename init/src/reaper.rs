//! Reaping: PID 1 (or a child subreaper on the host) collects the exit status
//! of every child, including orphans it adopted, so none stays a zombie.

use std::path::Path;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// What one reaping round found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// Children reaped in this round.
    pub count: usize,
    /// `waitpid` said there are no children at all (ECHILD).
    pub no_children: bool,
}

/// Reaps every child that has exited, without blocking, handing each status
/// to `on_exit` (supervised daemons care; orphans are just collected).
pub fn reap(mut on_exit: impl FnMut(Pid, WaitStatus)) -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return reaped,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    reaped.count += 1;
                    on_exit(pid, status);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => {
                reaped.no_children = true;
                return reaped;
            }
            Err(e) => {
                log::warn!("waitpid failed: {e}");
                return reaped;
            }
        }
    }
}

/// The process id, state letter and parent of a `/proc/<pid>/stat` line.
pub fn parse_stat(stat: &str) -> Option<(i32, char, i32)> {
    let (pid, rest) = stat.split_once(' ')?;
    // The command name may hold spaces and parentheses: it ends at the last ')'.
    let after = &rest[rest.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((pid.parse().ok()?, state, ppid))
}

/// Processes whose parent is `parent`, with their state letter, from a
/// `/proc`-like directory.
pub fn children_of(proc_root: &Path, parent: Pid) -> Vec<(Pid, char)> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .filter(|&(_, _, ppid)| ppid == parent.as_raw())
        .map(|(pid, state, _)| (Pid::from_raw(pid), state))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        assert_eq!(parse_stat("42 (sleep) Z 7 42 42 0 -1"), Some((42, 'Z', 7)));
        assert_eq!(parse_stat("9 (a) b (c)) S 1 9 9"), Some((9, 'S', 1)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn finds_children_in_fake_proc() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for (pid, stat) in [
            ("10", "10 (x) S 5 0"),
            ("11", "11 (y) Z 5 0"),
            ("12", "12 (z) S 6 0"),
        ] {
            std::fs::create_dir(dir.path().join(pid))?;
            std::fs::write(dir.path().join(pid).join("stat"), stat)?;
        }
        std::fs::create_dir(dir.path().join("self"))?;
        let mut kids = children_of(dir.path(), Pid::from_raw(5));
        kids.sort();
        assert_eq!(kids, [(Pid::from_raw(10), 'S'), (Pid::from_raw(11), 'Z')]);
        Ok(())
    }
}
