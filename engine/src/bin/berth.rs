//! `berth`: the command-line client of berthd, with Docker's verbs and
//! flags. A thin client: every command is one or a few API calls.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use bytes::Bytes;
use clap::{Args as ClapArgs, Parser, Subcommand};
use engine::api::client::{check, encode, json_body, no_body, Client, ClientError, DEFAULT_SOCKET};
use engine::api::stream::{Demuxer, StreamKind};
use engine::api::time::human;
use engine::api::types::*;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Method, Response, StatusCode};

/// berth's container engine client.
#[derive(Parser, Debug)]
#[command(name = "berth", version, about = "berth's container engine client")]
struct Cli {
    /// Daemon socket (unix:///path); default $BERTH_HOST, else unix:///run/berth/berthd.sock.
    #[arg(short = 'H', long, global = true)]
    host: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the client and daemon versions.
    Version,
    /// Load an image archive (docker save, OCI archive, compressed or not).
    Load {
        /// The archive.
        #[arg(short, long)]
        input: PathBuf,
        /// Print only the loaded names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Pull an image from a registry.
    Pull {
        /// Reference, e.g. busybox:latest or 127.0.0.1:5000/app:1.
        reference: String,
    },
    /// List images.
    Images {
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images.
    Rmi {
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove the last name of an image that containers use.
        #[arg(short, long)]
        force: bool,
    },
    /// Create and start a container.
    Run(Box<RunArgs>),
    /// List containers.
    Ps {
        /// All containers, not only running ones.
        #[arg(short, long)]
        all: bool,
        /// Only ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a container's output.
    Logs {
        /// Follow new output.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines ("all" for every line).
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        /// Prefix lines with their time.
        #[arg(short, long)]
        timestamps: bool,
        /// Container.
        container: String,
    },
    /// Start containers.
    Start {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop containers.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short, long)]
        time: Option<u64>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers.
    Restart {
        /// Seconds to wait before SIGKILL.
        #[arg(short, long)]
        time: Option<u64>,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers.
    Kill {
        /// Signal (name or number).
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill running containers first.
        #[arg(short, long)]
        force: bool,
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Show containers (or images) as JSON.
    Inspect {
        /// Names or ids.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run a command in a running container.
    Exec {
        /// Keep stdin open and send it to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Environment: K=V, or K to pass on this shell's value of K.
        #[arg(short, long)]
        env: Vec<String>,
        /// User.
        #[arg(short, long)]
        user: Option<String>,
        /// Working directory.
        #[arg(short, long)]
        workdir: Option<String>,
        /// Container.
        container: String,
        /// Command and arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Wait for containers to stop; print their exit codes.
    Wait {
        /// Containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
}

#[derive(ClapArgs, Debug)]
struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Name.
    #[arg(long)]
    name: Option<String>,
    /// Environment: K=V, or K to pass on this shell's value of K.
    #[arg(short, long)]
    env: Vec<String>,
    /// Volume: NAME:/path or /host:/path, with :ro.
    #[arg(short, long)]
    volume: Vec<String>,
    /// Publish a port: [IP:]HOST:CONTAINER[/tcp|udp].
    #[arg(short, long)]
    publish: Vec<String>,
    /// Working directory.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User: UID[:GID] or NAME[:GROUP].
    #[arg(short, long)]
    user: Option<String>,
    /// Memory limit (64M, 1G).
    #[arg(short, long)]
    memory: Option<String>,
    /// CPU limit (0.5 = half a CPU).
    #[arg(long)]
    cpus: Option<f64>,
    /// Process limit.
    #[arg(long)]
    pids_limit: Option<i64>,
    /// Read-only root filesystem.
    #[arg(long)]
    read_only: bool,
    /// no, on-failure[:N], always, unless-stopped.
    #[arg(long)]
    restart: Option<String>,
    /// bridge, host or none.
    #[arg(long)]
    network: Option<String>,
    /// Replace the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Labels (K=V).
    #[arg(short, long)]
    label: Vec<String>,
    /// tmpfs mounts (/path[:size=64M,mode=1777]).
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Stop signal.
    #[arg(long)]
    stop_signal: Option<String>,
    /// Stop grace period in seconds.
    #[arg(long)]
    stop_timeout: Option<i64>,
    /// Image.
    image: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

/// A failure with the exit code it gives.
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        Fail::new(1, e.to_string())
    }
}

type Res<T = ()> = Result<T, Fail>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let host = cli
        .host
        .clone()
        .or_else(|| std::env::var("BERTH_HOST").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("unix://{DEFAULT_SOCKET}"));
    let client = match Client::from_host(&host) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(125);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::from(125);
        }
    };
    match rt.block_on(dispatch(&client, cli.cmd)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            let _ = std::io::stdout().flush();
            eprintln!("berth: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// A bad command line is one line and exit code 125, as docker's; help
/// and version are printed whole.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() { 125 } else { 0 });
    }
    // clap's first paragraph is the error; tips and usage follow.
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first.join(" ");
    eprintln!(
        "berth: {} (see berth --help)",
        line.strip_prefix("error: ").unwrap_or(&line)
    );
    ExitCode::from(125)
}

async fn dispatch(c: &Client, cmd: Cmd) -> Res<u8> {
    match cmd {
        Cmd::Version => version(c).await,
        Cmd::Load { input, quiet } => load(c, &input, quiet).await,
        Cmd::Pull { reference } => pull(c, &reference).await,
        Cmd::Images { quiet } => images(c, quiet).await,
        Cmd::Rmi { images, force } => rmi(c, &images, force).await,
        Cmd::Run(args) => run(c, *args).await,
        Cmd::Ps { all, quiet } => ps(c, all, quiet).await,
        Cmd::Logs {
            follow,
            tail,
            timestamps,
            container,
        } => {
            let path = format!(
                "/containers/{}/logs?stdout=1&stderr=1&follow={}&tail={}&timestamps={}",
                encode(&container),
                u8::from(follow),
                encode(&tail),
                u8::from(timestamps)
            );
            let resp = c.call(Method::GET, &path, no_body()).await?;
            demux_to_stdio(resp).await?;
            Ok(0)
        }
        Cmd::Start { containers } => {
            each(c, &containers, |id| format!("/containers/{id}/start")).await
        }
        Cmd::Stop { time, containers } => {
            let t = time.map(|t| format!("?t={t}")).unwrap_or_default();
            each(c, &containers, |id| format!("/containers/{id}/stop{t}")).await
        }
        Cmd::Restart { time, containers } => {
            let t = time.map(|t| format!("?t={t}")).unwrap_or_default();
            each(c, &containers, |id| format!("/containers/{id}/restart{t}")).await
        }
        Cmd::Kill { signal, containers } => {
            let s = encode(&signal);
            each(c, &containers, |id| {
                format!("/containers/{id}/kill?signal={s}")
            })
            .await
        }
        Cmd::Rm { force, containers } => {
            let mut failed = None;
            for name in &containers {
                let path = format!("/containers/{}?force={}", encode(name), u8::from(force));
                match c.call(Method::DELETE, &path, no_body()).await {
                    Ok(_) => println!("{name}"),
                    Err(e) => {
                        eprintln!("berth: {e}");
                        failed = Some(1);
                    }
                }
            }
            Ok(failed.unwrap_or(0))
        }
        Cmd::Inspect { names } => inspect(c, &names).await,
        Cmd::Exec {
            interactive,
            env,
            user,
            workdir,
            container,
            cmd,
        } => exec(c, interactive, env, user, workdir, &container, cmd).await,
        Cmd::Wait { containers } => {
            let mut rc = 0;
            for name in &containers {
                let path = format!("/containers/{}/wait", encode(name));
                match c.json::<WaitResponse>(Method::POST, &path, no_body()).await {
                    Ok(w) => println!("{}", w.status_code),
                    Err(e) => {
                        eprintln!("berth: {e}");
                        rc = 1;
                    }
                }
            }
            Ok(rc)
        }
    }
}

/// POSTs `path(name)` for each container, printing each name as Docker does.
async fn each(c: &Client, names: &[String], path: impl Fn(&str) -> String) -> Res<u8> {
    let mut rc = 0;
    for name in names {
        match c.call(Method::POST, &path(&encode(name)), no_body()).await {
            Ok(_) => println!("{name}"),
            Err(e) => {
                eprintln!("berth: {e}");
                rc = 1;
            }
        }
    }
    Ok(rc)
}

async fn version(c: &Client) -> Res<u8> {
    println!(
        "Client:\n Version:     {}\n API version: {}",
        env!("CARGO_PKG_VERSION"),
        engine::api::API_VERSION
    );
    let v: VersionResponse = c.json(Method::GET, "/version", no_body()).await?;
    println!(
        "\nServer: {}\n Version:     {}\n API version: {} (minimum version {})\n OS/Arch:     {}/{}\n Kernel:      {}",
        v.platform.name, v.version, v.api_version, v.min_api_version, v.os, v.arch, v.kernel_version
    );
    Ok(0)
}

/// Where a JSON message stream's `stream`/`status` lines go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Messages {
    /// stdout (`load`, `pull`), progress bars on a terminal too.
    Stdout,
    /// stdout without progress bars (`load -q`).
    StdoutQuiet,
    /// stderr, and only on a terminal: `run`'s own pull must not mix
    /// with the container's output, nor add lines to its one-line error.
    TerminalOnly,
}

/// Reads a JSON message stream, printing `stream`/`status` lines; an
/// `error` ends it with a failure.
async fn json_messages(resp: Response<Incoming>, to: Messages) -> Res {
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let tty = std::io::stderr().is_terminal();
    let quiet_progress = to == Messages::StdoutQuiet;
    let mut out: Box<dyn Write> = match to {
        Messages::Stdout | Messages::StdoutQuiet => Box::new(std::io::stdout()),
        Messages::TerminalOnly if tty => Box::new(std::io::stderr()),
        Messages::TerminalOnly => Box::new(std::io::sink()),
    };
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Fail::new(1, format!("the connection to berthd broke: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let Ok(msg) = serde_json::from_slice::<JsonMessage>(&line) else {
                continue;
            };
            if let Some(e) = msg.error {
                return Err(Fail::new(1, e));
            }
            if let Some(s) = msg.stream {
                let _ = out.write_all(s.as_bytes());
            } else if let Some(s) = msg.status {
                let id = msg.id.map(|i| format!("{i}: ")).unwrap_or_default();
                match msg.progress_detail {
                    Some(p) if p.total > 0 => {
                        if tty && !quiet_progress {
                            eprint!(
                                "\r{id}{s} {}/{}\x1b[K",
                                human_size(p.current),
                                human_size(p.total)
                            );
                        }
                    }
                    _ => {
                        if tty {
                            eprint!("\r\x1b[K");
                        }
                        let _ = writeln!(out, "{id}{s}");
                    }
                }
            }
            let _ = out.flush();
        }
    }
    Ok(())
}

async fn load(c: &Client, input: &PathBuf, quiet: bool) -> Res<u8> {
    // An OCI layout directory is sent as the tar of it (an OCI archive);
    // a file is sent as it is.
    let is_dir = std::fs::metadata(input)
        .map_err(|e| Fail::new(1, format!("cannot open {}: {e}", input.display())))?
        .is_dir();
    let file = if is_dir {
        None
    } else {
        Some(
            std::fs::File::open(input)
                .map_err(|e| Fail::new(1, format!("cannot open {}: {e}", input.display())))?,
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    let dir = input.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, FrameWriter(tx.clone()));
        let sent = match file {
            Some(mut f) => std::io::copy(&mut f, &mut out)
                .and_then(|_| out.flush())
                .map_err(|e| format!("cannot read {}: {e}", dir.display())),
            None => {
                let mut b = tar::Builder::new(&mut out);
                b.follow_symlinks(false);
                b.append_dir_all("", &dir)
                    .and_then(|()| b.into_inner())
                    .and_then(|w| w.flush())
                    .map_err(|e| format!("cannot archive the directory {}: {e}", dir.display()))
            }
        };
        if let Err(why) = &sent {
            // Ends the upload with an error, so berthd imports nothing.
            let _ = tx.blocking_send(Err(std::io::Error::other(why.clone())));
        }
        sent
    });
    let body = receiver_body(rx).boxed();
    let path = format!("/images/load?quiet={}", u8::from(quiet));
    let resp = match c.call(Method::POST, &path, body).await {
        Ok(r) => r,
        // berthd's refusal says more than the upload it cut short.
        Err(e @ ClientError::Api { .. }) => return Err(e.into()),
        // A broken upload: the reader's failure says why.
        Err(e) => match reader.await {
            Ok(Err(why)) => return Err(Fail::new(1, why)),
            _ => return Err(e.into()),
        },
    };
    let to = if quiet {
        Messages::StdoutQuiet
    } else {
        Messages::Stdout
    };
    json_messages(resp, to).await?;
    Ok(0)
}

/// Writes into a request body as data frames (from a blocking thread).
struct FrameWriter(tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>);

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(buf))))
            .map_err(|_| std::io::Error::other("berthd stopped reading the upload"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A request body fed by a reading thread.
fn receiver_body<T>(rx: tokio::sync::mpsc::Receiver<T>) -> RecvStream<T> {
    RecvStream(rx)
}

struct RecvStream<T>(tokio::sync::mpsc::Receiver<T>);

impl hyper::body::Body for RecvStream<Result<Frame<Bytes>, std::io::Error>> {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx)
    }
}

async fn pull(c: &Client, reference: &str) -> Res<u8> {
    pull_to(c, reference, Messages::Stdout).await
}

async fn pull_to(c: &Client, reference: &str, to: Messages) -> Res<u8> {
    let (name, tag) = split_tag(reference);
    let mut path = format!("/images/create?fromImage={}", encode(&name));
    if let Some(t) = tag {
        path.push_str(&format!("&tag={}", encode(&t)));
    }
    let resp = c.call(Method::POST, &path, no_body()).await?;
    json_messages(resp, to).await?;
    Ok(0)
}

/// `name[:tag|@digest]` → (name, tag or digest), as the docker CLI sends it.
fn split_tag(r: &str) -> (String, Option<String>) {
    if let Some((n, d)) = r.split_once('@') {
        return (n.to_owned(), Some(d.to_owned()));
    }
    match r.rfind(':') {
        Some(i) if !r[i..].contains('/') => (r[..i].to_owned(), Some(r[i + 1..].to_owned())),
        _ => (r.to_owned(), None),
    }
}

/// go-units' HumanSize: decimal units, 3 significant digits.
fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let text = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    format!("{text}{}", units[i])
}

/// Prints rows as Docker's tabwriter does: columns padded by 3 spaces.
fn table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < cols {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn ago(unix: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if unix <= 0 {
        return "N/A".into();
    }
    format!(
        "{} ago",
        human(std::time::Duration::from_secs((now - unix).max(0) as u64))
    )
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

async fn images(c: &Client, quiet: bool) -> Res<u8> {
    let list: Vec<ImageSummaryJson> = c.json(Method::GET, "/images/json", no_body()).await?;
    if quiet {
        for i in &list {
            println!("{}", short_id(&i.id));
        }
        return Ok(0);
    }
    let mut rows = vec![["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
        .map(String::from)
        .to_vec()];
    for i in &list {
        let tags = if i.repo_tags.is_empty() {
            vec!["<none>:<none>".to_owned()]
        } else {
            i.repo_tags.clone()
        };
        for t in tags {
            let (repo, tag) = split_tag(&t);
            rows.push(vec![
                repo,
                tag.unwrap_or_else(|| "<none>".into()),
                short_id(&i.id),
                ago(i.created),
                human_size(i.size.max(0) as u64),
            ]);
        }
    }
    table(&rows);
    Ok(0)
}

async fn rmi(c: &Client, images: &[String], force: bool) -> Res<u8> {
    let mut rc = 0;
    for name in images {
        let path = format!("/images/{name}?force={}", u8::from(force));
        match c
            .json::<Vec<ImageDeleteItem>>(Method::DELETE, &path, no_body())
            .await
        {
            Ok(items) => {
                for i in items {
                    if let Some(u) = i.untagged {
                        println!("Untagged: {u}");
                    }
                    if let Some(d) = i.deleted {
                        println!("Deleted: {d}");
                    }
                }
            }
            Err(e) => {
                eprintln!("berth: {e}");
                rc = 1;
            }
        }
    }
    Ok(rc)
}

async fn ps(c: &Client, all: bool, quiet: bool) -> Res<u8> {
    let list: Vec<ContainerSummary> = c
        .json(
            Method::GET,
            &format!("/containers/json?all={}", u8::from(all)),
            no_body(),
        )
        .await?;
    if quiet {
        for ctr in &list {
            println!("{}", short_id(&ctr.id));
        }
        return Ok(0);
    }
    let mut rows = vec![[
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ]
    .map(String::from)
    .to_vec()];
    for ctr in &list {
        let mut command: String = ctr.command.chars().take(20).collect();
        if ctr.command.chars().count() > 20 {
            command = ctr.command.chars().take(19).collect::<String>() + "…";
        }
        let ports: Vec<String> = ctr
            .ports
            .iter()
            .map(|p| match p.public_port {
                Some(pp) => format!(
                    "{}:{pp}->{}/{}",
                    p.ip.clone().unwrap_or_default(),
                    p.private_port,
                    p.kind
                ),
                None => format!("{}/{}", p.private_port, p.kind),
            })
            .collect();
        rows.push(vec![
            short_id(&ctr.id),
            ctr.image.clone(),
            format!("\"{command}\""),
            ago(ctr.created),
            ctr.status.clone(),
            ports.join(", "),
            ctr.names
                .iter()
                .map(|n| n.trim_start_matches('/'))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    table(&rows);
    Ok(0)
}

async fn inspect(c: &Client, names: &[String]) -> Res<u8> {
    let mut out = Vec::new();
    let mut rc = 0;
    for name in names {
        let ctr = c
            .json::<serde_json::Value>(
                Method::GET,
                &format!("/containers/{}/json", encode(name)),
                no_body(),
            )
            .await;
        match ctr {
            Ok(v) => out.push(v),
            Err(ClientError::Api {
                status: StatusCode::NOT_FOUND,
                ..
            }) => {
                match c
                    .json::<serde_json::Value>(
                        Method::GET,
                        &format!("/images/{name}/json"),
                        no_body(),
                    )
                    .await
                {
                    Ok(v) => out.push(v),
                    Err(ClientError::Api {
                        status: StatusCode::NOT_FOUND,
                        ..
                    }) => {
                        eprintln!("berth: no such object: {name}");
                        rc = 1;
                    }
                    Err(e) => {
                        eprintln!("berth: {e}");
                        rc = 1;
                    }
                }
            }
            Err(e) => {
                eprintln!("berth: {e}");
                rc = 1;
            }
        }
    }
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&out, &mut ser).map_err(|e| Fail::new(1, e.to_string()))?;
    println!("{}", String::from_utf8_lossy(&buf));
    Ok(rc)
}

/// Copies a multiplexed stream to stdout/stderr; a system frame is an
/// error from the daemon.
async fn demux_to_stdio(resp: Response<Incoming>) -> Res {
    let mut body = resp.into_body();
    let mut d = Demuxer::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Fail::new(1, format!("the connection to berthd broke: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        write_frames(&mut d, data)?;
    }
    Ok(())
}

fn write_frames(d: &mut Demuxer, data: &[u8]) -> Res {
    let frames = d.push(data).map_err(|e| Fail::new(1, e.to_string()))?;
    for (kind, bytes) in frames {
        match kind {
            StreamKind::Stdout | StreamKind::Stdin => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&bytes);
                let _ = o.flush();
            }
            StreamKind::Stderr => {
                let _ = std::io::stderr().write_all(&bytes);
            }
            StreamKind::System => {
                return Err(Fail::new(
                    1,
                    String::from_utf8_lossy(&bytes).trim().to_owned(),
                ));
            }
        }
    }
    Ok(())
}

fn create_request(a: &RunArgs) -> Res<CreateRequest> {
    let mut port_bindings: std::collections::BTreeMap<String, Option<Vec<PortBinding>>> =
        Default::default();
    for p in &a.publish {
        let m = engine::workload::PortMapping::from_str(p).map_err(|e| Fail::new(125, e))?;
        port_bindings
            .entry(format!("{}/{}", m.container_port, m.protocol))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: m.host_ip.map(|i| i.to_string()),
                host_port: Some(m.host_port.to_string()),
            });
    }
    let memory = match &a.memory {
        Some(m) => Some(
            engine::units::ByteSize::from_str(m)
                .map_err(|e| Fail::new(125, format!("invalid --memory {m:?}: {e}")))?
                .bytes() as i64,
        ),
        None => None,
    };
    let restart = match &a.restart {
        Some(r) => {
            let (name, n) = match r.split_once(':') {
                Some((n, c)) => (
                    n.to_owned(),
                    c.parse::<i64>().map_err(|_| {
                        Fail::new(
                            125,
                            format!("invalid --restart {r:?}: the retry count must be a number"),
                        )
                    })?,
                ),
                None => (r.clone(), 0),
            };
            Some(RestartPolicy {
                name: Some(name),
                maximum_retry_count: Some(n),
            })
        }
        None => None,
    };
    let tmpfs = a
        .tmpfs
        .iter()
        .map(|t| match t.split_once(':') {
            Some((p, o)) => (p.to_owned(), o.to_owned()),
            None => (t.clone(), String::new()),
        })
        .collect();
    let labels = a
        .label
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.clone(), String::new()),
        })
        .collect();
    Ok(CreateRequest {
        hostname: a.hostname.clone(),
        user: a.user.clone(),
        tty: Some(false),
        open_stdin: Some(false),
        env: Some(client_env(&a.env)),
        cmd: (!a.cmd.is_empty()).then(|| a.cmd.clone()),
        entrypoint: a.entrypoint.as_ref().map(|e| vec![e.clone()]),
        image: Some(a.image.clone()),
        working_dir: a.workdir.clone(),
        labels: Some(labels),
        stop_signal: a.stop_signal.clone(),
        stop_timeout: a.stop_timeout,
        healthcheck: None,
        host_config: Some(HostConfig {
            binds: Some(a.volume.clone()),
            network_mode: a.network.clone(),
            port_bindings: Some(port_bindings),
            restart_policy: restart,
            auto_remove: Some(a.rm),
            memory,
            nano_cpus: a.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: a.pids_limit,
            readonly_rootfs: Some(a.read_only),
            tmpfs: Some(tmpfs),
        }),
    })
}

/// `-e` values as docker sends them: `K=V` as given; a bare `K` takes
/// this process's value of K, and is left out when K is not set here.
fn client_env(given: &[String]) -> Vec<String> {
    given
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var_os(e).map(|v| format!("{e}={}", v.to_string_lossy()))
            }
        })
        .collect()
}

/// Fail for `run`: daemon errors are 125, a command that cannot run 126/127.
fn run_fail(e: ClientError) -> Fail {
    let code = match &e {
        ClientError::Api {
            exit_code: Some(c), ..
        } => u8::try_from(*c).unwrap_or(125),
        _ => 125,
    };
    Fail::new(code, e.to_string())
}

async fn run(c: &Client, a: RunArgs) -> Res<u8> {
    let req = create_request(&a)?;
    let create_path = match &a.name {
        Some(n) => format!("/containers/create?name={}", encode(n)),
        None => "/containers/create".to_owned(),
    };
    let created: CreateResponse = match c.json(Method::POST, &create_path, json_body(&req)).await {
        Ok(r) => r,
        Err(ClientError::Api {
            status: StatusCode::NOT_FOUND,
            message,
            ..
        }) if message.contains("image") => {
            if std::io::stderr().is_terminal() {
                eprintln!("Unable to find image '{}' locally", a.image);
            }
            pull_to(c, &a.image, Messages::TerminalOnly)
                .await
                .map_err(|f| {
                    Fail::new(
                        125,
                        format!("{message}, and it cannot be pulled: {}", f.message),
                    )
                })?;
            c.json(Method::POST, &create_path, json_body(&req))
                .await
                .map_err(run_fail)?
        }
        Err(e) => return Err(run_fail(e)),
    };
    let id = created.id;
    if a.detach {
        c.call(Method::POST, &format!("/containers/{id}/start"), no_body())
            .await
            .map_err(run_fail)?;
        println!("{id}");
        return Ok(0);
    }
    // Attach and wait before starting, so no output and no exit is missed.
    let attach = c
        .call(
            Method::POST,
            &format!("/containers/{id}/attach?stream=1&stdout=1&stderr=1"),
            no_body(),
        )
        .await
        .map_err(run_fail)?;
    let condition = if a.rm { "removed" } else { "next-exit" };
    let wait = c
        .call(
            Method::POST,
            &format!("/containers/{id}/wait?condition={condition}"),
            no_body(),
        )
        .await
        .map_err(run_fail)?;
    if let Err(e) = c
        .call(Method::POST, &format!("/containers/{id}/start"), no_body())
        .await
    {
        if a.rm {
            let _ = c
                .call(
                    Method::DELETE,
                    &format!("/containers/{id}?force=1"),
                    no_body(),
                )
                .await;
        }
        return Err(run_fail(e));
    }
    // Forward SIGINT and SIGTERM to the container, as docker's sig-proxy.
    let proxy = {
        let c = c.clone();
        let id = id.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                let _ = c
                    .call(
                        Method::POST,
                        &format!("/containers/{id}/kill?signal={sig}"),
                        no_body(),
                    )
                    .await;
            }
        })
    };
    let streamed = demux_to_stdio(attach).await;
    let bytes = wait
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            Fail::new(
                125,
                format!("the connection to berthd broke while waiting: {e}"),
            )
        })?
        .to_bytes();
    proxy.abort();
    streamed?;
    let w: WaitResponse = serde_json::from_slice(&bytes)
        .map_err(|e| Fail::new(125, format!("cannot decode the wait result: {e}")))?;
    if let Some(err) = w.error {
        return Err(Fail::new(125, err.message));
    }
    Ok(u8::try_from(w.status_code.clamp(0, 255)).unwrap_or(255))
}

async fn exec(
    c: &Client,
    interactive: bool,
    env: Vec<String>,
    user: Option<String>,
    workdir: Option<String>,
    container: &str,
    cmd: Vec<String>,
) -> Res<u8> {
    let req = ExecCreateRequest {
        attach_stdin: Some(interactive),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        cmd: Some(cmd),
        env: Some(client_env(&env)),
        user,
        working_dir: workdir,
    };
    let created: IdResponse = c
        .json(
            Method::POST,
            &format!("/containers/{}/exec", encode(container)),
            json_body(&req),
        )
        .await
        // No such container, or not running: exit 1, as `docker exec`.
        .map_err(|e| Fail::new(1, e.to_string()))?;
    let start = ExecStartRequest {
        detach: Some(false),
        tty: Some(false),
    };
    let path = format!("/exec/{}/start", created.id);
    if interactive {
        let resp = c
            .send(Method::POST, &path, json_body(&start), true)
            .await
            .map_err(|e| Fail::new(125, e.to_string()))?;
        let resp = check(resp)
            .await
            .map_err(|e| Fail::new(126, e.to_string()))?;
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| Fail::new(125, format!("cannot hijack the connection: {e}")))?;
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let (mut rd, mut wr) = tokio::io::split(io);
        let stdin_task = tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut wr).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
        });
        let mut d = Demuxer::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut rd, &mut buf)
                .await
                .map_err(|e| Fail::new(125, format!("the connection to berthd broke: {e}")))?;
            if n == 0 {
                break;
            }
            write_frames(&mut d, &buf[..n])?;
        }
        stdin_task.abort();
    } else {
        let resp = c
            .call(Method::POST, &path, json_body(&start))
            .await
            .map_err(|e| Fail::new(126, e.to_string()))?;
        demux_to_stdio(resp).await?;
    }
    let info: ExecInspect = c
        .json(
            Method::GET,
            &format!("/exec/{}/json", created.id),
            no_body(),
        )
        .await?;
    Ok(u8::try_from(info.exit_code.unwrap_or(0).clamp(0, 255)).unwrap_or(255))
}
