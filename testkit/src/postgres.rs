//! Running a real PostgreSQL (Debian's `postgresql` package): a cluster of its own in a
//! temporary directory, on a free loopback port, with a `tokenmeter` superuser that signs in
//! with a random password (SCRAM), optionally reachable over TLS only. The tests of what
//! survives an outage stop it and start it again on the same data and port. When dropped it
//! is shut down, else its postmaster is killed by the PID in postmaster.pid.
//!
//! initdb, pg_ctl and postgres refuse to run as root: as root they run as the `postgres`
//! user Debian's package creates (through util-linux's setpriv), and the directory is theirs.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The superuser initdb creates; also the name the URLs carry.
pub const USER: &str = "tokenmeter";

/// Who runs the server's programs when we are root.
const RUN_AS: &str = "postgres";

/// The directory of the server's programs (initdb, pg_ctl, postgres, psql):
/// `POSTGRES_BIN_DIR`, else the newest of Debian's /usr/lib/postgresql/VERSION/bin.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("POSTGRES_BIN_DIR")
        .map(PathBuf::from)
        .or_else(newest_debian_bin_dir);
    match dir {
        Some(d) if d.join("initdb").exists() && d.join("pg_ctl").exists() => d,
        other => panic!(
            "PostgreSQL's initdb and pg_ctl not found{}: `make postgres` installs Debian's \
             postgresql (make test does), or set POSTGRES_BIN_DIR",
            other
                .map(|d| format!(" in {}", d.display()))
                .unwrap_or_default()
        ),
    }
}

fn newest_debian_bin_dir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            // Versions compare by number: 9.6 < 10 < 15.
            let version: Vec<u32> = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    ca_file: Option<PathBuf>,
    /// We are root: the server's programs run as `RUN_AS`.
    as_postgres: bool,
}

impl Postgres {
    /// A fresh cluster accepting password (SCRAM) connections on loopback, TLS or not.
    pub fn start() -> Result<Postgres> {
        Self::launch(false)
    }

    /// A fresh cluster accepting TLS connections only (`hostssl` in pg_hba.conf), with a
    /// server certificate for `localhost` and 127.0.0.1 signed by a CA of its own
    /// ([`Postgres::ca_file`]).
    pub fn start_tls() -> Result<Postgres> {
        Self::launch(true)
    }

    fn launch(tls: bool) -> Result<Postgres> {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("tokenmeter-pg-")
            .tempdir()
            .context("creating the PostgreSQL directory")?;
        // The directory is made with our effective uid: the cheapest way to learn it.
        let as_postgres = fs::metadata(dir.path())?.uid() == 0;
        let owner = if as_postgres {
            check_traversable(dir.path())?;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
            let ids = postgres_ids()?;
            give(dir.path(), Some(ids))?;
            Some(ids)
        } else {
            None
        };
        let socket_dir = dir.path().join("socket");
        fs::create_dir(&socket_dir)?;
        give(&socket_dir, owner)?;

        let password = random_password()?;
        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, format!("{password}\n"))?;
        give(&pwfile, owner)?;
        let data = dir.path().join("data");
        let mut initdb = server_command(&bin, as_postgres, "initdb", dir.path());
        initdb
            .arg("-D")
            .arg(&data)
            .args(["--auth=scram-sha-256", "-U", USER])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C"])
            // Durability matters for the server's commits (fsync=on below), not for the
            // template files a test cluster starts from.
            .arg("--no-sync");
        run(&mut initdb, "initdb")?;
        fs::remove_file(&pwfile)?;

        let mut conf = format!(
            "\n# tokenmeter's test cluster\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = {}\n\
             # The store's durability tests need commits to reach the disk.\n\
             fsync = on\n\
             synchronous_commit = on\n\
             shared_buffers = 16MB\n\
             max_connections = 100\n",
            conf_string(&socket_dir)
        );
        let mut ca_file = None;
        if tls {
            let tls_dir = dir.path().join("tls");
            let (ca, cert, key) = make_certificates(&tls_dir, owner)?;
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                conf_string(&cert),
                conf_string(&key)
            ));
            // TLS only over TCP: a connection without it finds no line and is refused.
            fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all ::1/128 scram-sha-256\n",
            )?;
            ca_file = Some(ca);
        }
        // Appended, so these settings win over initdb's; the file stays the server's.
        fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .context("writing postgresql.conf")?;

        // Built before the first start so that a failed one is cleaned up by Drop too.
        let mut pg = Postgres {
            dir,
            bin,
            port: 0,
            password,
            ca_file,
            as_postgres,
        };
        pg.start_on_free_port()?;
        Ok(pg)
    }

    /// A free port is taken from the kernel then handed over: retry if another process took
    /// it meanwhile.
    fn start_on_free_port(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let logged = self.log().len();
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let taken = self
                        .log()
                        .get(logged..)
                        .is_some_and(|new| new.contains("already in use"));
                    if !taken || attempt == 5 {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut c = self.server_command("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start");
        run(&mut c, "pg_ctl start").with_context(|| format!("server log:\n{}", self.log()))?;
        Ok(())
    }

    /// Shuts the server down (`pg_ctl stop -m fast`: sessions are ended, commits kept) and
    /// waits until it has.
    pub fn stop(&self) -> Result<()> {
        let mut c = self.server_command("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(&mut c, "pg_ctl stop")?;
        Ok(())
    }

    /// Starts the stopped server again on the same data directory and port, and waits until
    /// it accepts connections.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl_start()
    }

    /// [`Postgres::stop`] then [`Postgres::start_again`].
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://tokenmeter@127.0.0.1:PORT/DB`, without the password
    /// ([`Postgres::password`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The superuser's password, random for each cluster.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The CA that signed the server's certificate, when started with TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log, across its starts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        )?;
        Ok(())
    }

    /// Runs `sql` in `db` with psql over TCP as the superuser, TLS verified when started
    /// with it; psql's unaligned tuples-only output (`-At`: one row a line, columns
    /// separated by `|`) without its last newline.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let sslmode = if self.ca_file.is_some() {
            "verify-full"
        } else {
            "disable"
        };
        self.psql_with("127.0.0.1", db, sslmode, sql)
    }

    fn psql_with(&self, host: &str, db: &str, sslmode: &str, sql: &str) -> Result<String> {
        let mut conninfo = format!(
            "host={host} port={} user={USER} dbname={} sslmode={sslmode} connect_timeout=10",
            self.port,
            conninfo_value(db)
        );
        if let Some(ca) = &self.ca_file {
            // No client certificate: a missing file is none, where libpq would otherwise
            // read ~/.postgresql/postgresql.crt if there is one.
            conninfo.push_str(&format!(
                " sslrootcert={} sslcert={}",
                conninfo_value(&ca.display().to_string()),
                conninfo_value(&self.dir.path().join("no-client-cert").display().to_string())
            ));
        }
        let psql = self.bin.join("psql");
        let psql = if psql.exists() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let mut c = Command::new(psql);
        c.args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", &self.password)
        .stdin(Stdio::null());
        let out = run(&mut c, &format!("psql {sql:?} on {db}"))?;
        Ok(out.strip_suffix('\n').unwrap_or(&out).to_string())
    }

    fn server_command(&self, program: &str) -> Command {
        server_command(&self.bin, self.as_postgres, program, self.dir.path())
    }

    /// The postmaster's PID while its postmaster.pid is there.
    fn postmaster_pid(&self) -> Option<u32> {
        fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid = self.postmaster_pid();
        let mut c = self.server_command("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
        // pg_ctl returns once postmaster.pid is gone, a moment before the process is. Still
        // there after that moment (stop timed out, or pg_ctl could not run): killed.
        if let Some(pid) = pid {
            if !gone_within(pid, Duration::from_secs(5)) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
                gone_within(pid, Duration::from_secs(5));
            }
        }
    }
}

/// Whether the postgres process `pid` has exited (a zombie has) by `limit`; a PID reused by
/// another program counts as exited.
fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // "PID (COMM) STATE ...".
        let running = stat
            .split_once(" (postgres) ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        if !running {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn server_command(bin: &Path, as_postgres: bool, program: &str, cwd: &Path) -> Command {
    let mut c = if as_postgres {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", RUN_AS, "--regid", RUN_AS, "--init-groups", "--"])
            .arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    };
    // A directory the server's user can enter, whatever ours is.
    c.current_dir(cwd).stdin(Stdio::null());
    c
}

/// Runs `c` to its end; its stdout, or an error with both its outputs.
fn run(c: &mut Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
    }
    Ok(stdout)
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = run(
            Command::new("id").args([flag, RUN_AS]),
            &format!(
                "id {flag} {RUN_AS} (as root the server runs as the {RUN_AS} user Debian's \
                 postgresql package creates: make postgres)"
            ),
        )?;
        out.trim().parse().context("id printed no number")
    };
    Ok((id("-u")?, id("-g")?))
}

fn give(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to {RUN_AS}", path.display()))?;
    }
    Ok(())
}

/// The server's user must reach its directory through every parent: not so under a
/// private TMPDIR such as one in /root.
fn check_traversable(dir: &Path) -> Result<()> {
    for parent in dir.ancestors().skip(1) {
        let mode = fs::metadata(parent)?.mode();
        if mode & 0o001 == 0 {
            bail!(
                "{} is closed to other users, so the {RUN_AS} user cannot reach {}: set TMPDIR \
                 to a directory it can enter, such as /tmp",
                parent.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn random_password() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A quoted string in postgresql.conf.
fn conf_string(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "''"))
}

/// A quoted value in a libpq connection string.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A CA and a server certificate for `localhost`, 127.0.0.1 and ::1 signed by it, made with
/// the openssl command in `dir`; their paths (CA, certificate, key). P-256 keys: quick to
/// make, and what rustls and native TLS clients both accept.
fn make_certificates(dir: &Path, owner: Option<(u32, u32)>) -> Result<(PathBuf, PathBuf, PathBuf)> {
    fs::create_dir(dir)?;
    let cnf = dir.join("openssl.cnf");
    // A configuration of our own, so the system's defaults add no extensions.
    fs::write(
        &cnf,
        "[req]\n\
         distinguished_name = dn\n\
         prompt = no\n\
         [dn]\n\
         CN = tokenmeter test\n\
         [ca]\n\
         basicConstraints = critical, CA:TRUE\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [server]\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n",
    )?;
    let key_args = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let openssl = |args: &[&str], what: &str| -> Result<()> {
        run(
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::null()),
            what,
        )
        .map(|_| ())
    };
    let cnf = cnf.display().to_string();
    openssl(
        &[
            &["req", "-x509", "-config", &cnf, "-extensions", "ca"][..],
            &key_args[..],
            &[
                "-subj",
                "/CN=tokenmeter test CA",
                "-days",
                "3650",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ][..],
        ]
        .concat(),
        "openssl req (the CA)",
    )?;
    openssl(
        &[
            &["req", "-new", "-config", &cnf][..],
            &key_args[..],
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ][..],
        ]
        .concat(),
        "openssl req (the server)",
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            &cnf,
            "-extensions",
            "server",
            "-out",
            "server.crt",
        ],
        "openssl x509 (signing the server's certificate)",
    )?;
    let (ca, cert, key) = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    // The server refuses a key others can read, or one that is not its own (or root's).
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    for f in [dir, &cert, &key] {
        give(f, owner)?;
    }
    Ok((ca, cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_and_starts_again_on_the_same_data() {
        let pg = Postgres::start().unwrap();
        assert_eq!(
            pg.url("store"),
            format!("postgres://tokenmeter@127.0.0.1:{}/store", pg.port())
        );
        assert!(pg.ca_file().is_none());
        pg.create_database("store").unwrap();
        assert_eq!(pg.psql("store", "SELECT 1").unwrap(), "1");
        assert_eq!(pg.psql("store", "SHOW fsync").unwrap(), "on");
        let max: u32 = pg
            .psql("store", "SHOW max_connections")
            .unwrap()
            .parse()
            .unwrap();
        assert!(max >= 50, "max_connections {max}");
        pg.psql("store", "CREATE TABLE t (n int); INSERT INTO t VALUES (7)")
            .unwrap();

        // The password is checked (SCRAM), not trusted.
        let wrong = Command::new(bin_dir().join("psql"))
            .args(["-X", "-At", "-c", "SELECT 1", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={} user=tokenmeter dbname=store sslmode=disable",
                pg.port()
            ))
            .env("PGPASSWORD", "not the password")
            .output()
            .unwrap();
        assert!(!wrong.status.success());
        assert!(
            String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
            "{}",
            String::from_utf8_lossy(&wrong.stderr)
        );

        let port = pg.port();
        pg.stop().unwrap();
        let err = pg.psql("store", "SELECT 1").unwrap_err();
        assert!(format!("{err:#}").contains("Connection refused"), "{err:#}");
        // What start_on_free_port looks for in the log when another process has the port.
        let holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let err = pg.start_again().unwrap_err();
        assert!(format!("{err:#}").contains("already in use"), "{err:#}");
        drop(holder);
        pg.start_again().unwrap();
        assert_eq!(pg.port(), port);
        assert_eq!(pg.psql("store", "SELECT n FROM t").unwrap(), "7");
        pg.restart().unwrap();
        assert_eq!(
            pg.psql("store", "SELECT count(*), 'x' FROM t").unwrap(),
            "1|x"
        );
    }

    #[test]
    fn tls_only() {
        let pg = Postgres::start_tls().unwrap();
        let ca = pg.ca_file().unwrap().to_path_buf();
        assert!(ca.exists());
        // psql verifies the certificate against the CA for 127.0.0.1 and for localhost.
        assert_eq!(
            pg.psql(
                "postgres",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            .unwrap(),
            "t"
        );
        assert_eq!(
            pg.psql_with("localhost", "postgres", "verify-full", "SELECT 1")
                .unwrap(),
            "1"
        );
        assert_eq!(
            pg.psql_with("127.0.0.1", "postgres", "require", "SELECT 1")
                .unwrap(),
            "1"
        );
        let err = pg
            .psql_with("127.0.0.1", "postgres", "disable", "SELECT 1")
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("no pg_hba.conf entry"),
            "{err:#}"
        );
        // TLS survives a restart (the key's owner and mode are still what the server wants).
        pg.restart().unwrap();
        assert_eq!(pg.psql("postgres", "SELECT 2").unwrap(), "2");
    }

    #[test]
    fn drop_leaves_nothing_behind() {
        let pg = Postgres::start().unwrap();
        let pid = pg.postmaster_pid().unwrap();
        let dir = pg.dir.path().to_path_buf();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        assert!(!gone_within(pid, Duration::ZERO));
        drop(pg);
        assert!(!dir.exists());
        assert!(
            gone_within(pid, Duration::ZERO),
            "postmaster {pid} still running"
        );
    }
}
