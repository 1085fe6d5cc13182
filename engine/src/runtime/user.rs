//! `uid[:gid]` / `name[:group]` resolution against a container's
//! `/etc/passwd` and `/etc/group`, with the rules Docker (runc's
//! `GetExecUser`) uses: names must exist, numbers need not; supplementary
//! groups come from `/etc/group` when no group was given explicitly.

/// Problems resolving a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A user name with no passwd entry.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoSuchUser(String),
    /// A group name with no group entry.
    #[error("unable to find group {0}: no matching entries in group file")]
    NoSuchGroup(String),
    /// A numeric id out of range.
    #[error("user or group id {0} is out of range (0 to 2147483647)")]
    OutOfRange(u64),
}

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
    /// Member user names.
    pub members: Vec<String>,
}

/// The credentials a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (given to `setgroups`).
    pub sgids: Vec<u32>,
    /// Home directory (`HOME` when the env has none).
    pub home: String,
}

/// Parses `/etc/passwd`; malformed lines and comments are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group`; malformed lines and comments are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

fn numeric(s: &str) -> Result<Option<u32>, UserError> {
    match s.parse::<u64>() {
        Ok(n) if n <= i32::MAX as u64 => Ok(Some(n as u32)),
        Ok(n) => Err(UserError::OutOfRange(n)),
        Err(_) => Ok(None),
    }
}

/// Resolves `spec` (`""` = root) the way runc's `GetExecUser` does.
pub fn resolve_user(
    spec: &str,
    passwd: &[PasswdEntry],
    group: &[GroupEntry],
) -> Result<ExecUser, UserError> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let uid_arg = numeric(user_arg)?;
    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        sgids: Vec::new(),
        home: "/".to_string(),
    };
    let found = passwd.iter().find(|p| match (user_arg, uid_arg) {
        ("", _) => p.uid == 0,
        (_, Some(uid)) => p.uid == uid,
        (name, None) => p.name == name,
    });
    let name = match found {
        Some(p) => {
            user.uid = p.uid;
            user.gid = p.gid;
            user.home = if p.home.is_empty() {
                "/".to_string()
            } else {
                p.home.clone()
            };
            Some(p.name.as_str())
        }
        None => {
            match uid_arg {
                Some(uid) => user.uid = uid,
                None if user_arg.is_empty() => {}
                None => return Err(UserError::NoSuchUser(user_arg.to_string())),
            }
            None
        }
    };
    if !group_arg.is_empty() {
        let gid_arg = numeric(group_arg)?;
        let found = group.iter().find(|g| match gid_arg {
            Some(gid) => g.gid == gid,
            None => g.name == group_arg,
        });
        user.gid = match (found, gid_arg) {
            (Some(g), _) => g.gid,
            (None, Some(gid)) => gid,
            (None, None) => return Err(UserError::NoSuchGroup(group_arg.to_string())),
        };
    } else if let Some(name) = name {
        user.sgids = group
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
            .map(|g| g.gid)
            .collect();
    }
    Ok(user)
}

/// The supplementary groups Docker gives the process: the primary group
/// first, then the ones from `/etc/group` (moby's `AdditionalGids`).
pub fn docker_groups(user: &ExecUser) -> Vec<u32> {
    std::iter::once(user.gid)
        .chain(user.sgids.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
        broken line\n\
        nobody:x:65534:65534:nobody:/home:/bin/false\n\
        alice:x:1000:1000:Alice:/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root\n\
        staff:x:50:alice\n\
        users:x:100:alice, bob\n\
        alice:x:1000:\n\
        nogroup:x:65534:\n";

    fn resolve(spec: &str) -> Result<ExecUser, UserError> {
        resolve_user(spec, &parse_passwd(PASSWD), &parse_group(GROUP))
    }

    #[test]
    fn parses_files() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 4);
        assert_eq!(
            p[3],
            PasswdEntry {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/alice".into()
            }
        );
        let g = parse_group(GROUP);
        assert_eq!(g[3].members, vec!["alice".to_string(), "bob".to_string()]);
    }

    #[test]
    fn default_is_root_with_its_groups() {
        let u = resolve("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.sgids, vec![10]);
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let u = resolve("alice").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.sgids, vec![50, 100]);
        assert_eq!(u.home, "/home/alice");
        let u = resolve("nobody").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (65534, 65534, "/home"));
    }

    #[test]
    fn docker_adds_the_primary_group() {
        assert_eq!(docker_groups(&resolve("").unwrap()), vec![0, 10]);
        assert_eq!(
            docker_groups(&resolve("alice").unwrap()),
            vec![1000, 50, 100]
        );
        assert_eq!(docker_groups(&resolve("4000:7").unwrap()), vec![7]);
    }

    #[test]
    fn explicit_group_drops_supplementary_groups() {
        let u = resolve("alice:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(u.sgids.is_empty());
        let u = resolve("alice:4242").unwrap();
        assert_eq!(u.gid, 4242);
    }

    #[test]
    fn numbers_need_no_entry() {
        let u = resolve("4000").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4000, 0, "/"));
        assert!(u.sgids.is_empty());
        let u = resolve("4000:4001").unwrap();
        assert_eq!((u.uid, u.gid), (4000, 4001));
        // A known uid takes its passwd entry (and groups).
        let u = resolve("1000").unwrap();
        assert_eq!((u.gid, u.sgids.clone()), (1000, vec![50, 100]));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(resolve("bob"), Err(UserError::NoSuchUser("bob".into())));
        assert_eq!(
            resolve("alice:nope"),
            Err(UserError::NoSuchGroup("nope".into()))
        );
        assert_eq!(
            resolve("99999999999"),
            Err(UserError::OutOfRange(99999999999))
        );
        assert_eq!(
            resolve("bob").unwrap_err().to_string(),
            "unable to find user bob: no matching entries in passwd file"
        );
    }
}
