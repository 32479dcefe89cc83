-- slipway run record, schema 3: the object as stored on the remote when it is not the archive's
-- own bytes (client-side encryption): its sha256 and size, and how it was encrypted. sha256 and
-- size stay the plaintext's (the manifest's). NULL in rows written before: the object is the
-- archive's bytes.
ALTER TABLE remote_objects ADD COLUMN object_sha256 TEXT;
ALTER TABLE remote_objects ADD COLUMN object_size INTEGER;
ALTER TABLE remote_objects ADD COLUMN encryption TEXT;
