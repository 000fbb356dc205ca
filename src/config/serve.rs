//! `hearth serve`'s whole configuration, read once: the flags over the environment over the
//! config file over the defaults. What can change while serving (personas, templates, prices,
//! limits) is in `file` and is read again on reload; the rest needs a restart.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::engine::EngineConfig;
use super::file::{self, ConfigError, Env, FileConfig, LogFormat};
use crate::cli::ServeArgs;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub models_dir: PathBuf,
    pub data_dir: PathBuf,
    pub json_logs: bool,
    /// `--log-prompts`; the file's `server.log_prompts` is read with the rest of the file, and
    /// again on reload.
    pub log_prompts_flag: bool,
    pub engine: EngineConfig,
    /// Browser origins allowed besides the built-in loopback and app ones.
    pub origins: Vec<String>,
    /// `--insecure-no-auth`: serving beyond loopback without keys was asked for.
    pub insecure_no_auth: bool,
    /// The file with its environment overlays: the service layer's settings.
    pub file: FileConfig,
}

impl ServeConfig {
    /// Reads the config file (`--config`, `HEARTH_CONFIG`, or the default path if it exists)
    /// and lays the environment and the flags over it.
    pub fn load(args: &ServeArgs, env: Env<'_>) -> Result<ServeConfig, ConfigError> {
        let file = file::load(args.config.as_deref(), env)?;
        let flag_error = |flag: &str, message: String| ConfigError::Flag { flag: flag.to_string(), message };
        let base = file.server.host.unwrap_or_else(super::default_addr);
        let ip = match &args.host {
            Some(h) => super::parse_host(h).map_err(|e| flag_error("--host", e))?.ip(),
            None => base.ip(),
        };
        let addr = SocketAddr::new(ip, args.port.unwrap_or(base.port()));
        let models_dir = args.store.models.clone().or_else(|| file.server.models.clone()).unwrap_or_else(crate::store::default_models_dir);
        let data_dir = args.data.clone().or_else(|| file.server.data.clone()).unwrap_or_else(super::default_data_dir);
        let json_logs = match args.log_format.as_deref() {
            Some(f) => f == "json",
            None => file.server.log_format == Some(LogFormat::Json),
        };
        let engine = EngineConfig::resolve(&args.engine, &file.engine)?;
        let origins = file.server.origins.clone().unwrap_or_default();
        if let Some(message) = exposure(addr, &file, args.insecure_no_auth) {
            return Err(ConfigError::Unsafe(message));
        }
        Ok(ServeConfig { addr, models_dir, data_dir, json_logs, log_prompts_flag: args.log_prompts, engine, origins, insecure_no_auth: args.insecure_no_auth, file })
    }
}

/// Why serving on `addr` with this file's keys is refused: beyond loopback with no keys and no
/// `--insecure-no-auth`. Also checked when a reload would remove the last key.
pub fn exposure(addr: SocketAddr, file: &FileConfig, insecure_no_auth: bool) -> Option<String> {
    if addr.ip().is_loopback() || !file.keys.is_empty() || insecure_no_auth {
        return None;
    }
    Some(format!(
        "{addr} is reachable beyond this machine and no API keys are configured: anyone who can reach it could generate, read conversations, and pull or delete models. \
         Add keys (auth.keys; `hearth key new NAME` makes one), bind to 127.0.0.1, or pass --insecure-no-auth to serve without keys"
    ))
}


#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve_args(argv: &[&str]) -> ServeArgs {
        let cli = crate::cli::Cli::try_parse_from([&["hearth", "serve"], argv].concat()).expect("parses");
        match cli.command {
            crate::cli::Command::Serve(args) => args,
            _ => panic!("not serve"),
        }
    }

    #[test]
    fn flags_over_environment_over_file() {
        let dir = std::env::temp_dir().join(format!("hearth-serve-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("hearth.yaml");
        std::fs::write(&path, "server:\n  host: 127.0.0.1:8000\n  data: d\n  log_format: json\nengine:\n  parallel: 2\n").expect("write");
        let config = path.to_str().expect("utf8");
        let no_env = |_: &str| None;
        let c = ServeConfig::load(&serve_args(&["--config", config, "--port", "9"]), &no_env).expect("valid");
        assert_eq!(c.addr.to_string(), "127.0.0.1:9");
        assert_eq!(c.data_dir, dir.join("d"));
        assert!(c.json_logs && !c.log_prompts_flag);
        assert_eq!(c.engine.load.parallel, 2);
        let env = |name: &str| (name == "HEARTH_HOST").then(|| "0.0.0.0:7000".to_string());
        let err = ServeConfig::load(&serve_args(&["--config", config]), &env).expect_err("0.0.0.0 without keys");
        assert!(err.to_string().starts_with("refusing to start: 0.0.0.0:7000 is reachable") && err.to_string().contains("--insecure-no-auth"), "{err}");
        let c = ServeConfig::load(&serve_args(&["--config", config, "--parallel", "3", "--log-format", "text", "--insecure-no-auth"]), &env).expect("valid");
        assert_eq!((c.addr.to_string().as_str(), c.engine.load.parallel, c.json_logs), ("0.0.0.0:7000", 3, false));
        let err = ServeConfig::load(&serve_args(&["--config", config, "--host", "127.0.0.1:notaport"]), &no_env).expect_err("bad host");
        assert!(err.to_string().starts_with("--host: "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
