//! Every way libpq gives a client to keep the password out of its command line, against a
//! private server that wants a password (SCRAM): the password file (`~/.pgpass`, `PGPASSFILE`),
//! `PGPASSWORD`, a service file, and the other `PG*` variables. Each case runs in a child process
//! with an environment of its own.

#![cfg(target_os = "linux")]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use processlock::LockName;
use processlock_pg::{acquire, PgOptions};
use support::*;

/// Child: takes the lock with `URL` in its own environment and says how it went.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    assert_eq!(role, "take");
    let opts = PgOptions::new(param("URL").unwrap());
    let name = LockName::new("backend", None).unwrap();
    match acquire(&opts, &name) {
        Ok(held) => {
            report("HELD", &[held.fencing_token().to_string()]);
            held.release().unwrap();
        }
        Err(e) => report("ERR", &[e.code().to_string(), e.to_string()]),
    }
}

/// Runs the child with `url` and exactly the `PG*` variables in `env` (others removed), HOME
/// set to `home`; what it said, and its stderr.
fn take(url: &str, home: &Path, env: &[(&str, String)]) -> (Vec<String>, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for (name, _) in std::env::vars() {
        if name.starts_with("PG") {
            cmd.env_remove(name);
        }
    }
    cmd.env("HOME", home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "take")
        .env("PROCESSLOCK_PG_URL", url)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = stdout
        .lines()
        .find_map(|l| l.strip_prefix("@@"))
        .unwrap_or_else(|| panic!("the child said nothing: {stdout}"))
        .split(' ')
        .map(str::to_string)
        .collect();
    (said, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn temp_home(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("processlock-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_secret(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn held(said: &[String], stderr: &str, what: &str) {
    assert_eq!(said[0], "HELD", "{what}: {said:?}\n{stderr}");
    assert!(!stderr.contains(PASSWORD), "{what}: {stderr}");
}

fn refused(said: &[String], stderr: &str, what: &str) {
    assert_eq!(said[0], "ERR", "{what}: {said:?}");
    assert!(!said.join(" ").contains(PASSWORD), "{what}: {said:?}");
    assert!(!stderr.contains(PASSWORD), "{what}: {stderr}");
}

#[test]
fn the_password_file_and_the_environment_work_as_in_libpq() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let port = server.port;
    let home = temp_home("pgpass");
    let bare = format!("postgres://postgres@127.0.0.1:{port}/postgres");

    // ~/.pgpass, found through HOME; an entry for another port does not match.
    let pgpass = home.join(".pgpass");
    write_secret(
        &pgpass,
        &format!("# ours\n127.0.0.1:1:postgres:postgres:wrong\n127.0.0.1:{port}:postgres:postgres:{PASSWORD}\n"),
        0o600,
    );
    let (said, err) = take(&bare, &home, &[]);
    held(&said, &err, "~/.pgpass");

    // A file that group or others may read is ignored, with one warning line that names it.
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o644)).unwrap();
    let (said, err) = take(&bare, &home, &[]);
    refused(&said, &err, "a readable ~/.pgpass");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("WARNING")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains(&pgpass.display().to_string()), "{err}");
    assert!(warnings[0].contains("group or world access"), "{err}");
    fs::remove_file(&pgpass).unwrap();

    // PGPASSFILE, with wildcards and escapes.
    let elsewhere = home.join("secrets").join("pass");
    fs::create_dir_all(elsewhere.parent().unwrap()).unwrap();
    let escaped = PASSWORD.replace('\\', "\\\\").replace(':', "\\:");
    write_secret(
        &elsewhere,
        &format!("*:{port}:*:postgres:{escaped}\n"),
        0o600,
    );
    let passfile = [("PGPASSFILE", elsewhere.display().to_string())];
    let (said, err) = take(&bare, &home, &passfile);
    held(&said, &err, "PGPASSFILE");

    // Host, port, user and database from the environment, password from the file: a URL that
    // names nothing secret, or nothing at all.
    let all_env = [
        ("PGPASSFILE", elsewhere.display().to_string()),
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", port.to_string()),
        ("PGUSER", "postgres".to_string()),
        ("PGDATABASE", "postgres".to_string()),
    ];
    for url in ["postgres://", "postgresql:///postgres", "dbname=postgres"] {
        let (said, err) = take(url, &home, &all_env);
        held(&said, &err, url);
    }

    // PGPASSWORD; a key=value string; the URL's password wins over both.
    let env_password = [("PGPASSWORD", PASSWORD.to_string())];
    let (said, err) = take(&bare, &home, &env_password);
    held(&said, &err, "PGPASSWORD");
    let kv = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let (said, err) = take(&kv, &home, &env_password);
    held(&said, &err, "key=value with PGPASSWORD");
    let wrong = format!("postgres://postgres:wrong@127.0.0.1:{port}/postgres");
    let (said, err) = take(&wrong, &home, &env_password);
    refused(&said, &err, "the URL's wrong password");

    // A service file with everything but the password.
    let services = home.join("services.conf");
    fs::write(
        &services,
        format!("[locks]\nhost=127.0.0.1\nport={port}\nuser=postgres\ndbname=postgres\n"),
    )
    .unwrap();
    let service_env = [
        ("PGSERVICEFILE", services.display().to_string()),
        ("PGPASSFILE", elsewhere.display().to_string()),
    ];
    let (said, err) = take("service=locks", &home, &service_env);
    held(&said, &err, "service file");

    // A wrong password from the file is reported with where it came from.
    write_secret(&elsewhere, &format!("*:{port}:*:postgres:wrong\n"), 0o600);
    let (said, err) = take(&bare, &home, &passfile);
    refused(&said, &err, "a wrong password in the file");
    let message = said.join(" ");
    assert!(
        message.contains(&elsewhere.display().to_string()),
        "{message}"
    );
    fs::remove_dir_all(&home).unwrap();
}

#[cfg(feature = "tls")]
#[test]
fn pgsslmode_and_pgsslrootcert_are_honoured() {
    let Some((server, dir)) = support::tls::tls_server() else {
        return;
    };
    let home = temp_home("pgsslmode");
    let env = [
        ("PGPASSWORD", PASSWORD.to_string()),
        ("PGSSLMODE", "verify-full".to_string()),
        ("PGSSLROOTCERT", dir.join("ca.pem").display().to_string()),
    ];
    // The certificate names localhost, not 127.0.0.1: verify-full refuses it.
    let url = |host: &str| format!("postgres://postgres@{host}:{}/postgres", server.port);
    let (said, err) = take(&url("127.0.0.1"), &home, &env);
    refused(
        &said,
        &err,
        "PGSSLMODE=verify-full with the wrong host name",
    );
    assert!(said.join(" ").contains("certificate"), "{said:?}");
    let (said, err) = take(&url("localhost"), &home, &env);
    held(&said, &err, "PGSSLMODE=verify-full");
    // The URL's sslmode wins over PGSSLMODE.
    let (said, err) = take(
        &format!("{}?sslmode=require", url("127.0.0.1")),
        &home,
        &env,
    );
    held(&said, &err, "sslmode in the URL");
    fs::remove_dir_all(&home).unwrap();
}
