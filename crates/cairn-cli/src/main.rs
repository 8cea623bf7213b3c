//! `cairn`: the Cairn server, a one-command local cluster, and a command-line client.

mod backup_cmd;
mod cert_cmd;
mod chaos;
mod client_cmds;
mod config_file;
mod debug_cmd;
mod gen_cmd;
mod health_cmd;
mod playground;
mod server_cmd;
mod verify_cmd;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

// A node allocates and frees a few small buffers per operation on several threads; glibc's
// allocator spent 13% of a write workload's CPU on it (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Default endpoints: the playground's three nodes.
pub(crate) const DEFAULT_ENDPOINTS: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a distributed, strongly consistent key-value store"
)]
struct Cli {
    /// Nodes the client commands talk to: comma-separated HOST:PORT (gRPC).
    #[arg(long, env = "CAIRN_ENDPOINTS", default_value = DEFAULT_ENDPOINTS, global = true)]
    endpoints: String,
    /// Certificates directory (`cairn cert`): `cairn server` serves TLS with `node.crt` and
    /// admits only nodes of this CA to internal calls; client commands trust `ca.crt` and
    /// present `client.USER.crt` (`--user`, root by default) if it is there. Without it everything is plaintext.
    #[arg(long, env = "CAIRN_CERTS_DIR", global = true)]
    certs_dir: Option<std::path::PathBuf>,
    /// With --certs-dir, the client commands present `client.USER.crt` (made by `cairn cert
    /// create-client USER`) instead of root's.
    #[arg(long = "user", id = "as_user", env = "CAIRN_USER", default_value = cairn_types::ROOT_USER, global = true)]
    as_user: String,
    /// Bearer token of a secure cluster's user (`cairn user add` prints one); sent with
    /// every client command instead of root's client certificate.
    #[arg(long, env = "CAIRN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Server(Box<server_cmd::ServerArgs>),
    /// Start a local cluster of N nodes (child processes) and stop them on Ctrl-C.
    Playground(playground::PlaygroundArgs),
    /// Create, drop, list and describe tables.
    Table(client_cmds::TableArgs),
    /// Write a value.
    Put(client_cmds::PutArgs),
    /// Read a value (linearizable unless --stale).
    Get(client_cmds::GetArgs),
    /// Delete a key.
    Delete(client_cmds::KeyArgs),
    /// List keys in byte order.
    List(client_cmds::ListArgs),
    /// Inspect the cluster.
    Admin(client_cmds::AdminArgs),
    /// Run a concurrent workload, record its history and check it for linearizability.
    Chaos(chaos::ChaosArgs),
    /// Check a history recorded by `cairn chaos`.
    Check(chaos::CheckArgs),
    /// Measure throughput and latency with a YCSB-style workload (Cairn or etcd).
    Bench(cairn_bench::BenchArgs),
    /// Generate configuration for software around a cluster (HAProxy).
    Gen(gen_cmd::GenArgs),
    /// Collect diagnostics for a bug report (`cairn debug zip FILE`).
    Debug(debug_cmd::DebugArgs),
    /// Ask a node whether it serves (its /health; exit 0 if it does): for container checks.
    Health(health_cmd::HealthArgs),
    /// Create the certificates of a secure cluster (CA, nodes, clients).
    Cert(cert_cmd::CertArgs),
    /// Add, list and remove the users of a secure cluster (admin only).
    User(client_cmds::UserArgs),
    /// Save tables and users to a file, check one, and restore them (`cairn backup save FILE`).
    Backup(backup_cmd::BackupArgs),
}

fn main() -> ExitCode {
    let cli = match config_file::expand(std::env::args_os().collect(), &Cli::command()) {
        Ok(args) => Cli::parse_from(args),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    // A namespace change applies to the calling thread only, so it must come before the
    // runtime starts its threads.
    if let Command::Chaos(a) = &cli.command
        && a.needs_private_network()
        && let Err(e) = chaos::nemesis::enter_private_network()
    {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Server(a) = &cli.command
        && let Some(n) = a.threads
    {
        runtime.worker_threads(usize::from(n));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let conn = client_cmds::Conn::new(
        cli.endpoints.clone(),
        cli.certs_dir.clone(),
        cli.as_user.clone(),
        cli.token.clone(),
    );
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(a) => server_cmd::run(*a, cli.certs_dir).await,
            Command::Cert(a) => cert_cmd::run(a, cli.certs_dir.as_deref()),
            Command::Playground(a) => playground::run(a).await,
            Command::Table(a) => client_cmds::table(a, conn).await,
            Command::Put(a) => client_cmds::put(a, conn).await,
            Command::Get(a) => client_cmds::get(a, conn).await,
            Command::Delete(a) => client_cmds::delete(a, conn).await,
            Command::List(a) => client_cmds::list(a, conn).await,
            Command::Chaos(a) => chaos::chaos(a, &conn).await,
            Command::Check(a) => chaos::check(a),
            Command::Gen(a) => gen_cmd::run(a, &conn).await,
            Command::Admin(a) => client_cmds::admin(a, conn).await,
            Command::User(a) => client_cmds::user(a, conn).await,
            Command::Backup(a) => backup_cmd::run(a, conn).await,
            Command::Debug(a) => debug_cmd::run(a, &conn).await,
            Command::Health(a) => health_cmd::run(a, &conn).await,
            Command::Bench(a) => {
                let endpoints: Vec<String> = cli.endpoints.split(',').map(str::to_string).collect();
                // Cairn with the global --certs-dir, --user and --token, as every command.
                let cairn = (a.driver == cairn_bench::DriverKind::Cairn)
                    .then(|| conn.client())
                    .transpose()?;
                cairn_bench::run(&a, &endpoints, cairn)
                    .await
                    .map(|_| ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
