use clap::Parser;

fn main() {
    let args = causal_sync::Args::parse();
    eprintln!(
        "causal-sync: peer-to-peer sync is not implemented yet (database {:?}, {} listen address(es), {} peer(s))",
        args.database,
        args.listen.len(),
        args.peers.len()
    );
    std::process::exit(2);
}
