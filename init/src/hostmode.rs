//! Options for running berth-init on a host (not as PID 1): supervise the
//! given daemons as a child subreaper, and on SIGTERM stop them and exit 0.
//! This is how the supervision and shutdown code is tested without a VM.
//!
//! ```text
//! berth-init [--supervise-only] [--daemon 'PATH [ARG...]']... [--grace-ms N]
//!            [--ready-timeout-ms N] [--backoff-ms N] [--log LEVEL]
//! ```
//!
//! Each flag has an environment fallback: `BERTH_INIT_DAEMONS` (specs
//! separated by `;`), `BERTH_INIT_GRACE_MS`, `BERTH_INIT_READY_TIMEOUT_MS`,
//! `BERTH_INIT_BACKOFF_MS`, `BERTH_INIT_LOG`.

use std::time::Duration;

use log::LevelFilter;

use crate::supervisor::DaemonSpec;

/// The usage text printed for `--help` and bad flags.
pub const USAGE: &str = "usage: berth-init [--supervise-only] [--daemon 'PATH [ARG...]']... \
[--grace-ms N] [--ready-timeout-ms N] [--backoff-ms N] [--log LEVEL]";

/// A command line that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// A flag berth-init does not know.
    #[error("unknown argument {0:?}")]
    Unknown(String),
    /// A flag without its value.
    #[error("{0} needs a value")]
    MissingValue(String),
    /// A value that is not what the flag takes.
    #[error("{flag} {value:?}: {expected}")]
    BadValue {
        /// The flag (or environment variable).
        flag: String,
        /// What was given.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// `--help`.
    #[error("{USAGE}")]
    Help,
}

/// What host mode runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    /// Daemons, started in order.
    pub daemons: Vec<DaemonSpec>,
    /// SIGTERM → SIGKILL grace period.
    pub grace: Duration,
    /// Readiness timeout for each daemon.
    pub ready_timeout: Duration,
    /// First restart delay.
    pub backoff: Duration,
    /// Log level.
    pub log: LevelFilter,
}

fn millis(flag: &str, value: &str) -> Result<Duration, CliError> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| CliError::BadValue {
            flag: flag.to_string(),
            value: value.to_string(),
            expected: "expected milliseconds",
        })
}

fn daemon(spec: &str, ready_timeout: Duration) -> Option<DaemonSpec> {
    let mut words = spec.split_whitespace();
    let path = words.next()?;
    Some(DaemonSpec::new(
        path,
        words.map(str::to_string).collect(),
        ready_timeout,
    ))
}

impl HostOptions {
    /// Parses `args` (without argv[0]); `env` looks up the fallbacks.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CliError> {
        let mut specs: Vec<String> = Vec::new();
        let mut grace = env("BERTH_INIT_GRACE_MS");
        let mut ready = env("BERTH_INIT_READY_TIMEOUT_MS");
        let mut backoff = env("BERTH_INIT_BACKOFF_MS");
        let mut log_level = env("BERTH_INIT_LOG");
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| CliError::MissingValue(flag.clone()))
            };
            match flag.as_str() {
                "--supervise-only" => {}
                "--daemon" => specs.push(value()?),
                "--grace-ms" => grace = Some(value()?),
                "--ready-timeout-ms" => ready = Some(value()?),
                "--backoff-ms" => backoff = Some(value()?),
                "--log" => log_level = Some(value()?),
                "-h" | "--help" => return Err(CliError::Help),
                _ => return Err(CliError::Unknown(arg)),
            }
        }
        if specs.is_empty() {
            if let Some(list) = env("BERTH_INIT_DAEMONS") {
                specs = list.split(';').map(str::to_string).collect();
            }
        }
        let ready_timeout = match ready {
            Some(v) => millis("--ready-timeout-ms", &v)?,
            None => Duration::from_secs(10),
        };
        let log = match log_level {
            Some(v) => v.parse().map_err(|_| CliError::BadValue {
                flag: "--log".to_string(),
                value: v.clone(),
                expected: "expected off, error, warn, info, debug or trace",
            })?,
            None => LevelFilter::Info,
        };
        Ok(Self {
            daemons: specs
                .iter()
                .filter_map(|s| daemon(s, ready_timeout))
                .collect(),
            grace: match grace {
                Some(v) => millis("--grace-ms", &v)?,
                None => crate::shutdown::DEFAULT_GRACE,
            },
            ready_timeout,
            backoff: match backoff {
                Some(v) => millis("--backoff-ms", &v)?,
                None => Duration::from_millis(100),
            },
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_win_over_env() {
        let env = |k: &str| match k {
            "BERTH_INIT_DAEMONS" => Some("/bin/a x;/bin/b".to_string()),
            "BERTH_INIT_GRACE_MS" => Some("500".to_string()),
            _ => None,
        };
        let o = HostOptions::parse(args(&[]), env);
        let o = o.as_ref();
        assert_eq!(o.map(|o| o.daemons.len()), Ok(2));
        assert_eq!(
            o.map(|o| o.daemons[0].args.clone()),
            Ok(vec!["x".to_string()])
        );
        assert_eq!(o.map(|o| o.grace), Ok(Duration::from_millis(500)));

        let o = HostOptions::parse(
            args(&[
                "--supervise-only",
                "--daemon",
                "/bin/sh -c true",
                "--grace-ms=50",
                "--log",
                "debug",
            ]),
            env,
        );
        let o = o.as_ref();
        assert_eq!(o.map(|o| o.daemons[0].name.as_str()), Ok("sh"));
        assert_eq!(o.map(|o| o.daemons.len()), Ok(1));
        assert_eq!(o.map(|o| o.grace), Ok(Duration::from_millis(50)));
        assert_eq!(o.map(|o| o.log), Ok(LevelFilter::Debug));
    }

    #[test]
    fn rejects_bad_flags() {
        let none = |_: &str| None;
        assert_eq!(
            HostOptions::parse(args(&["--bogus"]), none),
            Err(CliError::Unknown("--bogus".into()))
        );
        assert_eq!(
            HostOptions::parse(args(&["--daemon"]), none),
            Err(CliError::MissingValue("--daemon".into()))
        );
        assert!(matches!(
            HostOptions::parse(args(&["--grace-ms", "soon"]), none),
            Err(CliError::BadValue { .. })
        ));
    }
}
