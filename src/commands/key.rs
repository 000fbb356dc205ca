//! `hearth key new NAME`: a fresh random API key, printed once, with the `auth.keys` entry
//! that holds its SHA-256 (the server never stores the key itself).

#![allow(clippy::print_stdout)] // the key and its entry are the output.

use crate::cli::{KeyArgs, KeyCommand};
use crate::service::accounts::{key_hash, new_key, Scope};

pub fn run(args: KeyArgs) -> anyhow::Result<()> {
    match args.command {
        KeyCommand::New { name, scopes } => {
            let scopes: Vec<Scope> = scopes.iter().map(|s| s.trim().parse::<Scope>()).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
            if scopes.is_empty() {
                anyhow::bail!("--scopes: a key needs at least one scope");
            }
            let key = new_key();
            let hash: String = key_hash(&key).iter().map(|b| format!("{b:02x}")).collect();
            let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
            println!("# The key (shown once; give it to the client as Authorization: Bearer, or HEARTH_API_KEY):");
            println!("{key}");
            println!("# Add this to auth.keys in hearth.yaml (or to the auth.keys_file list), then reload:");
            println!("- name: {name}");
            println!("  sha256: {hash}");
            println!("  scopes: [{}]", scopes.join(", "));
            Ok(())
        }
    }
}
