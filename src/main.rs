//! The `sixgate` command: `run [-c FILE]`, `check-config FILE`, `ctl ...`, `version`.

use sixgate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: sixgate run [-c FILE]        serve (embedded loopback defaults without -c)
       sixgate check-config FILE    validate a config file; exit 1 listing every problem
       sixgate print-defaults       print the embedded default config
       sixgate ctl [--json] [--socket PATH | -c FILE] registrations [USER] | calls | call CALL-ID
                                    | diagnose USER | stats | reload [FILE]
                                    ask the running daemon (its control socket: --socket, else
                                    $RUNTIME_DIRECTORY/ctl.sock, else /run/sixgate/ctl.sock, else
                                    the state directory of -c FILE or of the defaults)
       sixgate version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => {
            let file = match &args[1..] {
                [] => None,
                [flag, f] if flag == "-c" || flag == "--config" => Some(PathBuf::from(f)),
                _ => return usage(),
            };
            run(file)
        }
        Some("check-config") => match &args[1..] {
            [f] => check_config(PathBuf::from(f)),
            _ => usage(),
        },
        Some("ctl") => ctl(&args[1..]),
        Some("print-defaults") => {
            print!("{}", sixgate::config::EMBEDDED_DEFAULTS);
            ExitCode::SUCCESS
        }
        Some("version") | Some("--version") => {
            println!("sixgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}

fn ctl(args: &[String]) -> ExitCode {
    use sixgate::ctl::{self, Reply, Request};
    let (mut json, mut socket, mut config, mut rest) = (false, None, None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--socket" => socket = it.next().map(PathBuf::from),
            "-c" | "--config" => config = it.next().map(PathBuf::from),
            _ => rest.push(a.as_str()),
        }
    }
    let request = match rest.as_slice() {
        ["registrations"] => Request::Registrations { user: None },
        ["registrations", user] => Request::Registrations { user: Some(user.to_string()) },
        ["calls"] => Request::Calls,
        ["call", id] => Request::Call { call_id: id.to_string() },
        ["diagnose", user] => Request::Diagnose { user: user.to_string() },
        ["stats"] => Request::Stats,
        ["reload"] => Request::Reload { file: None, config: None },
        ["reload", file] => match std::fs::read_to_string(file) {
            Ok(text) => Request::Reload { file: Some(file.to_string()), config: Some(text) },
            Err(e) => {
                eprintln!("sixgate ctl: cannot read {file}: {e}");
                return ExitCode::from(1);
            }
        },
        _ => return usage(),
    };
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(f)) => match Config::from_file(&f) {
            Ok(c) => ctl::socket_path(&c.state_dir),
            Err(errs) => {
                eprintln!("{}: invalid configuration ({} problems; see sixgate check-config)", f.display(), errs.0.len());
                return ExitCode::from(1);
            }
        },
        (None, None) if std::env::var_os("RUNTIME_DIRECTORY").is_none() && std::path::Path::new("/run/sixgate/ctl.sock").exists() => PathBuf::from("/run/sixgate/ctl.sock"),
        (None, None) => ctl::socket_path(&Config::embedded().state_dir),
    };
    match ctl::query(&socket, &request) {
        Ok(Reply::Error { error }) => {
            eprintln!("sixgate ctl: {error}");
            ExitCode::from(1)
        }
        Ok(reply) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&reply).unwrap_or_default());
            } else {
                print!("{}", ctl::render(&reply));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sixgate ctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn check_config(path: PathBuf) -> ExitCode {
    match Config::from_file(&path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errs) => {
            for i in &errs.0 {
                println!("{i}");
            }
            ExitCode::from(1)
        }
    }
}

fn run(file: Option<PathBuf>) -> ExitCode {
    let cfg = match &file {
        Some(p) => match Config::from_file(p) {
            Ok(c) => c,
            Err(errs) => {
                eprintln!("{}: invalid configuration:", p.display());
                for i in &errs.0 {
                    eprintln!("  {i}");
                }
                return ExitCode::from(1);
            }
        },
        None => Config::embedded(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("sixgate={0},sixgate_relay={0}", cfg.log_level)));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
    tracing::info!(config = %file.as_ref().map_or("embedded defaults".into(), |p| p.display().to_string()), "sixgate {} starting", env!("CARGO_PKG_VERSION"));

    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let server = match sixgate::server::Server::start_from(&cfg, file.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(1);
            }
        };
        sixgate::server::wait_for_signal().await;
        tracing::info!("shutting down; counters:\n{}", server.render_metrics());
        server.shutdown();
        ExitCode::SUCCESS
    })
}
