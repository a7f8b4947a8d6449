//! `processlock clear`: removes the lock files no running process holds (and, with `--force`,
//! the ones that are held), plus temp files of acquirers that died half-way. Files that are not
//! lock records (another program's `*.lock` in a shared directory) are listed and kept.

use std::path::Path;

use processlock::report::printable;
use processlock::{
    check_dir, force_remove, list_locks, remove_if_stale, sweep_orphan_temps, Error, Removal,
    Result,
};

/// Returns the exit status: 0, or 1 if some file could not be handled.
pub fn run(dir: &Path, force: bool) -> Result<i32> {
    check_dir(dir)?;
    let shown = printable(&dir.to_string_lossy()).into_owned();
    let locks = list_locks(dir)?;
    let mut status = 0;
    let mut removed = 0usize;
    let mut kept: Vec<u32> = Vec::new();
    let mut forced: Vec<u32> = Vec::new();
    let mut kept_elsewhere = 0usize;
    let mut unknown = 0usize;
    for lock in &locks {
        let name = lock
            .path
            .file_name()
            .map(|n| printable(&n.to_string_lossy()).into_owned())
            .unwrap_or_default();
        match remove_if_stale(&lock.path) {
            Ok(Removal::Absent) => {}
            Ok(Removal::RemovedStale(r)) => {
                removed += 1;
                println!("removed stale   {name} (PID {} is not running)", r.pid);
            }
            Ok(Removal::Unknown(why)) => {
                unknown += 1;
                println!("kept unknown    {name} ({})", printable(&why));
            }
            Ok(Removal::Held(r)) if force => match force_remove(&lock.path) {
                Ok(_) => {
                    removed += 1;
                    println!("removed HELD    {name} (PID {} keeps running)", r.pid);
                    forced.push(r.pid);
                }
                Err(e) => {
                    status = 1;
                    eprintln!("processlock: {}", printable(&e.to_string()));
                }
            },
            Ok(Removal::Held(r)) => {
                let who = if r.process_name.is_empty() {
                    String::new()
                } else {
                    format!(", {}", printable(&r.process_name))
                };
                match r.other_host() {
                    None => {
                        println!(
                            "kept            {name} (held by running PID {}{who})",
                            r.pid
                        );
                        kept.push(r.pid);
                    }
                    Some(host) => {
                        println!(
                            "kept            {name} (held by PID {} on host {}{who})",
                            r.pid,
                            printable(host)
                        );
                        kept_elsewhere += 1;
                    }
                }
            }
            Err(e @ Error::NotAFile { .. }) => {
                println!("left            {name}: {}", printable(&e.to_string()));
            }
            Err(e) => {
                status = 1;
                eprintln!("processlock: {}", printable(&e.to_string()));
            }
        }
    }
    match sweep_orphan_temps(dir, None) {
        Ok(paths) if !paths.is_empty() => {
            removed += paths.len();
            println!(
                "removed {} temp file(s) left by acquirers that died",
                paths.len()
            );
        }
        Ok(_) => {}
        Err(e) => {
            status = 1;
            eprintln!("processlock: {}", printable(&e.to_string()));
        }
    }

    if locks.is_empty() && removed == 0 {
        if dir.is_dir() {
            println!("No locks in {shown}");
        } else {
            println!("No locks: {shown} does not exist (yet)");
        }
        return Ok(status);
    }
    if removed == 0 && kept.is_empty() && kept_elsewhere == 0 && unknown == 0 {
        println!("Nothing to clear in {shown}");
    } else if removed == 0 {
        println!("Nothing removed in {shown}");
    }
    if !kept.is_empty() {
        let pids = pid_list(&kept);
        println!();
        println!("Held locks belong to running processes and were kept. To stop them: pm2 stop all (or kill {pids}), then processlock clear.");
        println!(
            "processlock clear --force removes their files anyway (the processes keep running)."
        );
    }
    if kept_elsewhere > 0 {
        println!();
        println!("{kept_elsewhere} lock(s) are held by processes on other hosts and were kept: stop those processes there.");
    }
    if unknown > 0 {
        println!();
        println!("{unknown} file(s) are not lock records of processlock and were kept, with --force too: another program may use them. Remove them by hand if nothing does.");
    }
    if !forced.is_empty() {
        eprintln!();
        eprintln!("WARNING: this only deleted the lock files; it did NOT stop the running processes ({}).", pid_list(&forced));
        eprintln!("WARNING: a second instance can now start next to them. To stop them: pm2 stop all, then processlock clear.");
    }
    Ok(status)
}

fn pid_list(pids: &[u32]) -> String {
    if pids.is_empty() {
        return "<PID>".to_string();
    }
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
