//! Hidden helper for engine/tests/manager.rs: a container monitor (as
//! berthd would run itself), and a berthd-like daemon the tests can
//! SIGKILL to check that running containers survive and are re-adopted.
//!
//! `berth-manager-test daemon ROOT SPEC_JSON...`: opens a manager on ROOT
//! (no bridge), creates and starts each spec, prints `READY <id>...` and
//! waits to be killed.

use std::io::Write;
use std::path::PathBuf;

use engine::manager::{monitor, CreateSpec, Manager, ManagerOptions};

fn main() {
    monitor::dispatch();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("daemon") if args.len() >= 3 => {
            if let Err(e) = daemon(&args[1], &args[2..]) {
                eprintln!("berth-manager-test: {e}");
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!("usage: berth-manager-test daemon ROOT SPEC_JSON...");
            std::process::exit(2);
        }
    }
}

fn daemon(root: &str, specs: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(root);
    let mut opts = ManagerOptions::new(&root);
    opts.run_dir = root.join("run");
    opts.bridge = None;
    opts.monitor_program = Some(std::env::current_exe()?);
    let manager = Manager::open(opts)?;
    let mut ids = Vec::new();
    for s in specs {
        let spec: CreateSpec = serde_json::from_str(s)?;
        let id = manager.create(spec)?;
        manager.start(&id)?;
        ids.push(id);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {}", ids.join(" "))?;
    out.flush()?;
    drop(out);
    loop {
        std::thread::park();
    }
}
