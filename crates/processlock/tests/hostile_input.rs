//! Input a hostile or careless caller controls: a process name that would make an unreadable
//! record or forge log lines is refused before anything is written.

mod support;

use std::fs;

use processlock::{acquire, inspect, Inspection, MAX_PROCESS_NAME_LEN};
use support::TestDir;

#[test]
fn child_role() {
    support::child_role();
}

#[test]
fn an_oversized_or_unprintable_process_name_is_refused_and_nothing_is_written() {
    let dir = TestDir::new("process-name");
    let t = dir.target("backend", Some("short"));
    let huge = "x".repeat(5 * 1024 * 1024);
    let too_long = "y".repeat(MAX_PROCESS_NAME_LEN + 1);
    for bad in [
        huge.as_str(),
        too_long.as_str(),
        "\u{1b}[2J",
        "api\n[FATAL] forged",
    ] {
        let e = acquire(&t, Some(bad)).unwrap_err();
        assert_eq!(e.code(), "LOCK_INVALID_OPTION");
        assert!(e
            .to_string()
            .starts_with("LOCK_INVALID_OPTION: processName "));
        assert!(
            e.to_string().len() < 200,
            "the message does not echo the name"
        );
        assert!(!t.dir.exists(), "nothing may be created for a refused name");
    }
    // The longest allowed name is written and read back whole.
    let longest = "z".repeat(MAX_PROCESS_NAME_LEN);
    let a = acquire(&t, Some(&longest)).unwrap();
    assert!(matches!(inspect(&t.path).unwrap(), Inspection::Held(r) if r.process_name == longest));
    assert!(a.lock.release().unwrap());
    // Only the directory's removal guard, which is never removed, stays.
    let left: Vec<_> = fs::read_dir(&t.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != ".processlock.guard")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    dir.finish();
}
