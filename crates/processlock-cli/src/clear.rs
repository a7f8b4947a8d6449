//! `processlock clear`: removes the lock files no running process holds (and, with `--force`,
//! the ones that are held), plus temp files of acquirers that died half-way.

use std::path::Path;

use processlock::{
    force_remove, list_locks, remove_if_stale, sweep_orphan_temps, Error, Removal, Result,
};

/// Returns the exit status: 0, or 1 if some file could not be handled.
pub fn run(dir: &Path, force: bool) -> Result<i32> {
    let shown = dir.display();
    let locks = list_locks(dir)?;
    let mut status = 0;
    let mut removed = 0usize;
    let mut kept: Vec<u32> = Vec::new();
    let mut forced: Vec<u32> = Vec::new();
    let mut kept_unknown = false;
    let mut forced_any = false;
    for lock in &locks {
        let name = lock
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match remove_if_stale(&lock.path) {
            Ok(Removal::Absent) => {}
            Ok(Removal::RemovedStale(r)) => {
                removed += 1;
                println!("removed stale   {name} (PID {} is not running)", r.pid);
            }
            Ok(Removal::RemovedInvalid(why)) => {
                removed += 1;
                println!("removed invalid {name} ({why})");
            }
            Ok(Removal::Held(r)) if force => {
                match force_remove(&lock.path) {
                    Ok(_) => {
                        removed += 1;
                        forced_any = true;
                        if r.pid == 0 {
                            println!("removed HELD    {name} (its holder wrote no record and keeps running)");
                        } else {
                            println!("removed HELD    {name} (PID {} keeps running)", r.pid);
                            forced.push(r.pid);
                        }
                    }
                    Err(e) => {
                        status = 1;
                        eprintln!("processlock: {e}");
                    }
                }
            }
            Ok(Removal::Held(r)) => {
                if r.pid == 0 {
                    kept_unknown = true;
                    println!("kept            {name} (held by a process that wrote no record; find it with: fuser -v {})", lock.path.display());
                } else {
                    let who = if r.process_name.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", r.process_name)
                    };
                    println!(
                        "kept            {name} (held by running PID {}{who})",
                        r.pid
                    );
                    kept.push(r.pid);
                }
            }
            Err(e @ Error::NotAFile { .. }) => {
                println!("left            {name}: {e}");
            }
            Err(e) => {
                status = 1;
                eprintln!("processlock: {e}");
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
            eprintln!("processlock: {e}");
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
    if removed == 0 && kept.is_empty() && !kept_unknown {
        println!("Nothing to clear in {shown}");
    } else if removed == 0 {
        println!("Nothing removed in {shown}");
    }
    if !kept.is_empty() || kept_unknown {
        let pids = pid_list(&kept);
        println!();
        println!("Held locks belong to running processes and were kept. To stop them: pm2 stop all (or kill {pids}), then processlock clear.");
        println!(
            "processlock clear --force removes their files anyway (the processes keep running)."
        );
    }
    if forced_any {
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
