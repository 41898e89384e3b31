//! `switchyard-ctl`: the operator CLI.
//!
//! Human output by default, `-o json` for scripts (`get` prints YAML by
//! default). Errors print the gRPC status message and its code to stderr
//! and exit with status 1 (2 for usage errors).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use switchyard_proto::config::{self, ApiKey, Budget, Config};
use switchyard_proto::control::{
    config_service_client::ConfigServiceClient, resource::Spec, ApplyConfigRequest,
    ApplyResourceRequest, ChangeType, CreateKeyRequest, DeleteResourceRequest, DiffEntry,
    DiffRequest, GetBudgetStatusRequest, GetConfigRequest, GetUsageRequest, HistoryRequest,
    ListBudgetsRequest, ListEdgesRequest, ListKeysRequest, Resource, ResourceKind,
    RevokeKeyRequest, RollbackRequest, SetBudgetRequest, ValidateRequest, WriteOptions,
    WriteResult,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::AddBearer;
use crate::versioning;

/// Default control-plane URL.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7400";

/// Operate a Switchyard control plane.
#[derive(Debug, Parser)]
#[command(name = "switchyard-ctl", version)]
pub struct CtlArgs {
    /// Control-plane URL (http:// or https://). Default http://127.0.0.1:7400.
    #[arg(long, global = true, env = "SWITCHYARD_SERVER")]
    pub server: Option<String>,

    /// Admin bearer token.
    #[arg(
        long,
        global = true,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Output format (`get` prints YAML for human and yaml).
    #[arg(short = 'o', long, global = true, value_enum, default_value = "human")]
    pub output: Output,

    /// PEM CA certificate to verify an https:// server.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,

    /// Deadline of each call.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Author recorded in history (default: $USER).
    #[arg(long, global = true, env = "SWITCHYARD_AUTHOR")]
    pub author: Option<String>,

    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
    Yaml,
}

/// Flags shared by writes.
#[derive(Debug, Clone, Args)]
pub struct WriteFlags {
    /// Fail (ABORTED) unless the current version is exactly this.
    #[arg(long)]
    pub expected_version: Option<u64>,
    /// Comment recorded in history.
    #[arg(long, short = 'm')]
    pub comment: Option<String>,
    /// Validate and show the diff without committing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Replace the whole config with a YAML file (the edge's --config format).
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Print the config, a section (KIND) or one resource (KIND NAME) as YAML.
    Get {
        /// providers, routes, prices, tiers, keys or budgets.
        kind: Option<String>,
        name: Option<String>,
        /// A past version instead of the current one.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Show what applying a YAML file would change.
    Diff {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Compare against this version instead of the current one.
        #[arg(long)]
        version: Option<u64>,
        /// Exit with status 1 when there are differences.
        #[arg(long)]
        exit_code: bool,
    },
    /// List versions, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only versions below this one (paging).
        #[arg(long)]
        before: Option<u64>,
    },
    /// Commit a new version equal to VERSION.
    Rollback {
        version: u64,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Validate a YAML file (offline when no server is configured, or with --offline).
    Validate {
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[arg(long)]
        offline: bool,
    },
    /// Edges connected to (or seen by) the control plane.
    Edges,
    /// Create or replace one resource from a YAML file holding just that resource.
    Put {
        kind: String,
        name: String,
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Delete one resource.
    Delete {
        kind: String,
        name: String,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Virtual API keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Spend budgets.
    Budgets {
        #[command(subcommand)]
        cmd: BudgetsCmd,
    },
    /// Cost views from the usage edges reported (requests, tokens, USD).
    Usage {
        /// Group by key, user, team, feature, model, route, provider, edge,
        /// hour or day (UTC).
        #[arg(long, default_value = "key")]
        by: String,
        /// Only usage since this time: RFC 3339 (2026-11-23T00:00:00Z) or a
        /// duration back from now (24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only usage before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key; its secret is printed once and never stored.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        team: String,
        #[arg(long, default_value = "")]
        user: String,
        #[arg(long)]
        tier: String,
        /// Public model names the key may call (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Feature tag applied when a request carries none.
        #[arg(long, default_value = "")]
        feature: String,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// Revoke a key (kept for audit, rejected by edges).
    Revoke {
        id: String,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// List keys (never secrets).
    List {
        #[arg(long)]
        version: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BudgetsCmd {
    /// Create or replace a budget.
    Set {
        /// Budget name (unique).
        #[arg(long)]
        name: String,
        /// feature, team or key.
        #[arg(long)]
        scope: String,
        /// The feature / team / key id the budget applies to.
        #[arg(long = "match")]
        match_: String,
        /// day or month.
        #[arg(long)]
        window: String,
        /// Soft limit in USD (alert only); 0 = none. Alias --soft.
        #[arg(long, alias = "soft", default_value_t = 0.0)]
        soft_limit_usd: f64,
        /// Hard limit in USD (reject or downgrade); 0 = none. Alias --hard.
        #[arg(long, alias = "hard", default_value_t = 0.0)]
        hard_limit_usd: f64,
        /// Route to use instead once the hard limit is hit.
        #[arg(long, default_value = "")]
        downgrade_to: String,
        /// Serve anyway when the edge's granted share is spent and the
        /// control plane is unreachable (default: reject).
        #[arg(long)]
        fail_open: bool,
        #[command(flatten)]
        write: WriteFlags,
    },
    /// List budgets.
    List {
        #[arg(long)]
        version: Option<u64>,
    },
    /// Global budget windows: hard limit, accounted, and each edge's grant.
    Status {
        /// Only this budget.
        #[arg(long)]
        name: Option<String>,
    },
}

/// A failed command: message for stderr and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit: 1,
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Self::new(format!("{} ({})", s.message(), code_name(s.code())))
    }
}

/// Canonical gRPC code names (`INVALID_ARGUMENT`, ...).
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

type Client = ConfigServiceClient<InterceptedService<Channel, AddBearer>>;

struct Ctx {
    args_server: Option<String>,
    token: String,
    output: Output,
    ca_cert: Option<PathBuf>,
    timeout: Duration,
    author: String,
}

impl Ctx {
    fn server(&self) -> String {
        self.args_server
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVER.to_string())
    }

    async fn client(&self) -> Result<Client, Failure> {
        let url = self.server();
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|e| Failure::new(format!("invalid --server {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5).min(self.timeout))
            .timeout(self.timeout);
        if url.starts_with("https://") {
            #[cfg(feature = "tls")]
            {
                let mut tls = tonic::transport::ClientTlsConfig::new();
                if let Some(ca) = &self.ca_cert {
                    let pem = std::fs::read(ca)
                        .map_err(|e| Failure::new(format!("{}: {e}", ca.display())))?;
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                }
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| Failure::new(format!("TLS configuration: {e}")))?;
            }
            #[cfg(not(feature = "tls"))]
            return Err(Failure::new(
                "this build has no TLS support (cargo feature `tls`)",
            ));
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let chain = error_chain(&e);
            let hint = if url.starts_with("https://")
                && self.ca_cert.is_none()
                && chain.contains("certificate")
            {
                " (pass --ca-cert with the server's CA)"
            } else {
                ""
            };
            Failure::new(format!(
                "cannot connect to {url}: {chain}{hint} (UNAVAILABLE)"
            ))
        })?;
        let auth = AddBearer::new(&self.token).map_err(Failure::new)?;
        Ok(ConfigServiceClient::with_interceptor(channel, auth)
            .max_decoding_message_size(crate::server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::server::MAX_MESSAGE_BYTES))
    }

    fn write_options(&self, w: &WriteFlags) -> Option<WriteOptions> {
        Some(WriteOptions {
            expected_version: w.expected_version,
            dry_run: w.dry_run,
            author: self.author.clone(),
            comment: w.comment.clone().unwrap_or_default(),
        })
    }

    /// Machine-readable output requested (`-o json` or `-o yaml`).
    fn json(&self) -> bool {
        self.output != Output::Human
    }

    /// Prints a structured result as JSON or YAML.
    fn emit(&self, v: &Value) {
        if self.output == Output::Yaml {
            print!("{}", versioning::yaml_of(v));
        } else {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}

/// Reads a config YAML file exactly as the edge's `--config` does (with
/// `${ENV}` expansion), hashing clear-text key secrets locally so they never
/// leave this machine.
pub fn load_file(path: &Path) -> Result<Config, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
    let mut cfg = config::from_yaml_str(&text, |n| std::env::var(n).ok())
        .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
    versioning::normalize(&mut cfg).map_err(|errs| {
        Failure::new(format!(
            "invalid config: {}",
            versioning::describe_errors(&errs)
        ))
    })?;
    Ok(cfg)
}

/// Reads a YAML file holding one resource of `kind`.
fn load_resource(path: &Path, kind: ResourceKind, name: &str) -> Result<Resource, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
    let text = config::expand_env(&text, |n| std::env::var(n).ok())
        .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
    let value: Value = serde_yaml::from_str(&text)
        .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
    let section = versioning::section(kind);
    let doc = match kind {
        ResourceKind::Key | ResourceKind::Budget => json!({ section: [value] }),
        _ => json!({ section: { name: value } }),
    };
    let mut cfg: Config = serde_json::from_value(doc)
        .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
    versioning::normalize(&mut cfg).map_err(|errs| {
        Failure::new(format!(
            "invalid resource: {}",
            versioning::describe_errors(&errs)
        ))
    })?;
    let spec = match kind {
        ResourceKind::Provider => cfg.providers.remove(name).map(Spec::Provider),
        ResourceKind::Route => cfg.routes.remove(name).map(Spec::Route),
        ResourceKind::Price => cfg.prices.remove(name).map(Spec::Price),
        ResourceKind::Tier => cfg.tiers.remove(name).map(Spec::Tier),
        ResourceKind::Key => cfg.keys.pop().map(Spec::Key),
        ResourceKind::Budget => cfg.budgets.pop().map(Spec::Budget),
        ResourceKind::Unspecified => None,
    };
    Ok(Resource {
        name: name.to_string(),
        spec,
    })
}

fn kind_arg(s: &str) -> Result<ResourceKind, Failure> {
    versioning::parse_kind(s).ok_or_else(|| Failure {
        message: format!("unknown kind {s:?} (providers, routes, prices, tiers, keys, budgets)"),
        exit: 2,
    })
}

fn change_name(c: i32) -> &'static str {
    match ChangeType::try_from(c).unwrap_or(ChangeType::Unspecified) {
        ChangeType::Added => "added",
        ChangeType::Removed => "removed",
        ChangeType::Modified => "modified",
        ChangeType::Unspecified => "unspecified",
    }
}

fn parse_json(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
    }
}

fn changes_json(entries: &[DiffEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                json!({
                    "change": change_name(e.change),
                    "path": e.path,
                    "before": parse_json(&e.before),
                    "after": parse_json(&e.after),
                })
            })
            .collect(),
    )
}

fn write_json(r: &WriteResult) -> Value {
    json!({
        "version": r.version,
        "previous_version": r.previous_version,
        "changed": r.changed,
        "dry_run": r.dry_run,
        "summary": r.summary,
        "changes": changes_json(&r.changes),
    })
}

fn print_write(ctx: &Ctx, r: &WriteResult) {
    if ctx.json() {
        return ctx.emit(&write_json(r));
    }
    match (r.dry_run, r.changed) {
        (true, true) => println!(
            "dry run: would commit version {} (current {}): {}",
            r.version, r.previous_version, r.summary
        ),
        (true, false) => println!("dry run: no changes (current version {})", r.version),
        (false, true) => println!(
            "committed version {} (previous {}): {}",
            r.version, r.previous_version, r.summary
        ),
        (false, false) => println!("no changes; current version is {}", r.version),
    }
    print!("{}", versioning::render_text(&r.changes));
}

fn table(rows: Vec<Vec<String>>) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == r.len() {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Runs `switchyard-ctl` with parsed arguments.
pub async fn run(args: CtlArgs) -> ExitCode {
    let author = args
        .author
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let ctx = Ctx {
        args_server: args.server.clone(),
        token: args.token.clone().unwrap_or_default(),
        output: args.output,
        ca_cert: args.ca_cert.clone(),
        timeout: args.timeout,
        author,
    };
    match dispatch(&ctx, args.cmd).await {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.exit)
        }
    }
}

async fn dispatch(ctx: &Ctx, cmd: Cmd) -> Result<ExitCode, Failure> {
    match cmd {
        Cmd::Apply { file, write } => {
            let cfg = load_file(&file)?;
            let r = ctx
                .client()
                .await?
                .apply_config(ApplyConfigRequest {
                    config: Some(cfg),
                    options: ctx.write_options(&write),
                })
                .await?
                .into_inner();
            print_write(ctx, &r);
        }
        Cmd::Get {
            kind,
            name,
            version,
        } => {
            let kind = kind.as_deref().map(kind_arg).transpose()?;
            let resp = ctx
                .client()
                .await?
                .get_config(GetConfigRequest {
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            let cfg = resp.config.unwrap_or_default();
            let value = match kind {
                None => versioning::compact_json(&cfg),
                Some(k) => {
                    versioning::compact_resource(&cfg, k, name.as_deref()).ok_or_else(|| {
                        Failure::new(format!(
                            "{} {:?} not found in version {} (NOT_FOUND)",
                            versioning::section(k),
                            name.clone().unwrap_or_default(),
                            resp.info.as_ref().map_or(0, |i| i.version)
                        ))
                    })?
                }
            };
            if ctx.output == Output::Yaml {
                print!("{}", versioning::yaml_of(&value));
            } else if ctx.json() {
                let version = resp.info.as_ref().map_or(0, |i| i.version);
                ctx.emit(&json!({ "version": version, "value": value }));
            } else {
                if let Some(i) = &resp.info {
                    println!(
                        "# version {} committed {} by {}",
                        i.version,
                        versioning::format_unix_ms(i.committed_at_unix_ms),
                        or_dash(&i.author)
                    );
                }
                print!("{}", versioning::yaml_of(&value));
            }
        }
        Cmd::Diff {
            file,
            version,
            exit_code,
        } => {
            let cfg = load_file(&file)?;
            let d = ctx
                .client()
                .await?
                .diff(DiffRequest {
                    config: Some(cfg),
                    base_version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            if ctx.json() {
                ctx.emit(&json!({
                    "base_version": d.base_version,
                    "summary": d.summary,
                    "changes": changes_json(&d.entries),
                }));
            } else if d.entries.is_empty() {
                println!("no differences from version {}", d.base_version);
            } else {
                println!("changes against version {}: {}", d.base_version, d.summary);
                print!("{}", d.text);
            }
            if exit_code && !d.entries.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::History { limit, before } => {
            let h = ctx
                .client()
                .await?
                .history(HistoryRequest {
                    limit,
                    before_version: before.unwrap_or(0),
                })
                .await?
                .into_inner();
            if ctx.json() {
                let versions: Vec<Value> = h
                    .versions
                    .iter()
                    .map(|v| {
                        json!({
                            "version": v.version,
                            "committed_at_unix_ms": v.committed_at_unix_ms,
                            "committed_at": versioning::format_unix_ms(v.committed_at_unix_ms),
                            "author": v.author,
                            "comment": v.comment,
                            "summary": v.summary,
                            "operation": v.operation,
                            "rollback_of": v.rollback_of,
                            "config_sha256": v.config_sha256,
                        })
                    })
                    .collect();
                ctx.emit(&json!({ "current_version": h.current_version, "versions": versions }));
            } else if h.versions.is_empty() {
                println!("no versions yet");
            } else {
                let mut rows = vec![vec![
                    "VERSION",
                    "COMMITTED",
                    "AUTHOR",
                    "OPERATION",
                    "SUMMARY",
                    "COMMENT",
                ]
                .into_iter()
                .map(String::from)
                .collect()];
                for v in &h.versions {
                    let marker = if v.version == h.current_version {
                        "*"
                    } else {
                        ""
                    };
                    rows.push(vec![
                        format!("{}{marker}", v.version),
                        versioning::format_unix_ms(v.committed_at_unix_ms),
                        or_dash(&v.author),
                        or_dash(&v.operation),
                        or_dash(&v.summary),
                        or_dash(&v.comment),
                    ]);
                }
                table(rows);
            }
        }
        Cmd::Rollback { version, write } => {
            let r = ctx
                .client()
                .await?
                .rollback(RollbackRequest {
                    to_version: version,
                    options: ctx.write_options(&write),
                })
                .await?
                .into_inner();
            print_write(ctx, &r);
        }
        Cmd::Validate { file, offline } => {
            let cfg = load_file(&file)?;
            let errors: Vec<(String, String)> =
                if offline || ctx.args_server.as_deref().is_none_or(str::is_empty) {
                    match config::validate(&cfg) {
                        Ok(()) => vec![],
                        Err(e) => e.errors.into_iter().map(|e| (e.path, e.message)).collect(),
                    }
                } else {
                    let r = ctx
                        .client()
                        .await?
                        .validate(ValidateRequest { config: Some(cfg) })
                        .await?
                        .into_inner();
                    r.errors.into_iter().map(|e| (e.path, e.message)).collect()
                };
            if ctx.json() {
                let errs: Vec<Value> = errors
                    .iter()
                    .map(|(p, m)| json!({"path": p, "message": m}))
                    .collect();
                ctx.emit(&json!({ "valid": errors.is_empty(), "errors": errs }));
            } else if errors.is_empty() {
                println!("{}: valid", file.display());
            } else {
                for (p, m) in &errors {
                    eprintln!("{p}: {m}");
                }
                eprintln!(
                    "{}: {} error(s) (INVALID_ARGUMENT)",
                    file.display(),
                    errors.len()
                );
            }
            if !errors.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Edges => {
            let r = ctx
                .client()
                .await?
                .list_edges(ListEdgesRequest {})
                .await?
                .into_inner();
            if ctx.json() {
                let edges: Vec<Value> = r
                    .edges
                    .iter()
                    .map(|e| {
                        json!({
                            "node_id": e.node_id,
                            "region": e.region,
                            "version_served": e.version_served,
                            "version_sent": e.version_sent,
                            "last_ack_version": e.last_ack_version,
                            "last_ack_accepted": e.last_ack_accepted,
                            "last_ack_error": e.last_ack_error,
                            "last_ack_unix_ms": e.last_ack_unix_ms,
                            "last_seen_unix_ms": e.last_seen_unix_ms,
                            "connected": e.connected,
                        })
                    })
                    .collect();
                ctx.emit(&json!({ "current_version": r.current_version, "edges": edges }));
            } else if r.edges.is_empty() {
                println!("no edges (current version {})", r.current_version);
            } else {
                let mut rows = vec![[
                    "NODE",
                    "REGION",
                    "SERVED",
                    "SENT",
                    "LAST-ACK",
                    "CONNECTED",
                    "LAST-SEEN",
                    "ERROR",
                ]
                .map(String::from)
                .to_vec()];
                for e in &r.edges {
                    let ack = if e.last_ack_unix_ms == 0 {
                        "-".to_string()
                    } else {
                        format!(
                            "{} {}",
                            e.last_ack_version,
                            if e.last_ack_accepted {
                                "ok"
                            } else {
                                "rejected"
                            }
                        )
                    };
                    rows.push(vec![
                        e.node_id.clone(),
                        or_dash(&e.region),
                        e.version_served.to_string(),
                        e.version_sent.to_string(),
                        ack,
                        if e.connected { "yes" } else { "no" }.to_string(),
                        versioning::format_unix_ms(e.last_seen_unix_ms),
                        or_dash(&e.last_ack_error),
                    ]);
                }
                table(rows);
            }
        }
        Cmd::Put {
            kind,
            name,
            file,
            write,
        } => {
            let kind = kind_arg(&kind)?;
            let res = load_resource(&file, kind, &name)?;
            let r = ctx
                .client()
                .await?
                .apply_resource(ApplyResourceRequest {
                    resource: Some(res),
                    options: ctx.write_options(&write),
                })
                .await?
                .into_inner();
            print_write(ctx, &r);
        }
        Cmd::Delete { kind, name, write } => {
            let kind = kind_arg(&kind)?;
            let r = ctx
                .client()
                .await?
                .delete_resource(DeleteResourceRequest {
                    kind: kind as i32,
                    name,
                    options: ctx.write_options(&write),
                })
                .await?
                .into_inner();
            print_write(ctx, &r);
        }
        Cmd::Keys { cmd } => keys(ctx, cmd).await?,
        Cmd::Budgets { cmd } => budgets(ctx, cmd).await?,
        Cmd::Usage { by, since, until } => usage(ctx, &by, since, until).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `--since` / `--until`: RFC 3339, or a duration back from now.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, Failure> {
    let s = s.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        Err(_) => Err(Failure {
            message: format!(
                "invalid time {s:?}: use RFC 3339 (2026-11-23T00:00:00Z) or a duration (24h)"
            ),
            exit: 2,
        }),
    }
}

fn usage_row_json(r: &switchyard_proto::control::UsageRow) -> Value {
    json!({
        "key": r.key,
        "requests": r.requests,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "cached_tokens": r.cached_tokens,
        "cost_usd": r.cost_usd,
    })
}

async fn usage(
    ctx: &Ctx,
    by: &str,
    since: Option<String>,
    until: Option<String>,
) -> Result<(), Failure> {
    let now = versioning::now_unix_ms();
    let since = since.as_deref().map(|s| parse_time(s, now)).transpose()?;
    let until = until.as_deref().map(|s| parse_time(s, now)).transpose()?;
    let r = ctx
        .client()
        .await?
        .get_usage(GetUsageRequest {
            group_by: by.to_string(),
            since_unix_ms: since.unwrap_or(0),
            until_unix_ms: until.unwrap_or(0),
        })
        .await?
        .into_inner();
    let total = r.total.clone().unwrap_or_default();
    if ctx.json() {
        ctx.emit(&json!({
            "group_by": r.group_by,
            "since_unix_ms": since.unwrap_or(0),
            "until_unix_ms": until.unwrap_or(0),
            "rows": r.rows.iter().map(usage_row_json).collect::<Vec<_>>(),
            "total": usage_row_json(&total),
        }));
        return Ok(());
    }
    if r.rows.is_empty() {
        println!("no usage");
        return Ok(());
    }
    let mut rows = vec![[
        r.group_by.to_uppercase().as_str(),
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "CACHED",
        "COST-USD",
    ]
    .map(String::from)
    .to_vec()];
    for row in r.rows.iter().chain(std::iter::once(&total)) {
        rows.push(vec![
            or_dash(&row.key),
            row.requests.to_string(),
            row.input_tokens.to_string(),
            row.output_tokens.to_string(),
            row.cached_tokens.to_string(),
            format!("{:.6}", row.cost_usd),
        ]);
    }
    table(rows);
    Ok(())
}

async fn keys(ctx: &Ctx, cmd: KeysCmd) -> Result<(), Failure> {
    match cmd {
        KeysCmd::Create {
            id,
            team,
            user,
            tier,
            models,
            feature,
            write,
        } => {
            let r = ctx
                .client()
                .await?
                .create_key(CreateKeyRequest {
                    id,
                    team,
                    user,
                    tier,
                    allowed_models: models,
                    default_feature: feature,
                    options: ctx.write_options(&write),
                })
                .await?
                .into_inner();
            let result = r.result.unwrap_or_default();
            let key = r.key.unwrap_or_default();
            if ctx.json() {
                ctx.emit(&json!({
                    "id": key.id,
                    "secret": r.secret,
                    "secret_sha256": key.secret_sha256,
                    "result": write_json(&result),
                }));
            } else if result.dry_run {
                print_write(ctx, &result);
            } else {
                println!("created key {} (version {})", key.id, result.version);
                println!("secret: {}", r.secret);
                println!("This secret is shown only once; only its sha256 is stored.");
            }
        }
        KeysCmd::Revoke { id, write } => {
            let r = ctx
                .client()
                .await?
                .revoke_key(RevokeKeyRequest {
                    id,
                    options: ctx.write_options(&write),
                })
                .await?
                .into_inner();
            print_write(ctx, &r);
        }
        KeysCmd::List { version } => {
            let r = ctx
                .client()
                .await?
                .list_keys(ListKeysRequest {
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            if ctx.json() {
                let keys: Vec<Value> = r.keys.iter().map(key_json).collect();
                ctx.emit(&json!({ "version": r.version, "keys": keys }));
            } else if r.keys.is_empty() {
                println!("no keys (version {})", r.version);
            } else {
                let mut rows = vec![
                    ["ID", "TEAM", "USER", "TIER", "MODELS", "FEATURE", "REVOKED"]
                        .map(String::from)
                        .to_vec(),
                ];
                for k in &r.keys {
                    rows.push(vec![
                        k.id.clone(),
                        or_dash(&k.team),
                        or_dash(&k.user),
                        or_dash(&k.tier),
                        if k.allowed_models.is_empty() {
                            "*".into()
                        } else {
                            k.allowed_models.join(",")
                        },
                        or_dash(&k.default_feature),
                        if k.revoked { "yes" } else { "no" }.into(),
                    ]);
                }
                table(rows);
            }
        }
    }
    Ok(())
}

fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "team": k.team,
        "user": k.user,
        "tier": k.tier,
        "allowed_models": k.allowed_models,
        "default_feature": k.default_feature,
        "revoked": k.revoked,
    })
}

async fn budgets(ctx: &Ctx, cmd: BudgetsCmd) -> Result<(), Failure> {
    match cmd {
        BudgetsCmd::Set {
            name,
            scope,
            match_,
            window,
            soft_limit_usd,
            hard_limit_usd,
            downgrade_to,
            fail_open,
            write,
        } => {
            let budget = Budget {
                name,
                scope,
                r#match: match_,
                window,
                soft_limit_usd,
                hard_limit_usd,
                downgrade_to,
                fail_open,
            };
            let r = ctx
                .client()
                .await?
                .set_budget(SetBudgetRequest {
                    budget: Some(budget),
                    options: ctx.write_options(&write),
                })
                .await?
                .into_inner();
            print_write(ctx, &r);
        }
        BudgetsCmd::List { version } => {
            let r = ctx
                .client()
                .await?
                .list_budgets(ListBudgetsRequest {
                    version: version.unwrap_or(0),
                })
                .await?
                .into_inner();
            if ctx.json() {
                let budgets = serde_json::to_value(&r.budgets).unwrap_or(Value::Null);
                ctx.emit(&json!({ "version": r.version, "budgets": budgets }));
            } else if r.budgets.is_empty() {
                println!("no budgets (version {})", r.version);
            } else {
                let mut rows = vec![[
                    "NAME",
                    "SCOPE",
                    "MATCH",
                    "WINDOW",
                    "SOFT-USD",
                    "HARD-USD",
                    "DOWNGRADE-TO",
                ]
                .map(String::from)
                .to_vec()];
                for b in &r.budgets {
                    rows.push(vec![
                        b.name.clone(),
                        b.scope.clone(),
                        b.r#match.clone(),
                        b.window.clone(),
                        format!("{}", b.soft_limit_usd),
                        format!("{}", b.hard_limit_usd),
                        or_dash(&b.downgrade_to),
                    ]);
                }
                table(rows);
            }
        }
        BudgetsCmd::Status { name } => {
            let r = ctx
                .client()
                .await?
                .get_budget_status(GetBudgetStatusRequest {
                    budget: name.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let now = versioning::now_unix_ms();
            if ctx.json() {
                let list: Vec<Value> = r
                    .allocations
                    .iter()
                    .map(|a| {
                        let accounted = crate::budgets::total(a);
                        json!({
                            "budget": a.budget,
                            "window": a.window,
                            "window_start_unix_ms": a.window_start_unix_ms,
                            "window_start": versioning::format_unix_ms(a.window_start_unix_ms),
                            "hard_limit_usd": a.hard_limit_usd,
                            "accounted_usd": accounted,
                            "available_usd": (a.hard_limit_usd - accounted).max(0.0),
                            "edges": a.edges.iter().map(|e| json!({
                                "edge_id": e.edge_id,
                                "instance_id": e.instance_id,
                                "allowance_usd": e.allowance_usd,
                                "committed_usd": e.committed_usd,
                                "carried_usd": e.carried_usd,
                                "lease_expires_unix_ms": e.lease_expires_unix_ms,
                                "lease_live": e.lease_expires_unix_ms > now,
                                "last_report_unix_ms": e.last_report_unix_ms,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                ctx.emit(&json!({ "allocations": list }));
            } else if r.allocations.is_empty() {
                println!("no global budget windows yet");
            } else {
                let mut rows = vec![[
                    "BUDGET",
                    "WINDOW",
                    "EDGE",
                    "HARD-USD",
                    "ALLOWANCE-USD",
                    "COMMITTED-USD",
                    "CARRIED-USD",
                    "LEASE",
                ]
                .map(String::from)
                .to_vec()];
                for a in &r.allocations {
                    let accounted = crate::budgets::total(a);
                    rows.push(vec![
                        a.budget.clone(),
                        format!(
                            "{} {}",
                            a.window,
                            versioning::format_unix_ms(a.window_start_unix_ms)
                        ),
                        "*".into(),
                        format!("{}", a.hard_limit_usd),
                        format!("{accounted:.6}"),
                        "-".into(),
                        "-".into(),
                        format!("available {:.6}", (a.hard_limit_usd - accounted).max(0.0)),
                    ]);
                    for e in &a.edges {
                        rows.push(vec![
                            String::new(),
                            String::new(),
                            e.edge_id.clone(),
                            String::new(),
                            format!("{:.6}", e.allowance_usd),
                            format!("{:.6}", e.committed_usd),
                            format!("{:.6}", e.carried_usd),
                            if e.lease_expires_unix_ms > now {
                                format!("live {}s", (e.lease_expires_unix_ms - now) / 1000)
                            } else {
                                "expired".into()
                            },
                        ]);
                    }
                }
                table(rows);
            }
        }
    }
    Ok(())
}
