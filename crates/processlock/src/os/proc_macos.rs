//! Process start identity on macOS: the BSD start time from `proc_pidinfo(PROC_PIDTBSDINFO)`.

use super::ProcessStart;

pub fn process_start(pid: u32) -> Option<ProcessStart> {
    let pid = libc::c_int::try_from(pid).ok()?;
    // SAFETY: `proc_bsdinfo` is a plain C struct of integers and byte arrays, for which all zero
    // bytes are a valid value.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: the buffer is `info`, a live `proc_bsdinfo`, and `size` is exactly its size, so the
    // kernel writes within it; the call keeps no pointer.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    if n != size {
        return None;
    }
    let (sec, usec) = (info.pbi_start_tvsec, info.pbi_start_tvusec);
    const SZOMB: u32 = 5; // <sys/proc.h>: p_stat of a zombie
    Some(ProcessStart {
        token: format!("darwin:{sec}.{usec:06}"),
        wall_ms: Some(sec as i64 * 1000 + usec as i64 / 1000),
        zombie: info.pbi_status == SZOMB,
    })
}

/// The real and effective user a process runs as.
pub fn process_uids(pid: u32) -> Option<(u32, u32)> {
    let pid = libc::c_int::try_from(pid).ok()?;
    // SAFETY: as in `process_start`.
    let mut info: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: as in `process_start`.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    (n == size).then_some((info.pbi_ruid, info.pbi_uid))
}
