//! berth-build's cache directory: downloaded kernel packages, their unpacked
//! trees, and the accelerator probe result. `$BERTH_CACHE`, else
//! `~/.cache/berth`.

use std::path::PathBuf;

/// The cache directory could not be found or made.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither `$BERTH_CACHE` nor `$HOME` is set.
    #[error("no cache directory: set BERTH_CACHE (or HOME)")]
    NoHome,
    /// Creating it failed.
    #[error("cannot create the cache directory {0}")]
    Create(PathBuf, #[source] std::io::Error),
}

/// The cache directory, created if needed.
pub fn dir() -> Result<PathBuf, CacheError> {
    let dir = match std::env::var_os("BERTH_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            PathBuf::from(std::env::var_os("HOME").ok_or(CacheError::NoHome)?).join(".cache/berth")
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| CacheError::Create(dir.clone(), e))?;
    Ok(dir)
}
