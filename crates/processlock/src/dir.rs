//! Where lock files live: one rule shared by the addon and the command.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable that overrides the default lock directory.
pub const DIR_ENV: &str = "PROCESSLOCK_DIR";

/// `runtime/locks` under the nearest ancestor of `cwd` that holds a `package.json`, else under
/// `cwd` itself (see `project_locks` for a release of a release-directory deploy). A service
/// started from a sub-directory of its project still finds the project's locks.
pub(crate) fn default_dir(cwd: &Path) -> PathBuf {
    project_locks(package_root(cwd).unwrap_or(cwd))
}

/// The default directory of an application whose entry script is `entry`: `runtime/locks` under
/// the nearest ancestor of the script holding a `package.json` (see `project_locks`), so that
/// the same service finds the same lock however and from wherever it is started (PM2, systemd,
/// cron). Without an entry script, or without a `package.json` above it, the rule of
/// `default_dir` applies to `cwd`.
pub fn app_default_dir(entry: Option<&Path>, cwd: &Path) -> PathBuf {
    let entry = entry.map(|e| {
        let absolute = cwd.join(e);
        // Windows: canonical paths are verbatim (`\\?\C:\...`), which no user writes; the entry
        // script is taken as given there.
        if cfg!(unix) {
            std::fs::canonicalize(&absolute).unwrap_or(absolute)
        } else {
            absolute
        }
    });
    match entry
        .as_deref()
        .and_then(Path::parent)
        .and_then(package_root)
    {
        Some(root) => project_locks(root),
        None => default_dir(cwd),
    }
}

/// The lock directory of the project whose root is `root`: its `runtime/locks`, unless the
/// project is a release of a release-directory deploy (Capistrano, Deployer, Ansistrano:
/// `<base>/releases/<name>`, with `<base>/current` a symbolic link into `<base>/releases`).
/// Then every release is the same service, and the old release's process and the new one's
/// must meet at one lock: `<base>/shared/runtime/locks`, where those tools keep what outlives a
/// release (what a `runtime` linked into `shared/` gives too). A project below the release's
/// root keeps its place: `<base>/shared/<path in the release>/runtime/locks`. The deploy's base
/// itself (an operator's working directory) names the same directory.
fn project_locks(root: &Path) -> PathBuf {
    let locks = |dir: PathBuf| dir.join("runtime").join("locks");
    // The release a path through `current` leads to is known by the real path only (on
    // Windows canonical paths are verbatim, `\\?\C:\...`: taken as given there).
    let real = match cfg!(unix) {
        true => std::fs::canonicalize(root).ok(),
        false => None,
    };
    match deploy_of(real.as_deref().unwrap_or(root)) {
        Some((base, inside)) => locks(base.join("shared").join(inside)),
        None => locks(root.to_path_buf()),
    }
}

/// `(<base>, <path of root in its release>)` when `root` is a deploy's base or lies in one of
/// its releases (see `project_locks`).
fn deploy_of(root: &Path) -> Option<(&Path, &Path)> {
    if is_deploy_base(root) {
        return Some((root, Path::new("")));
    }
    root.ancestors().find_map(|release| {
        let releases = release.parent()?;
        let base = releases.parent()?;
        if releases.file_name()? != "releases" || !is_deploy_base(base) {
            return None;
        }
        Some((base, root.strip_prefix(release).ok()?))
    })
}

/// Whether `base/current` is a symbolic link into `base/releases`: the mark every
/// release-directory deploy tool leaves. The link may point at any release (a new one starts
/// before the link is switched to it, an old one runs on after) or at none that exists yet.
fn is_deploy_base(base: &Path) -> bool {
    let Ok(target) = std::fs::read_link(base.join("current")) else {
        return false;
    };
    let releases = base.join("releases");
    let real = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let target = real(base.join(target));
    target != real(releases.clone()) && target.starts_with(real(releases))
}

/// The nearest ancestor of `start` (itself included) with a `package.json` that describes a
/// project. Build output directories often hold one that only sets the module `type` for the
/// files below it (`{ "type": "commonjs" }`): that is not the project's root.
fn package_root(start: &Path) -> Option<&Path> {
    start
        .ancestors()
        .find(|p| is_project_manifest(&p.join("package.json")))
}

fn is_project_manifest(file: &Path) -> bool {
    let Ok(text) = std::fs::read(file) else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&text) {
        Ok(fields) => !(fields.len() == 1 && fields.contains_key("type")),
        // Unreadable as JSON: still a package.json someone put there; count it.
        Err(_) => true,
    }
}

/// The lock directory for an explicit `dir` option, else `$PROCESSLOCK_DIR`, else the default
/// (`default_dir` of the working directory). Relative paths are taken from the working
/// directory. Nothing is created here.
pub fn resolve_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    resolve_dir_or(explicit, |cwd| Ok(default_dir(cwd)))
}

/// `resolve_dir` with the default directory chosen by `default` (given the working directory).
pub fn resolve_dir_or(
    explicit: Option<&Path>,
    default: impl FnOnce(&Path) -> Result<PathBuf>,
) -> Result<PathBuf> {
    let cwd = || std::env::current_dir().map_err(|e| Error::io("getcwd", ".", e));
    let chosen = match explicit {
        Some(p) if !p.as_os_str().is_empty() => Some(p.to_path_buf()),
        _ => std::env::var_os(DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    };
    match chosen {
        Some(p) if p.is_absolute() => Ok(p),
        Some(p) => Ok(cwd()?.join(p)),
        None => default(&cwd()?),
    }
}

/// The directory's real path: symlinks and `.`/`..` resolved, so that one directory reached two
/// ways is one lock directory. Components that do not exist yet (the directory is made at the
/// first acquire) cannot be symlinks: they are appended to the real path of the deepest one that
/// exists, `..` among them taken lexically. The second value tells whether the whole directory
/// existed (then the answer can be kept: it will not change when the directory is made).
pub fn real_dir(dir: &Path) -> (PathBuf, bool) {
    if cfg!(windows) {
        // `canonicalize` answers `\\?\` paths there, which people do not recognise.
        return (dir.to_path_buf(), true);
    }
    if let Ok(real) = std::fs::canonicalize(dir) {
        return (real, true);
    }
    let mut missing = Vec::new();
    let mut existing = dir;
    let real = loop {
        match existing.parent() {
            Some(parent) => {
                missing.push(existing.file_name());
                existing = parent;
                if let Ok(real) = std::fs::canonicalize(existing) {
                    break real;
                }
            }
            None => return (dir.to_path_buf(), false),
        }
    };
    let mut out = real;
    for part in missing.into_iter().rev() {
        match part {
            Some(name) => out.push(name),
            // `..` (file_name() is None for it): a missing component is no symlink.
            None => {
                out.pop();
            }
        }
    }
    (out, false)
}

#[cfg(unix)]
const NOT_A_DIRECTORY: i32 = libc::ENOTDIR;
/// `ERROR_DIRECTORY` ("The directory name is invalid"); std reads it as `NotADirectory`.
#[cfg(windows)]
const NOT_A_DIRECTORY: i32 = 267;

/// Creates the directory (and its parents) when missing, without write access for group or
/// others whatever the umask. A file in its place is an error, not something to replace.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
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
    fn app_default_dir_follows_the_entry_script_not_the_working_directory() {
        let base = std::env::temp_dir().join(format!("pl-appdir-{}", std::process::id()));
        let dist = base.join("app/dist");
        std::fs::create_dir_all(&dist).unwrap();
        std::fs::write(base.join("app/package.json"), r#"{"name":"app"}"#).unwrap();
        // A build directory's module-type marker is not the project's root.
        std::fs::write(dist.join("package.json"), r#"{ "type": "commonjs" }"#).unwrap();
        let entry = dist.join("server.js");
        std::fs::write(&entry, "").unwrap();
        let elsewhere = base.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let locks = base.join("app/runtime/locks");
        assert_eq!(app_default_dir(Some(&entry), &elsewhere), locks);
        // Relative to the working directory, as `process.argv[1]` may be.
        assert_eq!(
            app_default_dir(Some(Path::new("dist/server.js")), &base.join("app")),
            locks
        );
        // No entry script: the working directory's rule.
        assert_eq!(
            app_default_dir(None, &elsewhere),
            elsewhere.join("runtime/locks")
        );
        assert_eq!(default_dir(&dist), locks);
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A release-directory deploy (Capistrano, Deployer, Ansistrano): every release, the
    /// deploy's base and a project below a release's root find the shared directory.
    #[cfg(unix)]
    #[test]
    fn releases_of_one_deploy_share_one_lock_directory() {
        use std::os::unix::fs::symlink;
        let base = std::env::temp_dir().join(format!("pl-deploy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for release in ["v1", "v2"] {
            let dist = base.join("releases").join(release).join("dist");
            std::fs::create_dir_all(&dist).unwrap();
            std::fs::write(dist.join("server.js"), "").unwrap();
            std::fs::write(dist.join("../package.json"), r#"{"name":"app"}"#).unwrap();
        }
        let base = std::fs::canonicalize(&base).unwrap();
        let entry = |release: &str| base.join("releases").join(release).join("dist/server.js");
        let in_release = |release: &str| base.join("releases").join(release).join("runtime/locks");
        let shared = base.join("shared/runtime/locks");
        let elsewhere = std::env::temp_dir();

        // No `current` link yet: not a deploy, each project keeps its own directory.
        assert_eq!(
            app_default_dir(Some(&entry("v1")), &elsewhere),
            in_release("v1")
        );
        // `current` as Deployer writes it (relative), then as Capistrano does (absolute).
        for target in [PathBuf::from("releases/v1"), base.join("releases/v2")] {
            let _ = std::fs::remove_file(base.join("current"));
            symlink(&target, base.join("current")).unwrap();
            for release in ["v1", "v2"] {
                assert_eq!(app_default_dir(Some(&entry(release)), &elsewhere), shared);
                assert_eq!(
                    default_dir(&base.join("releases").join(release).join("dist")),
                    shared
                );
            }
            assert_eq!(
                default_dir(&base.join("current/dist")),
                shared,
                "through the link"
            );
            assert_eq!(default_dir(&base), shared, "the deploy's base");
        }
        // A project below the release's root (a monorepo) keeps its place in `shared`.
        let api = base.join("releases/v2/services/api");
        std::fs::create_dir_all(&api).unwrap();
        std::fs::write(api.join("package.json"), r#"{"name":"api"}"#).unwrap();
        assert_eq!(
            default_dir(&api),
            base.join("shared/services/api/runtime/locks")
        );
        // A link to something other than a release, or `current` as a directory: not a deploy.
        std::fs::remove_file(base.join("current")).unwrap();
        symlink(&elsewhere, base.join("current")).unwrap();
        assert_eq!(
            app_default_dir(Some(&entry("v1")), &elsewhere),
            in_release("v1")
        );
        std::fs::remove_file(base.join("current")).unwrap();
        std::fs::create_dir(base.join("current")).unwrap();
        assert_eq!(
            app_default_dir(Some(&entry("v1")), &elsewhere),
            in_release("v1")
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn real_dir_resolves_symlinks_and_dot_dot_even_below_missing_directories() {
        let base = std::env::temp_dir().join(format!("pl-realdir-{}", std::process::id()));
        let real = base.join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        let real = std::fs::canonicalize(&real).unwrap();
        std::os::unix::fs::symlink(&real, base.join("link")).unwrap();
        assert_eq!(real_dir(&base.join("link")), (real.clone(), true));
        assert_eq!(real_dir(&base.join("link/sub/..")), (real.clone(), true));
        assert_eq!(
            real_dir(&base.join("link/new/../locks")),
            (real.join("locks"), false)
        );
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
