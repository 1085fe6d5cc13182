//! Capabilities: Docker's default set and how it is applied.
//!
//! Docker (moby `oci.SetCapabilities`) gives root the default set as
//! bounding, effective and permitted; a non-root user gets it as bounding
//! only (`execve` would clear the others anyway). Inheritable and ambient
//! are empty (moby 20.10.14 and later).

use nix::errno::Errno;

/// Problems applying capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `prctl(PR_CAPBSET_DROP)` failed.
    #[error("cannot drop capability {cap} from the bounding set")]
    DropBounding {
        /// Capability number.
        cap: u32,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// `capset(2)` failed.
    #[error("cannot set the effective, permitted and inheritable capabilities")]
    Capset(#[source] Errno),
    /// `prctl(PR_CAP_AMBIENT_CLEAR_ALL)` failed.
    #[error("cannot clear the ambient capabilities")]
    Ambient(#[source] Errno),
}

/// Capability numbers (`linux/capability.h`) of Docker's default set.
pub mod cap {
    /// CAP_CHOWN
    pub const CHOWN: u32 = 0;
    /// CAP_DAC_OVERRIDE
    pub const DAC_OVERRIDE: u32 = 1;
    /// CAP_FOWNER
    pub const FOWNER: u32 = 3;
    /// CAP_FSETID
    pub const FSETID: u32 = 4;
    /// CAP_KILL
    pub const KILL: u32 = 5;
    /// CAP_SETGID
    pub const SETGID: u32 = 6;
    /// CAP_SETUID
    pub const SETUID: u32 = 7;
    /// CAP_SETPCAP
    pub const SETPCAP: u32 = 8;
    /// CAP_NET_BIND_SERVICE
    pub const NET_BIND_SERVICE: u32 = 10;
    /// CAP_NET_RAW
    pub const NET_RAW: u32 = 13;
    /// CAP_SYS_CHROOT
    pub const SYS_CHROOT: u32 = 18;
    /// CAP_MKNOD
    pub const MKNOD: u32 = 27;
    /// CAP_AUDIT_WRITE
    pub const AUDIT_WRITE: u32 = 29;
    /// CAP_SETFCAP
    pub const SETFCAP: u32 = 31;
}

/// A set of capabilities as a bit mask (bit n = capability n), the form
/// `/proc/<pid>/status` prints (`CapEff: 00000000a80425fb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

impl CapSet {
    /// No capabilities.
    pub const EMPTY: CapSet = CapSet(0);

    /// The set holding `caps`.
    pub const fn of(caps: &[u32]) -> CapSet {
        let mut bits = 0u64;
        let mut i = 0;
        while i < caps.len() {
            bits |= 1 << caps[i];
            i += 1;
        }
        CapSet(bits)
    }

    /// Whether `cap` is in the set.
    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }
}

/// Docker's default capability set (`0x00000000a80425fb`).
pub const DOCKER_DEFAULT: CapSet = CapSet::of(&[
    cap::CHOWN,
    cap::DAC_OVERRIDE,
    cap::FSETID,
    cap::FOWNER,
    cap::MKNOD,
    cap::NET_RAW,
    cap::SETGID,
    cap::SETUID,
    cap::SETFCAP,
    cap::SETPCAP,
    cap::NET_BIND_SERVICE,
    cap::SYS_CHROOT,
    cap::KILL,
    cap::AUDIT_WRITE,
]);

/// The capability sets of a container process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Bounding set.
    pub bounding: CapSet,
    /// Effective set.
    pub effective: CapSet,
    /// Permitted set.
    pub permitted: CapSet,
    /// Inheritable set.
    pub inheritable: CapSet,
}

impl Capabilities {
    /// What Docker gives a process running as `uid` with `set`.
    pub fn docker(set: CapSet, uid: u32) -> Capabilities {
        let (effective, permitted) = if uid == 0 {
            (set, set)
        } else {
            (CapSet::EMPTY, CapSet::EMPTY)
        };
        Capabilities {
            bounding: set,
            effective,
            permitted,
            inheritable: CapSet::EMPTY,
        }
    }
}

/// Drops every capability outside `keep` from the bounding set. Needs
/// CAP_SETPCAP, so it runs before the user switch.
pub fn drop_bounding(keep: CapSet) -> Result<(), CapsError> {
    for cap in 0..64u32 {
        if keep.contains(cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes an integer capability number and
        // touches no memory of ours.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        match Errno::result(r) {
            Ok(_) => {}
            // Past the kernel's last capability.
            Err(Errno::EINVAL) => break,
            Err(source) => return Err(CapsError::DropBounding { cap, source }),
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the effective, permitted and inheritable sets of this thread and
/// clears the ambient set.
pub fn set_process_caps(caps: &Capabilities) -> Result<(), CapsError> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |s: CapSet| (s.0 as u32, (s.0 >> 32) as u32);
    let (e0, e1) = split(caps.effective);
    let (p0, p1) = split(caps.permitted);
    let (i0, i1) = split(caps.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: version 3 capset reads one header and exactly two data
    // structs, which is what we pass; both outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    Errno::result(r).map_err(CapsError::Capset)?;
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integers only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(r).map_err(CapsError::Ambient)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_default_matches_dockers_capeff() {
        assert_eq!(DOCKER_DEFAULT.0, 0x0000_0000_a804_25fb);
        assert!(DOCKER_DEFAULT.contains(cap::NET_RAW));
        assert!(!DOCKER_DEFAULT.contains(21)); // CAP_SYS_ADMIN
        assert!(!DOCKER_DEFAULT.contains(64));
    }

    #[test]
    fn non_root_keeps_only_bounding() {
        let root = Capabilities::docker(DOCKER_DEFAULT, 0);
        assert_eq!(root.effective, DOCKER_DEFAULT);
        assert_eq!(root.permitted, DOCKER_DEFAULT);
        assert_eq!(root.inheritable, CapSet::EMPTY);
        let user = Capabilities::docker(DOCKER_DEFAULT, 1000);
        assert_eq!(user.bounding, DOCKER_DEFAULT);
        assert_eq!(user.effective, CapSet::EMPTY);
        assert_eq!(user.permitted, CapSet::EMPTY);
    }
}
