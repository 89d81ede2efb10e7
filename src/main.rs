//! The `sixgate` command: `run [-c FILE]`, `check-config FILE`, `version`.

use sixgate::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: sixgate run [-c FILE]        serve (embedded loopback defaults without -c)
       sixgate check-config FILE    validate a config file; exit 1 listing every problem
       sixgate print-defaults       print the embedded default config
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
        let server = match sixgate::server::Server::start(&cfg).await {
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
