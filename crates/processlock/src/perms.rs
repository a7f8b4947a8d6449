//! Who may change the lock directory, or the path that leads to it.
//!
//! A lock is only as safe as the directory that holds its file, and as the path to that
//! directory. Whoever may delete entries in the lock directory can remove a running holder's file
//! and let a second instance start beside it. Whoever may rename a directory on the way to it can
//! move the lock directory away (the next instance makes a fresh one and starts beside the
//! running one) or put a link to another directory in its place. Whoever may create files in it
//! can plant one at a path we rely on (the lock file, the removal guard) that blocks the service
//! or that `replace` would trust. So, as sshd does for `authorized_keys` (`StrictModes`) and a
//! database server for its data directory, a path is accepted only when nobody but root and the
//! user running this process can change what it names:
//!
//! * every directory on the way (from `/`) belongs to root or to us, and gives no write access
//!   to group or others unless it is sticky (`/tmp`: others may not rename or delete what is not
//!   theirs there; what we rely on in it must then be ours, which the next directory's owner
//!   check says);
//! * a symbolic link on the way is followed only when it lies in such a directory, and, in a
//!   sticky one, belongs to root or to us (anyone may make links in `/tmp`);
//! * the lock directory itself belongs to root or to us (this holds for root too: a directory
//!   owned by a service account lets that account remove root's lock files), and is not writable
//!   by others, sticky or not. Group write is allowed there: that is how services of several users
//!   share a lock directory (`chmod 2770`), trusting that group.
//!
//! The walk looks at each component from `/` down with `lstat`. Everything above the first
//! component found wrong passed the same rules, so no other user can change it while we look:
//! the first directory another user can change is found, whatever that user does meanwhile. For
//! the same reason a path that passed stays valid: only root or we can change it. The answer is
//! remembered per directory and process (a later `chmod` by root or us is not noticed), so the
//! check costs nothing per acquire.

use std::path::Path;
#[cfg(unix)]
use std::path::PathBuf;

use crate::error::Result;
#[cfg(unix)]
use crate::error::{DirProblem, Error};
use crate::os::DirFacts;

/// The mode of the directories we create (parents included), before the umask.
#[cfg(unix)]
pub(crate) const DIR_MODE: u32 = 0o750;

#[cfg(unix)]
const GROUP_WRITE: u32 = 0o020;
#[cfg(unix)]
const OTHERS_WRITE: u32 = 0o002;
#[cfg(unix)]
const STICKY: u32 = 0o1000;
/// As many symbolic links as Linux follows in one path before it answers `ELOOP`.
#[cfg(unix)]
const MAX_LINKS: u32 = 40;

/// Refuses a lock directory that someone other than root and this process's user could change,
/// or whose path they could (`Error::UnsafeDir`). A directory that is missing (or cannot be
/// looked at) passes if the part of its path that exists does: creating files in it fails with
/// its own, clearer error.
#[cfg(unix)]
pub fn check_dir(dir: &Path) -> Result<()> {
    match walk(dir).found {
        Found::Unsafe(why) => Err(Error::UnsafeDir {
            path: dir.to_path_buf(),
            why,
        }),
        Found::Safe(_) | Found::Unknown => Ok(()),
    }
}

/// `check_dir`, remembered per directory for the life of the process once it passed. `None`:
/// the directory is not there yet (or cannot be looked at); it is looked at again next time.
#[cfg(unix)]
pub(crate) fn check_dir_once(dir: &Path) -> Result<Option<DirFacts>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static PASSED: Mutex<Option<HashMap<PathBuf, DirFacts>>> = Mutex::new(None);
    let mut passed = PASSED.lock().unwrap_or_else(|p| p.into_inner());
    let passed = passed.get_or_insert_with(HashMap::new);
    if let Some(facts) = passed.get(dir) {
        return Ok(Some(*facts));
    }
    match walk(dir).found {
        Found::Safe(facts) => {
            passed.insert(dir.to_path_buf(), facts);
            Ok(Some(facts))
        }
        Found::Unknown => Ok(None),
        Found::Unsafe(why) => Err(Error::UnsafeDir {
            path: dir.to_path_buf(),
            why,
        }),
    }
}

/// `Some(mode)` when the directory's group or every user may create and rename files in it
/// (whatever the sticky bit says: it keeps them from touching others' files, not from adding
/// their own).
#[cfg(unix)]
pub(crate) fn group_or_others_may_write(dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(dir)?.mode();
    Ok((mode & (GROUP_WRITE | OTHERS_WRITE) != 0).then_some(mode))
}

/// The directory's real path, with symbolic links resolved only where nobody but root and this
/// process's user could have placed them (see `walk`).
#[cfg(unix)]
pub(crate) fn trusted_real_path(dir: &Path) -> (PathBuf, bool) {
    let walked = walk(dir);
    let exists = matches!(walked.found, Found::Safe(_));
    (walked.real, exists)
}

#[cfg(unix)]
pub(crate) struct Walked {
    /// The real path as far as the walk could trust it (symbolic links resolved, `..` taken
    /// physically); from the first component that is missing, not a directory, or not to be
    /// trusted on, the rest of the path as given (`..` there taken lexically: a missing
    /// directory is no link). A later walk of it stops at the same component.
    pub real: PathBuf,
    pub found: Found,
}

#[cfg(unix)]
pub(crate) enum Found {
    Safe(DirFacts),
    Unsafe(DirProblem),
    /// Missing, not a directory, not visible to us, or too many links.
    Unknown,
}

/// A directory the walk went through: its owner and mode, and whether the rules for a
/// directory above the lock directory were applied to it yet.
#[cfg(unix)]
struct Level {
    uid: u32,
    gid: u32,
    mode: u32,
    checked_as_parent: bool,
}

#[cfg(unix)]
impl Level {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Level {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
            checked_as_parent: false,
        }
    }
}

/// Walks from `/` to `dir`, one component at a time, checking each directory and link on the
/// way by the rules at the top of this file.
#[cfg(unix)]
pub(crate) fn walk(dir: &Path) -> Walked {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::unix::fs::MetadataExt;

    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(dir),
            Err(_) => {
                return Walked {
                    real: dir.to_path_buf(),
                    found: Found::Unknown,
                }
            }
        }
    };
    let parts = |p: &Path| -> Vec<OsString> {
        use std::path::Component;
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    // The rest of the path as given, after the real prefix `at`.
    let rest = |mut at: PathBuf, todo: VecDeque<OsString>| {
        for part in todo {
            if part == ".." {
                at.pop();
            } else {
                at.push(part);
            }
        }
        at
    };
    let Ok(root) = std::fs::symlink_metadata("/") else {
        return Walked {
            real: absolute,
            found: Found::Unknown,
        };
    };
    // SAFETY: geteuid has no preconditions, touches no memory of ours and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut todo: VecDeque<OsString> = parts(&absolute).into();
    let mut at = PathBuf::from("/");
    let mut levels = vec![Level::of(&root)];
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            if levels.len() > 1 {
                at.pop();
                levels.pop();
            }
            continue;
        }
        // Looking inside `at`: it is a directory above the lock directory, or above a link.
        let top = levels.last_mut().expect("the root level stays");
        if !top.checked_as_parent {
            if let Some(why) = parent_problem(&at, top, me) {
                todo.push_front(name);
                return Walked {
                    real: rest(at, todo),
                    found: Found::Unsafe(why),
                };
            }
            top.checked_as_parent = true;
        }
        let in_sticky = top.mode & STICKY != 0;
        let next = at.join(&name);
        let Ok(m) = std::fs::symlink_metadata(&next) else {
            todo.push_front(name);
            return Walked {
                real: rest(at, todo),
                found: Found::Unknown,
            };
        };
        if m.file_type().is_symlink() {
            if in_sticky && m.uid() != me && m.uid() != 0 {
                todo.push_front(name);
                return Walked {
                    real: rest(at, todo),
                    found: Found::Unsafe(DirProblem::LinkOwnedByOther {
                        at: next,
                        owner: m.uid(),
                        me,
                    }),
                };
            }
            links += 1;
            let target = match std::fs::read_link(&next) {
                Ok(target) if links <= MAX_LINKS => target,
                _ => {
                    todo.push_front(name);
                    return Walked {
                        real: rest(at, todo),
                        found: Found::Unknown,
                    };
                }
            };
            if target.is_absolute() {
                at = PathBuf::from("/");
                levels.truncate(1);
            }
            for part in parts(&target).into_iter().rev() {
                todo.push_front(part);
            }
            continue;
        }
        if !m.is_dir() {
            todo.push_front(name);
            return Walked {
                real: rest(at, todo),
                found: Found::Unknown,
            };
        }
        at = next;
        levels.push(Level::of(&m));
    }
    let top = levels.last().expect("the root level stays");
    let found = match lock_dir_problem(top, me) {
        Some(why) => Found::Unsafe(why),
        None => Found::Safe(DirFacts {
            shared_with_group: top.mode & GROUP_WRITE != 0,
            owner: top.uid,
            group: top.gid,
        }),
    };
    Walked { real: at, found }
}

/// The rules for the lock directory itself.
#[cfg(unix)]
fn lock_dir_problem(dir: &Level, me: u32) -> Option<DirProblem> {
    if dir.mode & OTHERS_WRITE != 0 {
        return Some(DirProblem::WritableByOthers { mode: dir.mode });
    }
    if dir.uid != me && dir.uid != 0 {
        return Some(DirProblem::OwnedByOther { owner: dir.uid, me });
    }
    None
}

/// The rules for a directory above the lock directory (or holding a link on the way).
#[cfg(unix)]
fn parent_problem(at: &Path, dir: &Level, me: u32) -> Option<DirProblem> {
    if dir.mode & (GROUP_WRITE | OTHERS_WRITE) != 0 && dir.mode & STICKY == 0 {
        return Some(DirProblem::ParentWritable {
            at: at.to_path_buf(),
            mode: dir.mode,
        });
    }
    if dir.uid != me && dir.uid != 0 {
        return Some(DirProblem::ParentOwnedByOther {
            at: at.to_path_buf(),
            owner: dir.uid,
            me,
        });
    }
    None
}

/// Windows directories are protected by ACLs, which these rules do not describe: no check.
#[cfg(not(unix))]
pub fn check_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_dir_once(_dir: &Path) -> Result<Option<DirFacts>> {
    Ok(Some(DirFacts {
        shared_with_group: false,
    }))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pl-perms-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn every_directory_on_the_way_is_looked_at() {
        let base = scratch("way");
        let locks = base.join("shared/app/locks");
        std::fs::create_dir_all(&locks).unwrap();
        for d in ["shared", "shared/app", "shared/app/locks"] {
            chmod(&base.join(d), 0o755);
        }
        assert!(matches!(walk(&locks).found, Found::Safe(_)));

        // A parent others (or the group) may write: they could rename the lock directory.
        for mode in [0o777, 0o775] {
            chmod(&base.join("shared"), mode);
            match walk(&locks).found {
                Found::Unsafe(DirProblem::ParentWritable { at, .. }) => {
                    assert_eq!(at, base.join("shared"))
                }
                _ => panic!("a parent of mode {mode:o} was accepted"),
            }
            assert!(check_dir(&locks).is_err());
        }
        // Sticky, as /tmp: others may not rename what is ours.
        chmod(&base.join("shared"), 0o1777);
        assert!(matches!(walk(&locks).found, Found::Safe(_)));
        // The lock directory itself may not be writable by others, sticky or not.
        chmod(&locks, 0o1777);
        assert!(matches!(
            walk(&locks).found,
            Found::Unsafe(DirProblem::WritableByOthers { .. })
        ));
        // Group write on the lock directory is how a group shares it.
        chmod(&locks, 0o2770);
        assert!(matches!(
            walk(&locks).found,
            Found::Safe(DirFacts {
                shared_with_group: true,
                ..
            })
        ));
        chmod(&base.join("shared"), 0o755);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn links_are_followed_where_only_we_could_have_made_them() {
        let base = scratch("links");
        let real = base.join("real/locks");
        std::fs::create_dir_all(&real).unwrap();
        chmod(&base.join("real"), 0o755);
        chmod(&real, 0o750);
        symlink(base.join("real"), base.join("current")).unwrap();
        symlink("real/locks/../locks", base.join("relative")).unwrap();
        let real = std::fs::canonicalize(&real).unwrap();
        for given in [base.join("current/locks"), base.join("relative")] {
            let walked = walk(&given);
            assert!(matches!(walked.found, Found::Safe(_)));
            assert_eq!(walked.real, real);
        }
        // In a directory others may write, a link is not followed: the walk stops there, and
        // the real path keeps the link, so that a later check stops at it too.
        chmod(&base, 0o777);
        let walked = walk(&base.join("current/locks"));
        assert!(matches!(
            walked.found,
            Found::Unsafe(DirProblem::ParentWritable { .. })
        ));
        assert_eq!(walked.real, base.join("current/locks"));
        chmod(&base, 0o755);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn missing_directories_keep_their_place_in_the_real_path() {
        let base = scratch("missing");
        let walked = walk(&base.join("new/../locks/x"));
        assert!(matches!(walked.found, Found::Unknown));
        assert_eq!(
            walked.real,
            std::fs::canonicalize(&base).unwrap().join("locks/x")
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
