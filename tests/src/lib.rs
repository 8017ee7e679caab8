//! Harness for integration tests: throwaway PostgreSQL clusters on loopback ports of their
//! own, with their own socket directories, stopped when dropped (also when a test panics).
//!
//! `CAUSAL_PG_BIN` names the PostgreSQL bin directory and `CAUSAL_IT_DIR` the directory the
//! clusters live under (`scripts/test.sh` sets both). Run as root, every server command runs
//! as the `postgres` OS user through sudo.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub use postgres;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Polls `f` every 50 ms until it holds; panics, naming `what`, after 30 s.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

fn pg_bin() -> PathBuf {
    std::env::var_os("CAUSAL_PG_BIN").map(PathBuf::from).unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into())
}

fn base_dir() -> PathBuf {
    std::env::var_os("CAUSAL_IT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/pg_causal-run/it-clusters"))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs a command as the postgres OS user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("sudo");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// A new empty directory for a cluster named `name` (with its socket directory), owned by
/// the postgres user when we run as root.
fn new_cluster_dir(name: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = base_dir().join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sock")).expect("create cluster dir");
    if is_root() {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(&dir);
        run(chown, "chown cluster dir");
    }
    dir
}

/// A running throwaway cluster.
pub struct Cluster {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
}

impl Cluster {
    /// Creates and starts a cluster; `conf` lines are appended to its configuration.
    pub fn start(name: &str, conf: &[&str]) -> Cluster {
        let dir = new_cluster_dir(name);
        let data = dir.join("data");
        let mut initdb = as_postgres(&pg_bin().join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        run(initdb, "initdb");
        let port = free_port();
        let mut lines = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", dir.join("sock").display()),
            "fsync = off".to_string(),
            "wal_level = logical".to_string(),
            "output_plugin_libraries = 'pgoutput, test_decoding, pg_causal'".to_string(),
        ];
        lines.extend(conf.iter().map(|s| s.to_string()));
        let conf_path = data.join("postgresql.auto.conf");
        std::fs::write(&conf_path, lines.join("\n") + "\n").expect("write postgresql.auto.conf");
        let cluster = Cluster { name: name.to_string(), port, dir };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    /// A streaming standby of `primary`, from a base backup, started and replaying.
    pub fn standby_of(primary: &Cluster, name: &str) -> Cluster {
        let dir = new_cluster_dir(name);
        let data = dir.join("data");
        let mut backup = as_postgres(&pg_bin().join("pg_basebackup"));
        backup.arg("-D").arg(&data).args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres"]);
        backup.args(["-R", "-X", "stream", "--no-sync", "-c", "fast"]);
        run(backup, "pg_basebackup");
        // The backup carries the primary's settings; these lines, appended, win.
        let port = free_port();
        let conf_path = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap_or_default();
        conf.push_str(&format!(
            "port = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            dir.join("sock").display()
        ));
        let mut write = as_postgres(Path::new("/usr/bin/tee"));
        write.arg(&conf_path).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null());
        let mut child = write.spawn().expect("run tee");
        {
            use std::io::Write;
            child.stdin.take().expect("tee stdin").write_all(conf.as_bytes()).expect("write postgresql.auto.conf");
        }
        assert!(child.wait().expect("tee").success(), "write the standby's postgresql.auto.conf");
        let cluster = Cluster { name: name.to_string(), port, dir };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    /// Promotes a standby to a primary and waits until it accepts writes.
    pub fn promote(&self) {
        self.pg_ctl(&["promote", "-w", "-t", "60"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let mut c = as_postgres(&pg_bin().join("pg_ctl"));
        c.arg("-D").arg(self.dir.join("data")).arg("-l").arg(self.dir.join("server.log")).args(args);
        let out = c.output().expect("run pg_ctl");
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            panic!("pg_ctl {args:?} failed for {}: {}\n{log}", self.name, String::from_utf8_lossy(&out.stderr));
        }
    }

    pub fn connection_string(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db}", self.port)
    }

    pub fn connect(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.connection_string(db), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {} ({}): {e}", self.name, self.connection_string(db)))
    }

    /// Connects to database `db` as role `user` (which must exist and may log in).
    pub fn connect_as(&self, user: &str, db: &str) -> postgres::Client {
        let conn = format!("host=127.0.0.1 port={} user={user} dbname={db}", self.port);
        postgres::Client::connect(&conn, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {} as {user} ({conn}): {e}", self.name))
    }

    /// Runs the client program `program` (`pg_dump`, `pg_restore`, ...) of the server's
    /// version against this cluster, with `args` after the connection options.
    pub fn client_tool(&self, program: &str, args: &[&str]) -> Output {
        let mut c = Command::new(pg_bin().join(program));
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"]).args(args);
        c.output().unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// The server log, for assertions and for diagnosing failures.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the postmaster with SIGKILL (its backends die with it), as a crash would.
    pub fn kill9(&self) {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).expect("read postmaster.pid");
        let pid = pid_file.lines().next().expect("pid line").trim().to_string();
        run(
            {
                let mut c = Command::new("kill");
                c.args(["-9", &pid]);
                c
            },
            "kill -9 the postmaster",
        );
        // Wait for it and its children to be gone.
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    /// Starts the cluster again (after `stop` or `kill9`; crash recovery runs first). After a
    /// kill, the old server's children may take a moment to exit and free its shared memory.
    pub fn restart(&self) {
        for _ in 0..20 {
            let mut c = as_postgres(&pg_bin().join("pg_ctl"));
            c.arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["start", "-w", "-t", "120"]);
            if c.output().map(|o| o.status.success()).unwrap_or(false) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        self.pg_ctl(&["start", "-w", "-t", "120"]);
    }

    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.join("data/postmaster.pid").exists() {
            let mut c = as_postgres(&pg_bin().join("pg_ctl"));
            c.arg("-D").arg(self.dir.join("data")).args(["stop", "-m", "immediate", "-w"]);
            let _ = c.output();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SQL for the predecessors' hashes of the `causal.entries` row aliased `e`: entry rows keep
/// their predecessors as node ids (`preds`) only.
pub const ENTRY_PREV: &str =
    "ARRAY(SELECT p.hash FROM causal.entries p WHERE p.grp = e.grp AND p.node_id = ANY (e.preds))";

/// The SQLSTATE of a failed statement, if the error came from the server.
pub fn sqlstate(err: &postgres::Error) -> Option<String> {
    err.as_db_error().map(|e| e.code().code().to_string())
}

/// The node identity's public key (base64) and key id in `db`.
pub fn node_identity(db: &mut postgres::Client) -> (String, String) {
    let r = db.query_one("SELECT public_key, key_id FROM causal.identities WHERE is_node", &[]).expect("node identity");
    (r.get(0), r.get(1))
}
