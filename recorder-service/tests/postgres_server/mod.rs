//! A throwaway PostgreSQL server for the tests: `initdb` into a temporary directory, `postgres`
//! on a free loopback port, ready when `pg_isready` says so, one fresh database per test.
//! The server stops and its directory is removed when the test process exits (a supervising
//! shell waits on a pipe only this process holds). Not installed means the tests fail, with
//! the command that installs it; they never skip.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The shared server of this test process.
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    // Held until exit: its stdin is the pipe whose closing stops the server.
    _supervisor: Mutex<Child>,
}

/// Starts the server on first use.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// Where PostgreSQL's server binaries are: `SCRIM_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout).
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SCRIM_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("postgres").exists(),
            "SCRIM_PG_BIN={} has no postgres binary: the store contract tests need a real \
             PostgreSQL (`make test-tools` installs Debian's package)",
            dir.display()
        );
        return dir;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/<version>/bin: \
             the store contract tests need a real PostgreSQL. Install it with `make test-tools` \
             (apt-get install -y postgresql) or point SCRIM_PG_BIN at its bin directory."
        ),
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// `program args…`, as the `postgres` user when we are root (initdb refuses root).
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    /// A server of the caller's own (not the shared one), for tests that stop and restart it.
    pub fn start_own() -> PgServer {
        PgServer::start()
    }

    fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("scrim-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(&dir);
            run(chown, "chown of the server directory to postgres");
        }
        let data = dir.join("data");
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .arg("--locale=C");
        run(initdb, "initdb");

        let port = free_port();
        let log = dir.join("server.log");
        // The shell runs the server, then waits for its standard input to close (this process
        // exiting, however it exits), then stops the server (fast shutdown; `pg_ctl`, so a
        // server restarted by `start_again` stops too) and removes it all.
        let script = format!(
            "'{postgres}' -D '{data}' -k '{dir}' -p {port} -c listen_addresses=127.0.0.1 \
               >'{log}' 2>&1 & \
             read _; '{pg_ctl}' -D '{data}' -m fast -w stop >/dev/null 2>&1; rm -rf '{dir}'",
            postgres = bin.join("postgres").display(),
            pg_ctl = bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
            log = log.display(),
        );
        let mut sh = as_server_user(Path::new("/bin/sh"));
        sh.args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let supervisor = sh.spawn().expect("start the PostgreSQL supervisor shell");
        let server = PgServer {
            port,
            dir,
            bin: bin.clone(),
            _supervisor: Mutex::new(supervisor),
        };
        server.wait_ready(&bin, &log);
        server
    }

    /// Polls `pg_isready` until the server accepts connections.
    fn wait_ready(&self, bin: &Path, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres"])
                .args(["-p", &self.port.to_string()])
                .status()
                .expect("run pg_isready");
            if status.success() {
                return;
            }
            if Instant::now() > deadline {
                let mut text = String::new();
                std::fs::File::open(log)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .ok();
                panic!("PostgreSQL did not become ready on port {}; its log:\n{text}", self.port);
            }
            // Polling interval, not synchronisation: readiness is decided by pg_isready.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits until it is gone.
    pub fn stop(&self) {
        let mut stop = as_server_user(&self.bin.join("pg_ctl"));
        stop.arg("-D").arg(self.dir.join("data")).args(["-m", "fast", "-w", "stop"]);
        run(stop, "pg_ctl stop");
    }

    /// Starts the stopped server again on the same port and data, ready when this returns.
    pub fn start_again(&self) {
        let mut start = as_server_user(&self.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-o")
            .arg(format!("-k {} -p {} -c listen_addresses=127.0.0.1", self.dir.display(), self.port))
            .arg("-l")
            .arg(self.dir.join("server-again.log"))
            .args(["-w", "start"]);
        // pg_ctl's daemonised server keeps inherited pipes open: give it none.
        start.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let status = start.status().expect("run pg_ctl start");
        assert!(status.success(), "pg_ctl start failed");
        self.wait_ready(&self.bin, &self.dir.join("server-again.log"));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new empty database; returns its URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connect to the test server");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        self.url(&name)
    }
}
