-- slipway run record, schema 5: what was verified on a remote is tied to that remote — its
-- endpoint, bucket and prefix — so a sync to another bucket or prefix uploads again, and a
-- snapshot is taken for pruned by the remote's retention only when slipway's prune deleted it
-- there (an emptied bucket uploads again). Rows written before name no remote (''): the first
-- sync or prune after the upgrade adopts them as its remote's, the one remote a host had then.
CREATE TABLE remote_objects_scoped (
    remote        TEXT NOT NULL,            -- endpoint, bucket and prefix (Remote::id)
    key           TEXT NOT NULL,            -- relative to the remote prefix, mirrors the local path
    sha256        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    verified_at   TEXT NOT NULL,
    object_sha256 TEXT,
    object_size   INTEGER,
    encryption    TEXT,
    PRIMARY KEY (remote, key)
);
INSERT INTO remote_objects_scoped (remote, key, sha256, size, verified_at, object_sha256, object_size, encryption)
    SELECT '', key, sha256, size, verified_at, object_sha256, object_size, encryption FROM remote_objects;
DROP TABLE remote_objects;
ALTER TABLE remote_objects_scoped RENAME TO remote_objects;
-- The remote remote_verified_at is about, and when that remote's retention (slipway's prune)
-- deleted the archive there.
ALTER TABLE snapshots ADD COLUMN remote_verified_to TEXT;
ALTER TABLE snapshots ADD COLUMN remote_retired_at TEXT;
UPDATE snapshots SET remote_verified_to = '' WHERE remote_verified_at IS NOT NULL;
