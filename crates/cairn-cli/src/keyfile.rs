//! The user's secp256k1 key, kept in a file only its owner can read.

use std::io::Write;
use std::path::{Path, PathBuf};

use alloy_signer_local::PrivateKeySigner;
use anyhow::{Context, bail};

/// Default key location: `$XDG_CONFIG_HOME/cairn/key` or the platform's equivalent.
pub fn default_path() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cairn")
        .join("key")
}

/// Loads the key at `path`, creating a new random one (mode 0600) on first use.
pub fn load_or_create(path: &Path) -> anyhow::Result<PrivateKeySigner> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            parse(text.trim()).with_context(|| format!("reading key file {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(e).with_context(|| format!("reading key file {}", path.display())),
    }
}

fn parse(hex: &str) -> anyhow::Result<PrivateKeySigner> {
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    if hex.len() != 64 {
        bail!("a key file holds one secp256k1 secret key as 64 hex digits");
    }
    hex.parse::<PrivateKeySigner>()
        .map_err(|e| anyhow::anyhow!("not a valid secp256k1 secret key: {e}"))
}

fn create(path: &Path) -> anyhow::Result<PrivateKeySigner> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let signer = PrivateKeySigner::random();
    write_new(path, &signer)?;
    eprintln!(
        "created a new key {} in {}",
        signer.address(),
        path.display()
    );
    Ok(signer)
}

/// Writes `signer`'s key to `path` (mode 0600) unless that file already holds it.
pub fn write(path: &Path, signer: &PrivateKeySigner) -> anyhow::Result<()> {
    if let Ok(existing) = load_or_create_existing(path)
        && existing.address() == signer.address()
    {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    write_new(path, signer)
}

/// Creates `path` (which must not exist) with mode 0600 holding `signer`'s key.
fn write_new(path: &Path, signer: &PrivateKeySigner) -> anyhow::Result<()> {
    let key = format!("0x{}\n", alloy_primitives_hex(&signer.to_bytes().0));
    create_secret(path, key.as_bytes())
}

/// Creates `path` (which must not exist; its directory is made) readable by its owner only,
/// holding `contents`, flushed to disk.
pub fn create_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

fn load_or_create_existing(path: &Path) -> anyhow::Result<PrivateKeySigner> {
    parse(std::fs::read_to_string(path)?.trim())
}

/// Loads an existing key file.
pub fn load(path: &Path) -> anyhow::Result<PrivateKeySigner> {
    load_or_create_existing(path).with_context(|| format!("reading key file {}", path.display()))
}

fn alloy_primitives_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the payer with key file `key` keeps its own prepaid accounts (beside the key that
/// signs the vouchers): `KEYFILE.prepaid/`.
pub fn prepaid_accounts(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".prepaid");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_with_owner_only_mode_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("key");
        let first = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap().address(), first.address());
        std::fs::write(&path, "not a key").unwrap();
        assert!(
            load_or_create(&path)
                .unwrap_err()
                .to_string()
                .contains("key file")
        );
    }
}
