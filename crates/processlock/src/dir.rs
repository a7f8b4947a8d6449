//! Where lock files live: one rule shared by the addon and the command.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable that overrides the default lock directory.
pub const DIR_ENV: &str = "PROCESSLOCK_DIR";

/// `runtime/locks` under the nearest ancestor of `cwd` that holds a `package.json`, else under
/// `cwd` itself. A service started from a sub-directory of its project still finds the project's
/// locks.
pub fn default_dir(cwd: &Path) -> PathBuf {
    let root = cwd
        .ancestors()
        .find(|p| p.join("package.json").is_file())
        .unwrap_or(cwd);
    root.join("runtime").join("locks")
}

/// The lock directory for an explicit `dir` option, else `$PROCESSLOCK_DIR`, else the default.
/// Relative paths are taken from the working directory. Nothing is created here.
pub fn resolve_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let cwd = || std::env::current_dir().map_err(|e| Error::io("getcwd", ".", e));
    let chosen = match explicit {
        Some(p) if !p.as_os_str().is_empty() => Some(p.to_path_buf()),
        _ => std::env::var_os(DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    };
    Ok(match chosen {
        Some(p) if p.is_absolute() => p,
        Some(p) => cwd()?.join(p),
        None => default_dir(&cwd()?),
    })
}

#[cfg(unix)]
const NOT_A_DIRECTORY: i32 = libc::ENOTDIR;
/// `ERROR_DIRECTORY` ("The directory name is invalid"); std reads it as `NotADirectory`.
#[cfg(windows)]
const NOT_A_DIRECTORY: i32 = 267;

/// Creates the directory (and its parents) when missing, without write access for group or
/// others whatever the umask. A file in its place is an error, not something to replace.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::io(
            "mkdir",
            dir,
            std::io::Error::from_raw_os_error(NOT_A_DIRECTORY),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir_all(dir).map_err(|e| Error::io("mkdir", dir, e))
        }
        Err(e) => Err(Error::io("stat", dir, e)),
    }
}

#[cfg(unix)]
fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::perms::DIR_MODE)
        .create(dir)
}

#[cfg(not(unix))]
fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_uses_nearest_package_root() {
        let base = std::env::temp_dir().join(format!("pl-dir-{}", std::process::id()));
        let deep = base.join("app/server/lib");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(default_dir(&deep), deep.join("runtime/locks"));
        std::fs::write(base.join("app/package.json"), "{}").unwrap();
        assert_eq!(default_dir(&deep), base.join("app/runtime/locks"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn ensure_dir_refuses_a_file() {
        let f = std::env::temp_dir().join(format!("pl-dirfile-{}", std::process::id()));
        std::fs::write(&f, "x").unwrap();
        let e = ensure_dir(&f).unwrap_err();
        assert_eq!(e.code(), "LOCK_IO");
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
        std::fs::remove_file(&f).unwrap();
    }
}
