//! The sync worker as a Postgres background worker: registered when pg_causal is in
//! `shared_preload_libraries`, restarted by the postmaster if it dies, stopped by SIGTERM.
//!
//! It runs the same `causal_sync::run` as the standalone binary, on a tokio runtime built here,
//! after the fork. It talks to its database as a client over the local socket (as the
//! bootstrap superuser, whose name is the server's OS user), so nothing but this main thread
//! ever touches Postgres's own state, and only to read settings and the shutdown flag.

use std::ffi::CStr;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;

/// Registers the worker; only possible while shared_preload_libraries is being processed.
pub fn register() {
    // SAFETY: reading a flag Postgres sets before loading preloaded libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("pg_causal sync worker")
        .set_type("pg_causal sync")
        .set_function("causal_sync_worker_main")
        .set_library("pg_causal")
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The server's OS user: the bootstrap superuser's name unless initdb was told otherwise.
fn os_user() -> String {
    // SAFETY: getpwuid returns a pointer to static storage or null; it is read at once, on
    // the only thread there is at this point.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            return "postgres".into();
        }
        CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

/// The first socket directory and the port this server listens on.
fn local_socket() -> (String, i32) {
    // SAFETY: postmaster settings, read-only after startup.
    let (dirs, port) = unsafe {
        let dirs = if pg_sys::Unix_socket_directories.is_null() {
            String::new()
        } else {
            CStr::from_ptr(pg_sys::Unix_socket_directories).to_string_lossy().into_owned()
        };
        (dirs, pg_sys::PostPortNumber)
    };
    let dir = dirs.split(',').map(str::trim).find(|d| !d.is_empty()).unwrap_or("/var/run/postgresql").to_string();
    (dir, port)
}

/// How long the main thread waits on the latch before looking at the worker task again.
const LATCH_TIMEOUT: Duration = Duration::from_millis(100);

/// Quotes a value for a libpq-style connection string.
fn conn_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn causal_sync_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No transparent huge pages in this process. The worker keeps allocating and freeing
    // fetched entries, and the allocator returns freed memory to the kernel: every 2 MB huge
    // page taken again was zeroed whole, which was most of the worker's CPU in a catch-up
    // (perf: `clear_page_erms`). Backends keep them; a large import gains from them.
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    causal_sync::init_logging();
    let (dir, port) = local_socket();
    let database = crate::guc::database();
    let conninfo = format!(
        "host={} port={port} dbname={} user={} application_name={}",
        conn_value(&dir),
        conn_value(&database),
        conn_value(&os_user()),
        conn_value("pg_causal sync worker")
    );
    let wakeups = std::sync::Arc::new(tokio::sync::Notify::new());
    let parse = |list: Vec<String>, what: &str| -> Vec<causal_sync::Multiaddr> {
        list.into_iter()
            .filter_map(|a| match a.parse() {
                Ok(m) => Some(m),
                Err(e) => {
                    pgrx::warning!("pg_causal: ignoring {what} {a:?}: {e}");
                    None
                }
            })
            .collect()
    };
    let config = causal_sync::WorkerConfig {
        conninfo,
        listen: parse(crate::guc::listen_addresses(), "causal.listen_addresses entry"),
        peers: parse(crate::guc::peers(), "causal.peers entry"),
        report_every: Duration::from_secs(1),
        // The background worker reports in views only; `causal-sync --metrics` serves them.
        metrics: None,
        commit_wakeups: Some(causal_sync::CommitWakeups {
            notified: wakeups.clone(),
            arm: std::sync::Arc::new(crate::pg::wake::arm_wakeup),
        }),
        seal_poll: crate::guc::seal_poll_interval(),
    };
    pgrx::log!("pg_causal sync worker starting for database {database:?}");
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            pgrx::warning!("pg_causal sync worker cannot start its runtime: {e}");
            unsafe { pg_sys::proc_exit(1) };
        }
    };
    // The worker runs on the runtime's threads, which never call into Postgres. This thread
    // waits on the process latch: committing backends set it (`pg::wake`), which wakes the
    // sealer, and SIGTERM and the postmaster's death end the wait. A worker must not outlive
    // its postmaster: it would hold the shared memory and keep the server from restarting.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut worker = runtime.spawn(causal_sync::run(config, async {
        let _ = stop_rx.await;
    }));
    crate::pg::wake::worker_started();
    while !worker.is_finished() {
        // SAFETY: waits on this process's own latch, on its main thread.
        let events = unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_POSTMASTER_DEATH) as i32,
                LATCH_TIMEOUT.as_millis() as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            )
        };
        if events & pg_sys::WL_POSTMASTER_DEATH as i32 != 0 || BackgroundWorker::sigterm_received() {
            break;
        }
        if events & pg_sys::WL_LATCH_SET as i32 != 0 {
            // SAFETY: as above.
            unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
            wakeups.notify_one();
        }
    }
    crate::pg::wake::worker_stopped();
    let _ = stop_tx.send(());
    // On SIGTERM the task gets a moment to stop; after the postmaster's death nothing waits.
    let grace = if BackgroundWorker::sigterm_received() { Duration::from_secs(1) } else { Duration::ZERO };
    let result = runtime.block_on(async {
        match tokio::time::timeout(grace, &mut worker).await {
            Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("the worker task failed: {e}")),
            Err(_) => Ok(()), // asked to stop and still stopping: nothing to flush
        }
    });
    // Leave at once: after the postmaster's death nothing may wait (the server cannot restart
    // while this process holds its shared memory); the tasks have nothing to flush.
    runtime.shutdown_background();
    match result {
        Ok(()) => pgrx::log!("pg_causal sync worker stopped"),
        Err(e) => pgrx::log!("pg_causal sync worker stopped: {e}; it restarts in 5 seconds"),
    }
    // Exit code 1: the postmaster starts the worker again after its restart time unless the
    // server is shutting down (the convention for background workers).
    unsafe { pg_sys::proc_exit(1) };
}
