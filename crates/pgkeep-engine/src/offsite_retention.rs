//! Off-site retention: which stored bundles and WAL files of one system to delete from object
//! storage (`offsite sync` applies it after uploading; `retention.offsite_*`).
//!
//! Keep the newest `retention.offsite_nightly` logical and `retention.offsite_basebackups`
//! physical bundles, newest by the time in their names (every object under `backups/` was
//! uploaded by `offsite sync` from a local bundle that verified, under the name pgkeep gave it;
//! uploads never go off-site), and never fewer than one of a kind. WAL is kept from the first
//! segment the oldest kept base backup needs, on every timeline; history files always stay. That
//! segment is read from the base backup's object metadata (`pgkeep-wal-start`, written at upload),
//! so nothing has to be decrypted and the identity is not needed. When a kept base backup has no
//! such metadata (uploaded by an earlier version), or no base backup is kept, all WAL stays.
//!
//! Incremental base backups (names `*.incr.bundle.tar.gz`) go by chain, as locally
//! ([`crate::retention`]): `retention.offsite_basebackups` counts full base backups, every
//! incremental newer than the oldest kept full stays, and so does every link a kept incremental
//! names in its `pgkeep-chain` metadata (written at upload); when a kept incremental has no such
//! metadata, no older base backup is deleted.
//!
//! Deletes only ever follow a listing of the same round; an object that is already gone is not an
//! error (two syncs may prune at once).

use serde::Serialize;

use crate::offsite::{
    META_CHAIN, META_SEGMENT_SIZE, META_WAL_START, OffsiteError, RemoteFile, System,
};
use crate::repo::{self, BackupKind};
use crate::wal::{self, Compression, WalKind};

/// What an off-site prune keeps and deletes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OffsitePrunePlan {
    pub keep: Vec<String>,
    pub remove: Vec<String>,
    /// The first WAL segment kept (None: all WAL stays), and why when None.
    pub wal_kept_from: Option<String>,
    pub wal_kept_all_because: Option<String>,
    pub remove_wal: Vec<String>,
    pub remove_wal_bytes: u64,
}

/// Decide what to delete off-site for `sys`, keeping `keep_nightly` / `keep_basebackups`.
pub async fn plan(
    sys: &System,
    keep_nightly: u32,
    keep_basebackups: u32,
) -> Result<OffsitePrunePlan, OffsiteError> {
    let backups = sys.list_backups().await?;
    let mut out = OffsitePrunePlan::default();
    let mut kept_physical = Vec::new();
    for (kind, n) in [
        (BackupKind::Logical, keep_nightly),
        (BackupKind::Physical, keep_basebackups),
    ] {
        let mut of_kind: Vec<(repo::BackupName, &RemoteFile)> = backups
            .iter()
            .filter_map(|f| repo::parse_name(&f.name).map(|n| (n, f)))
            .filter(|(n, _)| n.kind == kind)
            .collect();
        of_kind.sort_by_key(|(n, _)| std::cmp::Reverse((n.time, n.seq)));
        if kind == BackupKind::Physical {
            let named: Vec<(repo::BackupName, String)> = of_kind
                .iter()
                .map(|(n, f)| (n.clone(), f.name.clone()))
                .collect();
            let (mut keep, remove) = by_chain(&named, n.max(1) as usize);
            let mut chains = Vec::new();
            for (parsed, name) in &named {
                if parsed.incremental && keep.contains(name) {
                    let meta = sys
                        .backup_metadata_all(name, &[META_CHAIN])
                        .await?
                        .pop()
                        .flatten();
                    chains.push((
                        name.clone(),
                        meta.map(|m| m.split_whitespace().map(str::to_owned).collect()),
                    ));
                }
            }
            let remove = rescue_links(&named, &mut keep, remove, &chains);
            kept_physical.extend(keep.iter().cloned());
            out.keep.extend(keep);
            out.remove.extend(remove);
            continue;
        }
        let cut = (n.max(1) as usize).min(of_kind.len());
        for (_, f) in &of_kind[..cut] {
            out.keep.push(f.name.clone());
        }
        out.remove
            .extend(of_kind[cut..].iter().rev().map(|(_, f)| f.name.clone()));
    }
    // The oldest kept base backup's first segment, by segment number.
    let mut anchor: Option<(u64, u64, String)> = None;
    for name in &kept_physical {
        let mut meta = sys
            .backup_metadata_all(name, &[META_WAL_START, META_SEGMENT_SIZE])
            .await?
            .into_iter();
        let (start, size) = (meta.next().flatten(), meta.next().flatten());
        let parsed = start.as_deref().and_then(wal::parse_name);
        let seg_size = size.and_then(|s| s.parse::<u64>().ok());
        let (Some(start), Some(parsed), Some(seg_size)) = (start, parsed, seg_size) else {
            out.wal_kept_all_because = Some(format!(
                "{name} was uploaded without the WAL it needs in its metadata (by an earlier pgkeep)"
            ));
            anchor = None;
            break;
        };
        let no = parsed.segment_no(seg_size);
        if anchor.as_ref().is_none_or(|(n, _, _)| no < *n) {
            anchor = Some((no, seg_size, start));
        }
    }
    if kept_physical.is_empty() {
        out.wal_kept_all_because = Some("no base backup is stored off-site".into());
    }
    let Some((start_no, seg_size, start)) = anchor else {
        return Ok(out);
    };
    for f in sys.list_wal().await? {
        let Some(w) = wal::parse_name(strip_compression(&f.name)) else {
            continue;
        };
        if w.kind != WalKind::History && w.segment_no(seg_size) < start_no {
            out.remove_wal_bytes += f.size;
            out.remove_wal.push(f.name);
        }
    }
    out.wal_kept_from = Some(start);
    Ok(out)
}

/// Physical names (newest first): keep the `n` newest full ones and every incremental newer than
/// the oldest kept full (all of them when no full is there). Returns (keep, remove oldest first).
fn by_chain(named: &[(repo::BackupName, String)], n: usize) -> (Vec<String>, Vec<String>) {
    let oldest_kept_full = named
        .iter()
        .filter(|(p, _)| !p.incremental)
        .take(n)
        .last()
        .map(|(p, _)| (p.time, p.seq));
    let mut keep = Vec::new();
    let mut remove = Vec::new();
    let mut fulls = 0;
    for (p, name) in named {
        let kept = if p.incremental {
            oldest_kept_full.is_none_or(|t| (p.time, p.seq) > t)
        } else {
            fulls += 1;
            fulls <= n
        };
        if kept {
            keep.push(name.clone());
        } else {
            remove.push(name.clone());
        }
    }
    remove.reverse();
    (keep, remove)
}

/// Move back from `remove` to `keep` every link a kept incremental names (`chains`: its link
/// names, None when it was uploaded without them: then nothing older than it is removed).
fn rescue_links(
    named: &[(repo::BackupName, String)],
    keep: &mut Vec<String>,
    remove: Vec<String>,
    chains: &[(String, Option<Vec<String>>)],
) -> Vec<String> {
    let time_of = |name: &str| {
        named
            .iter()
            .find(|(_, n)| n == name)
            .map(|(p, _)| (p.time, p.seq))
    };
    let mut out = Vec::new();
    for name in remove {
        let needed = chains.iter().any(|(incr, links)| match links {
            Some(links) => links.contains(&name),
            None => time_of(&name) < time_of(incr),
        });
        if needed {
            tracing::info!(bundle = %name, "kept off-site: a kept incremental base backup needs it");
            keep.push(name);
        } else {
            out.push(name);
        }
    }
    out
}

/// Delete what `plan` chose: bundles first, then WAL.
pub async fn apply(sys: &System, plan: &OffsitePrunePlan) -> Result<(), OffsiteError> {
    for name in &plan.remove {
        sys.delete_backup(name).await?;
        tracing::info!(bundle = %name, "deleted off-site (retention)");
    }
    for file in &plan.remove_wal {
        sys.delete_wal(file).await?;
    }
    if !plan.remove_wal.is_empty() {
        tracing::info!(
            files = plan.remove_wal.len(),
            bytes = plan.remove_wal_bytes,
            kept_from = plan.wal_kept_from.as_deref().unwrap_or(""),
            "deleted off-site WAL the oldest kept base backup does not need"
        );
    }
    Ok(())
}

/// An archived file name without its compression suffix (`...03.zst` -> `...03`).
fn strip_compression(file: &str) -> &str {
    Compression::ALL
        .into_iter()
        .filter(|c| !c.suffix().is_empty())
        .find_map(|c| file.strip_suffix(c.suffix()))
        .unwrap_or(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incrementals_go_with_their_chain_and_their_links_are_never_deleted() {
        let names = [
            "basebackup-20261110-0000.incr.bundle.tar.gz",
            "basebackup-20261109-0000.incr.bundle.tar.gz",
            "basebackup-20261108-0000.bundle.tar.gz",
            "basebackup-20261103-0000.incr.bundle.tar.gz",
            "basebackup-20261101-0000.bundle.tar.gz",
        ];
        let named: Vec<(repo::BackupName, String)> = names
            .iter()
            .map(|n| (repo::parse_name(n).unwrap(), (*n).to_owned()))
            .collect();
        let (mut keep, remove) = by_chain(&named, 1);
        assert_eq!(keep, names[..3]);
        assert_eq!(remove, [names[4], names[3]]);
        // 20261110 was taken on top of the old chain (the newer full was damaged, say).
        let chains = vec![
            (
                names[0].to_owned(),
                Some(vec![names[4].to_owned(), names[3].to_owned()]),
            ),
            (names[1].to_owned(), Some(vec![names[2].to_owned()])),
        ];
        let left = rescue_links(&named, &mut keep, remove.clone(), &chains);
        assert!(left.is_empty(), "{left:?}");
        assert!(keep.contains(&names[4].to_owned()) && keep.contains(&names[3].to_owned()));
        // Without chain metadata nothing older than a kept incremental goes.
        let (mut keep, remove) = by_chain(&named, 1);
        let left = rescue_links(&named, &mut keep, remove, &[(names[1].to_owned(), None)]);
        assert!(left.is_empty(), "{left:?}");
        // Two fulls kept: everything stays.
        let (keep, remove) = by_chain(&named, 2);
        assert_eq!(keep.len(), 5);
        assert!(remove.is_empty());
    }

    #[test]
    fn compression_suffixes_are_stripped_and_plain_names_kept() {
        assert_eq!(
            strip_compression("000000010000000000000003.zst"),
            "000000010000000000000003"
        );
        assert_eq!(
            strip_compression("000000010000000000000003.gz"),
            "000000010000000000000003"
        );
        assert_eq!(strip_compression("00000002.history"), "00000002.history");
        assert_eq!(
            strip_compression("000000010000000000000003.00000028.backup"),
            "000000010000000000000003.00000028.backup"
        );
    }
}
