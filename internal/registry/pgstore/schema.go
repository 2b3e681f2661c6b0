package pgstore

// Channel is the LISTEN/NOTIFY channel of registry changes.
const Channel = "decryptd_registry"

// migrationLockKey is the advisory lock serialising schema migration across
// replicas ("decryptd" in ASCII).
const migrationLockKey int64 = 0x6465637279707464

type migration struct {
	version int
	sql     string
}

// migrations lists the schema's steps; append only, never edit a step that
// has shipped.
func migrations() []migration {
	return []migration{{1, `
CREATE TABLE decryptd_registry_entries (
	key_id           text COLLATE "C" NOT NULL,
	key_version      text COLLATE "C" NOT NULL,
	state            text NOT NULL,
	wrapped          bytea,
	root_key_id      text NOT NULL DEFAULT '',
	root_key_version text NOT NULL DEFAULT '',
	devices          text[] NOT NULL DEFAULT '{}',
	created_at       timestamptz NOT NULL,
	updated_at       timestamptz NOT NULL,
	state_changed_at timestamptz NOT NULL,
	PRIMARY KEY (key_id, key_version),
	CONSTRAINT key_id_alphabet CHECK (key_id ~ '^[A-Za-z0-9._:/-]{1,200}$'),
	CONSTRAINT key_version_alphabet CHECK (key_version ~ '^[A-Za-z0-9._-]{1,32}$'),
	CONSTRAINT state_known CHECK (state IN ('active', 'decrypt_only', 'revoked', 'shredded')),
	CONSTRAINT wrapped_unless_shredded CHECK ((state = 'shredded') = (wrapped IS NULL)),
	CONSTRAINT wrapped_not_empty CHECK (wrapped IS NULL OR octet_length(wrapped) > 0)
);

CREATE INDEX decryptd_registry_entries_list
	ON decryptd_registry_entries (key_id, created_at, key_version);

CREATE FUNCTION decryptd_registry_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.key_id <> OLD.key_id OR NEW.key_version <> OLD.key_version THEN
		RAISE EXCEPTION 'decryptd registry: % % may not be renamed', OLD.key_id, OLD.key_version;
	END IF;
	IF OLD.state = 'shredded' AND (NEW.state <> 'shredded' OR NEW.wrapped IS NOT NULL OR NEW.devices <> OLD.devices) THEN
		RAISE EXCEPTION 'decryptd registry: % % is shredded', OLD.key_id, OLD.key_version;
	END IF;
	RETURN NEW;
END $$;

CREATE TRIGGER decryptd_registry_guard BEFORE UPDATE ON decryptd_registry_entries
	FOR EACH ROW EXECUTE FUNCTION decryptd_registry_guard();

CREATE FUNCTION decryptd_registry_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	r decryptd_registry_entries;
BEGIN
	IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
	PERFORM pg_notify('decryptd_registry', json_build_object(
		'op', lower(TG_OP), 'key_id', r.key_id, 'key_version', r.key_version, 'state', r.state)::text);
	RETURN NULL;
END $$;

CREATE TRIGGER decryptd_registry_notify AFTER INSERT OR UPDATE OR DELETE ON decryptd_registry_entries
	FOR EACH ROW EXECUTE FUNCTION decryptd_registry_notify();
`}, {2, `
-- Key rotation bookkeeping (registry.Rotation), one JSON document per
-- version: additive, so a build that predates it keeps reading the table.
ALTER TABLE decryptd_registry_entries ADD COLUMN rotation jsonb NOT NULL DEFAULT '{}';
`}, {3, `
-- Bulk creation (Store.CreateMany) notifies in batches of many keys per
-- notification rather than one per row: it sets decryptd.notify to 'batch'
-- for its own transaction, which this trigger honours. Every other writer
-- leaves it unset and notifies per row as before.
CREATE OR REPLACE FUNCTION decryptd_registry_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	r decryptd_registry_entries;
BEGIN
	IF current_setting('decryptd.notify', true) = 'batch' THEN
		RETURN NULL;
	END IF;
	IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
	PERFORM pg_notify('decryptd_registry', json_build_object(
		'op', lower(TG_OP), 'key_id', r.key_id, 'key_version', r.key_version, 'state', r.state)::text);
	RETURN NULL;
END $$;
`}}
}
