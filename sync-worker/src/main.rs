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
        causal_sync::run(config, stop).await
    });
    if let Err(e) = result {
        eprintln!("causal-sync: {e}");
        std::process::exit(1);
    }
}
