//! Client subcommands: tables, keys and admin.

use anyhow::Context;
use base64::Engine as _;
use cairn_client::{Client, ListOptions, TableInfo};
use clap::{Args, Subcommand};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Where to connect and how: the top-level `--endpoints` and `--certs-dir`.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) endpoints: String,
    pub(crate) certs_dir: Option<PathBuf>,
    /// The user whose client certificate is presented (`--user`; root by default).
    user: String,
    token: Option<String>,
}

impl Conn {
    pub(crate) fn new(
        endpoints: String,
        certs_dir: Option<PathBuf>,
        user: String,
        token: Option<String>,
    ) -> Self {
        Self {
            endpoints,
            certs_dir,
            user,
            token: token.filter(|t| !t.trim().is_empty()),
        }
    }

    /// The TLS client settings for `alpn`: the CA of the certificates directory, and the
    /// client certificate of `--user`. Root's may be missing (a token then says who calls);
    /// another user's must be there, since the user was asked for by name.
    fn tls(&self, dir: &std::path::Path, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
        if self.user != cairn_types::ROOT_USER {
            let cert = dir.join(cairn_proto::tls::client_cert(&self.user));
            anyhow::ensure!(
                cert.exists(),
                "--user {}: there is no {} (make it with `cairn cert create-client --certs-dir {} {}`)",
                self.user,
                cert.display(),
                dir.display(),
                self.user
            );
        }
        cairn_proto::tls::client_config(dir, &self.user, alpn)
            .with_context(|| format!("--certs-dir {}", dir.display()))
    }

    /// A client of the cluster: over TLS when `--certs-dir` is given.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let dialer: cairn_proto::net::SharedDialer = match &self.certs_dir {
            Some(dir) => Some(std::sync::Arc::new(cairn_proto::tls::TlsDialer::new(
                std::sync::Arc::new(self.tls(dir, b"h2")?),
                None,
            ))),
            None => None,
        };
        Client::with_auth(self.endpoints.split(','), dialer, self.token.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// An HTTP client for the nodes' HTTP ports, and the scheme to reach them with.
    pub(crate) fn http(
        &self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<(reqwest::Client, &'static str)> {
        let mut b = reqwest::Client::builder().timeout(timeout);
        if let Some(t) = &self.token {
            let mut headers = reqwest::header::HeaderMap::new();
            let value = format!("Bearer {}", t.trim())
                .parse()
                .context("the token holds characters a header cannot carry")?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
            b = b.default_headers(headers);
        }
        Ok(match &self.certs_dir {
            Some(dir) => {
                let tls = self.tls(dir, b"http/1.1")?;
                (b.use_preconfigured_tls(tls).build()?, "https")
            }
            None => (b.build()?, "http"),
        })
    }
}

/// A client of `endpoints`: over TLS trusting `certs`' CA (and showing root's client
/// certificate if the directory holds it) when given, sending `token` when given.
pub(crate) fn connect<I, S>(
    endpoints: I,
    certs: Option<&std::path::Path>,
    token: Option<&str>,
) -> anyhow::Result<Client>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let dialer: cairn_proto::net::SharedDialer = match certs {
        Some(dir) => {
            let tls = cairn_proto::tls::client_config(dir, cairn_types::ROOT_USER, b"h2")
                .with_context(|| format!("--certs-dir {}", dir.display()))?;
            Some(std::sync::Arc::new(cairn_proto::tls::TlsDialer::new(
                std::sync::Arc::new(tls),
                None,
            )))
        }
        None => None,
    };
    Client::with_auth(endpoints, dialer, token).map_err(|e| anyhow::anyhow!("{e}"))
}

fn fail(e: cairn_client::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// `cairn table …`.
#[derive(Args, Debug)]
pub(crate) struct TableArgs {
    #[command(subcommand)]
    cmd: TableCmd,
}

#[derive(Subcommand, Debug)]
enum TableCmd {
    /// Create a table.
    Create {
        /// Table name: 1 to 128 characters from A-Z a-z 0-9 _ . -
        name: String,
        /// Replicas per partition: 1, 3 or 5.
        #[arg(long, short, default_value_t = 3)]
        replication: u32,
        /// Split keys (comma-separated or repeated): partitions [-inf,k1), [k1,k2), ...
        #[arg(long, value_delimiter = ',')]
        split: Vec<String>,
    },
    /// Drop a table and all its data.
    Drop {
        /// Table name.
        name: String,
    },
    /// List tables.
    List,
    /// Show a table's partitions, replicas and leaders.
    Describe {
        /// Table name.
        name: String,
    },
}

fn show_key(k: &[u8]) -> String {
    match std::str::from_utf8(k) {
        Ok(s) => s.to_string(),
        Err(_) => format!(
            "0x{}",
            k.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// Rows under a header, each column as wide as its widest cell with two spaces between, so
/// a long range or host name does not push the columns after it out of line.
pub(crate) struct Columns {
    rows: Vec<Vec<String>>,
}

/// The tables a user's prefix allows, as `user list` shows them: `*`, or `PREFIX*`.
pub(crate) fn tables_scope(prefix: &str) -> String {
    format!("{prefix}*")
}

impl Columns {
    /// A table with the column names `header`.
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row of cells, one per column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The lines of the table (the last column is not padded).
    fn render(&self) -> String {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                match widths.get_mut(i) {
                    Some(m) => *m = (*m).max(w),
                    None => widths.push(w),
                }
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < row.len() {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout.
    pub(crate) fn print(&self) {
        print!("{}", self.render());
    }
}

fn print_table(t: &TableInfo) {
    println!(
        "table {} (id {}, replication {})",
        t.name, t.id, t.replication
    );
    let mut cols = Columns::new(&["PARTITION", "RANGE", "EPOCH", "REPLICAS", "LEADER"]);
    for p in &t.partitions {
        let end = p
            .end
            .as_deref()
            .map(show_key)
            .unwrap_or_else(|| "+inf".into());
        let range = format!("[{:?}, {end})", show_key(&p.start));
        let replicas = p
            .replicas
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let leader = p.leader.map_or_else(|| "-".into(), |l| l.to_string());
        cols.row(vec![
            p.id.to_string(),
            range,
            format!("{}.{}", p.epoch.0, p.epoch.1),
            replicas,
            leader,
        ]);
    }
    cols.print();
}

pub(crate) async fn table(a: TableArgs, conn: Conn) -> anyhow::Result<ExitCode> {
    let c = conn.client()?;
    match a.cmd {
        TableCmd::Create {
            name,
            replication,
            split,
        } => {
            let mut keys: Vec<Vec<u8>> = split
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(String::into_bytes)
                .collect();
            keys.sort();
            keys.dedup();
            let t = c
                .create_table(&name, replication, keys)
                .await
                .map_err(fail)?;
            println!("created");
            print_table(&t);
        }
        TableCmd::Drop { name } => {
            c.drop_table(&name).await.map_err(fail)?;
            println!("dropped {name}");
        }
        TableCmd::List => {
            for t in c.list_tables().await.map_err(fail)? {
                println!(
                    "{}\treplication={}\tpartitions={}",
                    t.name,
                    t.replication,
                    t.partitions.len()
                );
            }
        }
        TableCmd::Describe { name } => {
            let t = c.describe_table(&name).await.map_err(fail)?;
            print_table(&t);
            if t.partitions.iter().any(|p| p.leader.is_none()) {
                // A partition's leader is known once it reports to the metadata group.
                eprintln!(
                    "LEADER \"-\": no leader reported yet (a new partition, or an election under way); \
                     run `cairn table describe {name}` again in a few seconds"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn put`.
#[derive(Args, Debug)]
pub(crate) struct PutArgs {
    /// Table name.
    table: String,
    /// Key.
    key: String,
    /// Value; read from --file or standard input when absent.
    value: Option<String>,
    /// Read the value from this file.
    #[arg(long, conflicts_with = "value")]
    file: Option<PathBuf>,
}

pub(crate) async fn put(a: PutArgs, conn: Conn) -> anyhow::Result<ExitCode> {
    let value = match (a.value, a.file) {
        (Some(v), _) => v.into_bytes(),
        (None, Some(f)) => {
            std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the value from standard input")?;
            buf
        }
    };
    conn.client()?
        .put(&a.table, a.key.as_bytes(), &value)
        .await
        .map_err(fail)?;
    Ok(ExitCode::SUCCESS)
}

/// `cairn get`.
#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// Table name.
    table: String,
    /// Key.
    key: String,
    /// Allow a stale read from any replica.
    #[arg(long)]
    stale: bool,
}

pub(crate) async fn get(a: GetArgs, conn: Conn) -> anyhow::Result<ExitCode> {
    let c = conn.client()?;
    let v = if a.stale {
        c.get_stale(&a.table, a.key.as_bytes()).await
    } else {
        c.get(&a.table, a.key.as_bytes()).await
    };
    match v.map_err(fail)? {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&v)?;
            if std::io::IsTerminal::is_terminal(&out) {
                writeln!(out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("key {:?} not found in table {}", a.key, a.table);
            Ok(ExitCode::from(2))
        }
    }
}

/// `cairn delete`.
#[derive(Args, Debug)]
pub(crate) struct KeyArgs {
    /// Table name.
    table: String,
    /// Key.
    key: String,
}

pub(crate) async fn delete(a: KeyArgs, conn: Conn) -> anyhow::Result<ExitCode> {
    conn.client()?
        .delete(&a.table, a.key.as_bytes())
        .await
        .map_err(fail)?;
    Ok(ExitCode::SUCCESS)
}

/// `cairn list`.
#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    /// Table name.
    table: String,
    /// Only keys with this prefix.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Only keys >= this.
    #[arg(long, default_value = "")]
    start: String,
    /// Only keys < this.
    #[arg(long, default_value = "")]
    end: String,
    /// Most keys to print (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Print values too (tab-separated; a value that is not UTF-8 is shown lossily, so use
    /// --json to export).
    #[arg(long)]
    values: bool,
    /// One JSON object per line, `{"key":…}` (and `"value"` with --values); a line whose key
    /// or value is not UTF-8 has both in base64 and says `"encoding":"base64"`. Lossless,
    /// for exports.
    #[arg(long)]
    json: bool,
}

/// One row of `cairn list --json`: text when key and value are UTF-8, else base64 (as the
/// HTTP API's List does per page).
fn json_row(k: &[u8], v: Option<&[u8]>) -> serde_json::Value {
    let text = std::str::from_utf8(k).is_ok() && v.is_none_or(|v| std::str::from_utf8(v).is_ok());
    let show = |b: &[u8]| {
        if text {
            String::from_utf8_lossy(b).into_owned()
        } else {
            base64::engine::general_purpose::STANDARD.encode(b)
        }
    };
    let mut row = serde_json::json!({ "key": show(k) });
    if let Some(v) = v {
        row["value"] = show(v).into();
    }
    if !text {
        row["encoding"] = "base64".into();
    }
    row
}

pub(crate) async fn list(a: ListArgs, conn: Conn) -> anyhow::Result<ExitCode> {
    let c = conn.client()?;
    let mut opts = ListOptions {
        prefix: a.prefix.into_bytes(),
        start: a.start.into_bytes(),
        end: a.end.into_bytes(),
        limit: 1000,
        values: a.values,
        ..Default::default()
    };
    let mut printed = 0usize;
    let mut out = std::io::stdout().lock();
    loop {
        let page = c.list(&a.table, &opts).await.map_err(fail)?;
        for (i, k) in page.keys.iter().enumerate() {
            if a.limit != 0 && printed == a.limit {
                return Ok(ExitCode::SUCCESS);
            }
            let v = page.values.get(i).filter(|_| a.values);
            match v {
                _ if a.json => writeln!(out, "{}", json_row(k, v.map(|v| v.as_slice())))?,
                Some(v) => writeln!(out, "{}\t{}", show_key(k), String::from_utf8_lossy(v))?,
                None => writeln!(out, "{}", show_key(k))?,
            }
            printed += 1;
        }
        match page.cursor {
            Some(cur) => opts.cursor = cur,
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// `cairn admin …`.
#[derive(Args, Debug)]
pub(crate) struct AdminArgs {
    #[command(subcommand)]
    cmd: AdminCmd,
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Nodes with liveness, replicas and leaders (leaders as the nodes last reported them,
    /// up to about two seconds ago).
    Nodes,
    /// Partitions of one table or of all tables.
    Partitions {
        /// Table name (default: all tables).
        table: Option<String>,
    },
    /// Splits the partition holding KEY so that KEY starts a new partition.
    Split {
        /// Table name.
        table: String,
        /// The first key of the new right half (raw bytes of the argument).
        key: String,
    },
    /// Moves a partition's replica from node FROM to node TO, showing progress until done.
    /// Partition 0 is the metadata group: this replaces a metadata member.
    Move {
        /// Partition id (`cairn table describe` lists them; 0 is the metadata group).
        partition: u64,
        /// The node giving its replica up.
        from: u64,
        /// The node receiving the new replica.
        to: u64,
        /// Return once the move is recorded; `cairn admin operations` shows its progress.
        #[arg(long)]
        no_wait: bool,
    },
    /// Running and recent layout operations (moves, splits, leader transfers), newest first.
    Operations,
    /// Moves a partition's leadership to its replica on NODE.
    TransferLeader {
        /// Partition id (`cairn table describe` lists them).
        partition: u64,
        /// Node id of a replica of the partition.
        node: u64,
    },
    /// The controller (needs `cairn server --controller on`): status, pause, resume.
    Controller {
        #[command(subcommand)]
        cmd: ControllerCmd,
    },
    /// Moves every replica and leadership off NODE (the controller does it) and places
    /// nothing new there.
    Drain {
        /// Node id.
        node: u64,
    },
    /// Lets NODE take replicas and leadership again.
    Undrain {
        /// Node id.
        node: u64,
    },
    /// Retires NODE for good once it holds no replica (drain it first, or let the
    /// controller replace a down node's replicas); its id is never accepted again.
    RemoveNode {
        /// Node id.
        node: u64,
    },
    /// Checks that every replica of each partition holds the same rows (each node hashes
    /// its replica as of the last entry it applied). A partition taking writes is asked
    /// again until its replicas stand at one log position. Exits 1 if replicas differ, 2
    /// if a partition could not be compared.
    Verify {
        /// Table name (default: all tables).
        table: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ControllerCmd {
    /// Whether it runs and is paused, nodes draining, and its recent decisions with reasons.
    Status,
    /// Stops it from making decisions (operations already running finish).
    Pause,
    /// Lets it make decisions again.
    Resume,
}

fn print_controller(s: &cairn_client::ControllerInfo) {
    let state = match (s.enabled, s.paused) {
        (false, _) => "off (start the servers with --controller on)",
        (true, true) => "paused (`cairn admin controller resume` resumes it)",
        (true, false) => "running",
    };
    println!(
        "controller: {state}, beside the metadata leader on node {}",
        s.leader
    );
    if !s.draining.is_empty() {
        let d: Vec<String> = s.draining.iter().map(|n| n.to_string()).collect();
        println!("draining: {}", d.join(", "));
    }
    if s.decisions.is_empty() {
        println!("no decisions yet");
        return;
    }
    let mut cols = Columns::new(&["AGE", "KIND", "PARTITION", "WHAT", "OUTCOME", "WHY"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for d in &s.decisions {
        let age = format!("{:.0}s ago", now.saturating_sub(d.at_ms) as f64 / 1000.0);
        cols.row(vec![
            age,
            d.kind.to_string(),
            d.partition.to_string(),
            d.detail.to_string(),
            d.outcome.to_string(),
            d.why.to_string(),
        ]);
    }
    cols.print();
}

pub(crate) async fn admin(a: AdminArgs, conn: Conn) -> anyhow::Result<ExitCode> {
    let c = conn.client()?;
    match a.cmd {
        AdminCmd::Nodes => {
            let mut cols = Columns::new(&[
                "ID", "ADDRESS", "HTTP", "LIVE", "REPLICAS", "LEADERS", "METADATA",
            ]);
            for n in c.nodes().await.map_err(fail)? {
                cols.row(vec![
                    n.id.to_string(),
                    n.addr.to_string(),
                    n.http_addr.to_string(),
                    if n.live { "yes" } else { "NO" }.to_string(),
                    n.replicas.to_string(),
                    n.leaders.to_string(),
                    [
                        if n.metadata_leader {
                            "leader"
                        } else if n.metadata_member {
                            "member"
                        } else {
                            ""
                        },
                        if n.draining { "(draining)" } else { "" },
                    ]
                    .join(" ")
                    .trim()
                    .to_string(),
                ]);
            }
            cols.print();
        }
        AdminCmd::Partitions { table } => {
            for (name, parts) in c
                .partitions(table.as_deref().unwrap_or(""))
                .await
                .map_err(fail)?
            {
                print_table(&TableInfo {
                    name,
                    id: 0,
                    replication: 0,
                    partitions: parts,
                });
                println!();
            }
        }
        AdminCmd::Split { table, key } => {
            let (left, right) = c.split(&table, key.as_bytes()).await.map_err(fail)?;
            print_table(&TableInfo {
                name: table,
                id: 0,
                replication: 0,
                partitions: vec![left, right],
            });
        }
        AdminCmd::Move {
            partition,
            from,
            to,
            no_wait,
        } => {
            let op = c.move_replica(partition, from, to).await.map_err(fail)?;
            println!(
                "operation {}: move partition {partition} from node {from} to node {to}",
                op.id
            );
            if no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            let mut last = String::new();
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let Some(now) = c
                    .operations()
                    .await
                    .map_err(fail)?
                    .into_iter()
                    .find(|o| o.id == op.id)
                else {
                    anyhow::bail!(
                        "operation {} is no longer listed; see `cairn admin operations`",
                        op.id
                    );
                };
                let line = match &now.error {
                    Some(e) => format!("{}: {} (retrying after: {e})", now.state, now.step),
                    None => format!("{}: {}", now.state, now.step),
                };
                if line != last {
                    println!("  {line}");
                    last = line;
                }
                match now.state.as_str() {
                    "running" => continue,
                    "done" => return Ok(ExitCode::SUCCESS),
                    _ => anyhow::bail!(
                        "the move was rolled back: {}; the partition is as it was",
                        now.error.unwrap_or_default()
                    ),
                }
            }
        }
        AdminCmd::Operations => {
            let mut cols =
                Columns::new(&["ID", "KIND", "PARTITION", "FROM", "TO", "STATE", "STEP"]);
            for o in c.operations().await.map_err(fail)? {
                let node = |n: u64| {
                    if n == 0 {
                        "-".to_string()
                    } else {
                        n.to_string()
                    }
                };
                cols.row(vec![
                    o.id.to_string(),
                    o.kind.to_string(),
                    o.partition.to_string(),
                    node(o.from),
                    node(o.to),
                    o.state.to_string(),
                    format!(
                        "{}{}",
                        o.step,
                        o.error
                            .map(|e| format!(" (last error: {e})"))
                            .unwrap_or_default()
                    ),
                ]);
            }
            cols.print();
        }
        AdminCmd::TransferLeader { partition, node } => {
            c.transfer_leader(partition, node).await.map_err(fail)?;
            println!("partition {partition} is led by node {node}");
        }
        AdminCmd::Controller { cmd } => {
            let s = match cmd {
                ControllerCmd::Status => c.controller().await,
                ControllerCmd::Pause => c.set_controller_paused(true).await,
                ControllerCmd::Resume => c.set_controller_paused(false).await,
            }
            .map_err(fail)?;
            print_controller(&s);
        }
        AdminCmd::Drain { node } => {
            c.set_draining(node, true).await.map_err(fail)?;
            println!(
                "node {node} is draining: the controller moves its replicas and leadership away \
                 (`cairn admin nodes` shows its replicas going to 0)"
            );
        }
        AdminCmd::RemoveNode { node } => {
            c.remove_node(node).await.map_err(fail)?;
            println!("node {node} is removed; its id will not be accepted again");
        }
        AdminCmd::Undrain { node } => {
            c.set_draining(node, false).await.map_err(fail)?;
            println!("node {node} takes replicas and leadership again");
        }
        AdminCmd::Verify { table } => {
            return crate::verify_cmd::verify(&c, table.as_deref()).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cairn user …`.
#[derive(Args, Debug)]
pub(crate) struct UserArgs {
    #[command(subcommand)]
    cmd: UserCmd,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Add a user and print its token (shown only now; store it like a password).
    Add {
        /// The user's name.
        name: String,
        /// `admin` (everything), `readwrite` (keys of its tables, cluster state) or
        /// `readonly` (reads).
        #[arg(long, value_parser = ["admin", "readwrite", "readonly"])]
        role: String,
        /// Limit the role to tables whose name starts with this prefix.
        #[arg(long, default_value = "")]
        tables: String,
    },
    /// List the users with their roles (never their tokens).
    List,
    /// Remove a user: its token stops working within seconds.
    Remove {
        /// The user's name.
        name: String,
    },
}

/// Runs `cairn user`.
pub(crate) async fn user(a: UserArgs, conn: Conn) -> anyhow::Result<ExitCode> {
    let c = conn.client()?;
    match a.cmd {
        UserCmd::Add { name, role, tables } => {
            let token = c.add_user(&name, &role, &tables).await.map_err(fail)?;
            let scope = if tables.is_empty() {
                "all tables".to_string()
            } else {
                format!("tables starting with {tables:?}")
            };
            eprintln!("added user {name} ({role}, {scope}); its token, shown only now:");
            println!("{token}");
        }
        UserCmd::List => {
            let users = c.list_users().await.map_err(fail)?;
            let mut cols = Columns::new(&["NAME", "ROLE", "TABLES"]);
            for (name, role, tables) in users {
                cols.row(vec![name, role.to_string(), tables_scope(&tables)]);
            }
            cols.print();
        }
        UserCmd::Remove { name } => {
            c.remove_user(&name).await.map_err(fail)?;
            println!("removed user {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::Columns;

    #[test]
    fn columns_line_up_under_their_headers_whatever_the_cell_widths() {
        let mut c = Columns::new(&["PARTITION", "RANGE", "LEADER"]);
        c.row(vec![
            "1".into(),
            "[\"\", \"user000000003333\")".into(),
            "1".into(),
        ]);
        c.row(vec!["22".into(), "[\"a\", +inf)".into(), "?".into()]);
        let text = c.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        // Each column starts at the same offset on every line, two spaces after the widest
        // cell before it.
        let at = |line: &str, cell: &str| line.find(cell).unwrap();
        assert_eq!(at(lines[0], "RANGE"), 11);
        assert_eq!(at(lines[1], "[\"\""), 11);
        assert_eq!(at(lines[2], "[\"a\""), 11);
        let leader = at(lines[0], "LEADER");
        assert_eq!(leader, 11 + "[\"\", \"user000000003333\")".len() + 2);
        assert_eq!(lines[1].rfind('1').unwrap(), leader);
        assert_eq!(lines[2].rfind('?').unwrap(), leader);
        // No trailing spaces.
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }
}
