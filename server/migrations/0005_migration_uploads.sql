-- Migration uploads keep their file name (for bundling diagnostics), like machine versions.
ALTER TABLE migrations ADD COLUMN source_name TEXT;
CREATE INDEX migrations_by_machine ON migrations (machine_id, status);
