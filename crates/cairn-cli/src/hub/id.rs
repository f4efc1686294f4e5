//! `cairn hub id`: a file's CID, offline.

use super::*;

/// Print a file's CID, offline (streams; constant memory).
#[derive(Args)]
pub(crate) struct IdArgs {
    /// The file.
    pub(crate) file: PathBuf,
}

/// Runs it.
pub(crate) async fn run(a: IdArgs) -> anyhow::Result<()> {
    let IdArgs { file } = a;
    let f = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let (id, _) = BlobHasher::hash_reader(std::io::BufReader::with_capacity(1 << 20, f))?;
    println!("{id}");
    Ok(())
}
