//! A test CA and a server certificate, and a private server that offers TLS with them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{is_root, PgServer};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`), a second unrelated CA (`other-ca.pem`), and a server certificate for the
/// name `localhost` only, signed by the first.
pub fn make_certs(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    if is_root() {
        for f in ["server.key", "server.pem"] {
            let ok = Command::new("chown")
                .args(["postgres:", dir.join(f).to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
    }
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(dir.join("server.key"), mode).unwrap();
}

/// A private server with `ssl=on` and the certificate of `make_certs`; also returns its
/// directory, which holds `ca.pem` and `other-ca.pem`.
pub fn tls_server() -> Option<(PgServer, PathBuf)> {
    let server = PgServer::start_with(|dir| {
        make_certs(dir);
        vec![
            "ssl=on".into(),
            format!("ssl_cert_file={}", dir.join("server.pem").display()),
            format!("ssl_key_file={}", dir.join("server.key").display()),
        ]
    })?;
    let dir = server.dir.clone();
    Some((server, dir))
}
