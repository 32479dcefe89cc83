//! TODO: sync

/// TEMPORARY until the remote work lands: download a tenant's archive for `restore --remote`.
pub async fn fetch_for_restore(
    _cfg: &crate::config::HostConfig,
    _tenant: &crate::types::TenantId,
    _source: &crate::restore::Source,
) -> crate::error::Result<crate::restore::Located> {
    Err(crate::error::Error::Usage("restore --remote is not available in this build yet".into()))
}
