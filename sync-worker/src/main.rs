//! The standalone sync worker: `causal-sync --database URL --listen MULTIADDR --peer MULTIADDR`.

use clap::Parser;

fn main() {
    let args = causal_sync::Args::parse();
    causal_sync::init_logging();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("causal-sync: {e}");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("causal-sync: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let stop = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        let mut stop = std::pin::pin!(stop);
        // Runs again when the database goes away (a restart), after a pause.
        loop {
            tokio::select! {
                r = causal_sync::run(config.clone(), std::future::pending::<()>()) => match r {
                    Err(causal_sync::WorkerError::Db(e)) => {
                        eprintln!("causal-sync: {e}; starting again in 5 seconds");
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => continue,
                            _ = &mut stop => return Ok(()),
                        }
                    }
                    other => return other,
                },
                _ = &mut stop => return Ok(()),
            }
        }
    });
    if let Err(e) = result {
        eprintln!("causal-sync: {e}");
        std::process::exit(1);
    }
}
