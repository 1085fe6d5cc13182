//! Zombie reaping, the way tini's tests check it: a process under berth-init
//! orphans 100 children; none of them may stay a zombie.

mod common;

use std::time::Duration;

use common::{script, wait_until, Init};
use init::reaper::children_of;

#[test]
fn reaps_a_hundred_orphans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = script(
        dir.path(),
        "orphans.sh",
        // Each subshell exits at once, orphaning its sleep to berth-init,
        // the nearest subreaper; the sleeps then exit and must be reaped.
        "i=0\nwhile [ $i -lt 100 ]; do (sleep 1 &); i=$((i+1)); done\n\
         echo READY >&3\nexec sleep 1000\n",
    );
    let mut init = Init::start(&["--supervise-only", "--log", "debug", "--daemon", &spec]);
    assert!(init
        .wait_line("berth: ready", Duration::from_secs(20))
        .is_some());

    let me = init.pid();
    // The orphans were adopted (they outlive the loop that made them).
    let adopted = children_of(std::path::Path::new("/proc"), me).len();
    assert!(
        adopted > 1,
        "expected adopted orphans, found {adopted} children"
    );

    let reaped = init.wait_lines("reaped pid", 100, Duration::from_secs(30));
    assert_eq!(
        reaped.len(),
        100,
        "berth-init reaped {} orphans",
        reaped.len()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let kids = children_of(std::path::Path::new("/proc"), me);
            kids.iter().all(|&(_, state)| state != 'Z') && kids.len() == 1
        }),
        "zombies or orphans left: {:?}",
        children_of(std::path::Path::new("/proc"), me)
    );
}
