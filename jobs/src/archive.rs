//! TEMPORARY signatures; replaced by the archive module from wip-archive.
#![allow(missing_docs, dead_code)]
use std::path::{Path, PathBuf};
#[derive(Debug, Clone)]
pub struct ArchiveSummary {
    pub sha256: String,
    pub size: u64,
    pub files: u64,
    pub bytes_in: u64,
    pub file_list_sha256: String,
}
#[derive(Debug, thiserror::Error)]
#[error("archive")]
pub struct ArchiveError;
impl From<ArchiveError> for crate::error::Error {
    fn from(e: ArchiveError) -> Self {
        crate::error::Error::Archive(e.to_string())
    }
}
pub fn create(_src: &Path, _dest: &Path) -> Result<ArchiveSummary, ArchiveError> {
    Err(ArchiveError)
}
pub fn file_list_path(a: &Path) -> PathBuf {
    a.with_extension("files")
}
pub fn restore_swap(_a: &Path, _s: &str, _t: &Path) -> Result<u64, ArchiveError> {
    Err(ArchiveError)
}
pub fn sha256_file(_p: &Path) -> Result<(String, u64), ArchiveError> {
    Err(ArchiveError)
}
#[derive(Debug, Clone, Default)]
pub struct FileList {
    pub entries: Vec<()>,
}
pub fn read_file_list(_p: &Path) -> Result<FileList, ArchiveError> {
    Err(ArchiveError)
}
pub fn tree_unchanged(_s: &Path, _l: &FileList) -> Result<bool, ArchiveError> {
    Err(ArchiveError)
}
pub fn reuse(_p: &Path, _d: &Path) -> Result<(), ArchiveError> {
    Err(ArchiveError)
}
pub fn extract_into(_a: &Path, _s: &str, _d: &Path) -> Result<u64, ArchiveError> {
    Err(ArchiveError)
}
pub fn deep_verify(_a: &Path, _s: &str, _l: &FileList) -> Result<(), ArchiveError> {
    Err(ArchiveError)
}
