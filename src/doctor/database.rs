//! The database checks, on SQLite and PostgreSQL alike: the database opens read-only and its
//! schema is this jit's; the encryption key opens the newest stored credentials; the audit chain
//! verifies. A PostgreSQL URL is only ever shown with its password masked.

use super::Check;
use crate::config::ServeConfig;
use crate::crypto::Cipher;
use crate::store::{self, Driver, Store, audit::Verification};

/// Where the database is, for the report's lines.
struct Place {
    /// `/var/lib/jit/jit.db`, or `PostgreSQL postgres://jit:***@db/jit`.
    label: String,
    /// What to check when the database cannot be read.
    read_fix: &'static str,
    /// What to do when jit never ran on it.
    empty_fix: &'static str,
}

pub async fn checks(config: &ServeConfig) -> Vec<Check> {
    let url = &config.base.database_url;
    let cipher = Cipher::from_base64_or_hex(&config.encryption_key);
    let key_check = |detail: &str| key_unchecked(&cipher, detail);
    if Driver::of_url(url) == Some(Driver::Postgres) {
        let label = format!("PostgreSQL {}", store::redact_url(url));
        let store = match Store::open_read_only(url).await {
            Ok(store) => store,
            Err(e) => {
                return vec![
                    Check::fail(
                        "database",
                        format!("{e:#}"),
                        "check that the PostgreSQL server in JIT_DATABASE_URL is up and reachable from here, and its user, password and database name (jit serve would not start)",
                    ),
                    key_check("the database cannot be reached"),
                    Check::skip("audit log", "the database cannot be reached"),
                ];
            }
        };
        let place = Place {
            label,
            read_fix: "check that the user in JIT_DATABASE_URL may read jit's tables in that database (and schema)",
            empty_fix: "nothing to do if jit never ran on it (jit serve creates them; jit db copy moves a SQLite deployment into it); otherwise JIT_DATABASE_URL points at the wrong database or schema",
        };
        return contents(config, &cipher, store, place).await;
    }
    let Some(path) = crate::bootstrap::sqlite_path(url) else {
        return vec![
            Check::skip("database", format!("{url} is in memory: nothing is kept")),
            key_check("no credentials are stored"),
        ];
    };
    if !path.exists() {
        return vec![
            Check::warn(
                "database",
                format!("{} does not exist yet", path.display()),
                "nothing to do if jit never ran here (jit serve creates it); otherwise JIT_DATABASE_URL points at the wrong file",
            ),
            key_check("no credentials are stored yet"),
            Check::skip("audit log", "no database yet, so no audit log"),
        ];
    }
    let store = match Store::open_read_only(url).await {
        Ok(store) => store,
        Err(e) => {
            return vec![Check::fail(
                "database",
                format!("{e:#}"),
                "check JIT_DATABASE_URL and that this user may read the file (run jit doctor as the user jit serve runs as)",
            )];
        }
    };
    let place = Place {
        label: path.display().to_string(),
        read_fix: "check that this user may read the file and its -wal and -shm files",
        empty_fix: "nothing to do if jit never ran here (jit serve creates them); otherwise JIT_DATABASE_URL points at the wrong file",
    };
    contents(config, &cipher, store, place).await
}

/// A key check that could not be made, or the key's own error.
fn key_unchecked(cipher: &Result<Cipher, crate::crypto::KeyError>, detail: &str) -> Check {
    match cipher {
        Ok(_) => Check::skip(
            "encryption key",
            format!(
                "JIT_ENCRYPTION_KEY is a valid AES-256 key; {detail}, so it cannot be checked against them"
            ),
        ),
        Err(e) => Check::fail(
            "encryption key",
            format!("JIT_ENCRYPTION_KEY: {e}"),
            "set the key jit serve uses (jit keygen prints a new one, but a new key cannot open credentials stored with the old one)",
        ),
    }
}

/// The schema, the stored credentials and the audit chain of an open database.
async fn contents(
    config: &ServeConfig,
    cipher: &Result<Cipher, crate::crypto::KeyError>,
    store: Store,
    place: Place,
) -> Vec<Check> {
    let key_check = |detail: &str| key_unchecked(cipher, detail);
    let label = &place.label;
    let mut out = Vec::new();
    let mut conn = match store.read().await {
        Ok(conn) => conn,
        Err(e) => {
            return vec![Check::fail(
                "database",
                format!("cannot read {label}: {e}"),
                place.read_fix,
            )];
        }
    };
    match store::migration_status(&mut conn).await {
        Ok((_, unknown)) if !unknown.is_empty() => {
            out.push(Check::fail(
                "database",
                format!(
                    "{label} was migrated by a newer jit (migrations {} are unknown to this binary)",
                    super::listing(&unknown.iter().map(i64::to_string).collect::<Vec<_>>(), 3)
                ),
                "run the jit version that migrated it",
            ));
        }
        Ok((pending, _)) if pending.len() == store.migrator().iter().count() => {
            out.push(Check::warn(
                "database",
                format!("{label} holds no jit tables yet"),
                place.empty_fix,
            ));
            out.push(key_check("no credentials are stored yet"));
            out.push(Check::skip(
                "audit log",
                "no jit tables yet, so no audit log",
            ));
            drop(conn);
            store.close().await;
            return out;
        }
        Ok((pending, _)) if !pending.is_empty() => out.push(Check::warn(
            "database",
            format!(
                "{label}: {} migration(s) of this jit are not applied yet",
                pending.len()
            ),
            "jit serve (or jit migrate) applies them at start",
        )),
        Ok(_) => out.push(Check::ok(
            "database",
            format!("{label} opens read-only; its schema is this jit's"),
        )),
        Err(e) => {
            out.push(Check::fail(
                "database",
                format!("cannot read {label}: {e}"),
                place.read_fix,
            ));
            drop(conn);
            store.close().await;
            return out;
        }
    }
    out.push(match cipher {
        Err(_) => key_check(""),
        Ok(cipher) => match store::credentials::newest(&mut conn).await {
            Ok(None) => key_check("no credentials are stored now"),
            Ok(Some((id, sealed))) => {
                match cipher.open_secret(&sealed, &store::credentials::aad(id)) {
                    Ok(_) => Check::ok(
                        "encryption key",
                        format!("JIT_ENCRYPTION_KEY opens the newest stored credentials (request {id})"),
                    ),
                    Err(_) => Check::fail(
                        "encryption key",
                        format!(
                            "JIT_ENCRYPTION_KEY does not open the credentials stored for request {id}: it is not the key they were sealed with (or they were altered)"
                        ),
                        "set JIT_ENCRYPTION_KEY to the key jit serve used when it stored them; with another key, holders cannot reveal their current credentials",
                    ),
                }
            }
            Err(e) => Check::fail(
                "encryption key",
                format!("cannot read the stored credentials: {e}"),
                place.read_fix,
            ),
        },
    });
    let key = crate::crypto::AuditKey::from_settings(
        config.audit_key.as_ref(),
        Some(&config.encryption_key),
    );
    out.push(audit_check(&mut conn, key, place.read_fix).await);
    drop(conn);
    store.close().await;
    out
}

/// The audit chain, verified as `jit audit verify` does, with the key `jit serve` would use.
async fn audit_check(
    conn: &mut crate::store::Conn,
    key: Result<crate::crypto::AuditKey, String>,
    read_fix: &str,
) -> Check {
    let key = match key {
        Ok(key) => key,
        Err(e) => {
            return Check::fail(
                "audit log",
                format!("cannot check: no usable audit key ({e})"),
                "set JIT_AUDIT_KEY (or JIT_ENCRYPTION_KEY, from which it is derived) as jit serve has it",
            );
        }
    };
    match store::audit::verify(conn, &key).await {
        Ok(Verification::Intact { rows: 0, .. }) => {
            Check::ok("audit log", "empty: nothing recorded yet")
        }
        Ok(Verification::Intact { rows, head }) => Check::ok(
            "audit log",
            format!(
                "intact: {rows} event{}, hash chain verified{}",
                if rows == 1 { "" } else { "s" },
                head.map(|h| format!(
                    " (head {rows}:{h}; keep it and check it later with jit audit verify --head)"
                ))
                .unwrap_or_default()
            ),
        ),
        Ok(Verification::Broken {
            rows_checked,
            seq,
            reason,
        }) => Check::fail(
            "audit log",
            format!("TAMPERED: row {seq}: {reason} ({rows_checked} rows before it are intact)"),
            "the database was changed outside jit: keep a copy, investigate who could write it, and compare with jit audit export and the audit threads in Slack",
        ),
        Err(e) => Check::fail(
            "audit log",
            format!("cannot read the audit log: {e}"),
            read_fix,
        ),
    }
}
