//! What a holder leaves behind *through the granted roles*.
//!
//! `DROP OWNED BY jit_N` removes what the login role owns. But a holder whose granted role (say
//! `app_rw`) may create objects can make them owned by that role: `SET ROLE app_rw` before
//! `CREATE`, or `ALTER … OWNER TO app_rw` afterwards. Such objects outlive the grant, and a
//! `SECURITY DEFINER` function, a view or a rule runs with its owner's rights for whoever may
//! call it: a read-only role that calls `app_rw`'s definer function reads and writes as
//! `app_rw` long after the grant ended.
//!
//! **Baseline.** Before a grant acts, jit records the server's next transaction ID
//! ([`encode_baseline`]; PostgreSQL's `txid_current_snapshot()`, 64 bits, shared by every
//! database of the server). Every catalog row carries the ID of the transaction that last wrote
//! it (`xmin`), so at teardown an object whose row (`pg_proc`, `pg_class`, `pg_rewrite`,
//! `pg_trigger`) was written at or after the baseline was created, replaced, altered, given to
//! its owner or had its privileges changed while the grant was live. The baseline is the
//! earliest of the one recorded before this grant and those of overlapping grants that held the
//! same access without a break; the membership rows jit created (their `xmin`) count too, which
//! covers grants issued before jit recorded baselines.
//!
//! **Which owners.** The granted roles and every role they are members of (a holder can
//! `SET ROLE` to any of them), minus the admin itself, and in elevation mode minus every role the
//! user can still reach after the `REVOKE` (standing access is the user's own business).
//!
//! **What is neutralised**, in every database where those roles own objects, once the holder is
//! locked out (no login, no membership, no session):
//! - `SECURITY DEFINER` functions and procedures: `ALTER ROUTINE … SECURITY INVOKER`;
//! - views that run with their owner's rights: `ALTER VIEW … SET (security_invoker = true)`
//!   (PostgreSQL 15+; before 15 every privilege on the view but its owner's is revoked);
//! - rules other than a view's own (a rule's actions run with the table owner's rights):
//!   `DROP RULE`;
//! - triggers on the owners' tables, or calling the owners' functions: `ALTER TABLE … DISABLE
//!   TRIGGER` (a trigger runs its function with the rights of whoever writes to the table).
//!
//! Nothing is dropped except rules, and each change is listed in a loud audit event with the
//! command that undoes it: jit cannot tell an honest change made through a granted role during
//! the grant (by the holder or by anyone else holding that role) from a planted one, so it
//! strips the rights and says so.
//!
//! **Acting as the owner.** A superuser admin may alter anything. A `CREATEROLE` admin grants
//! itself the owner role for the change (it can: it grants that role to holders) and revokes it
//! afterwards; where it cannot (a superuser-owned role; on PostgreSQL 16+ a role it holds no
//! ADMIN OPTION on), or where it cannot connect to a database that holds such objects, the
//! teardown fails, names what remains, and is retried and alerted like any failed teardown.
//!
//! **Limits** (README, provider postgres): tables, sequences, materialized views and large
//! objects made through a granted role stay (data, not rights); privileges a holder granted on
//! a granted role's *existing* tables stay (jit cannot know the old ones); default privileges
//! and policies stay; a `SECURITY INVOKER` object still runs the holder's code with the rights
//! of whoever calls it; with `terminate_sessions = false` a session that ran `SET ROLE` can make
//! objects after the check. A catalog row rewritten for another reason during the grant (a
//! `GRANT` by someone else on a definer function, say) is neutralised too.

use std::collections::BTreeSet;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};

use super::{PostgresProvider, ProviderError, classify, classify_with_detail, quote_ident};

/// The longest attention text (the audit log keeps it whole; Slack shows its start).
const MAX_ATTENTION_CHARS: usize = 8000;

fn truncate_to(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

/// How a postgres baseline starts: `pg-xid:<next transaction ID>`.
pub const BASELINE_PREFIX: &str = "pg-xid:";

pub fn encode_baseline(xid: i64) -> String {
    format!("{BASELINE_PREFIX}{xid}")
}

/// The transaction ID of a baseline jit wrote; `None` for anything else.
pub fn parse_baseline(text: &str) -> Option<i64> {
    text.strip_prefix(BASELINE_PREFIX)?
        .parse()
        .ok()
        .filter(|x| *x > 0)
}

/// The earliest baseline of `texts` and `extra`.
pub fn earliest(texts: &[String], extra: Option<i64>) -> Option<i64> {
    texts
        .iter()
        .filter_map(|t| parse_baseline(t))
        .chain(extra)
        .min()
}

/// SQL for the 64-bit ID of the transaction behind the 32-bit `xid` expression `col`, given the
/// 64-bit next ID `w.now` (a visible row was written before it, so its ID is the latest one
/// below `w.now` with those 32 bits). IDs 0-2 (invalid, bootstrap, frozen) map to 0.
fn full_xid(col: &str) -> String {
    let x = format!("{col}::text::bigint");
    format!(
        "(CASE WHEN {x} < 3 THEN 0 ELSE ((w.now >> 32) << 32) + {x} \
           - CASE WHEN ((w.now >> 32) << 32) + {x} >= w.now THEN 4294967296 ELSE 0 END END)"
    )
}

/// The next transaction ID, without taking one: `txid_snapshot_xmax(txid_current_snapshot())`.
const NEXT_XID: &str = "SELECT txid_snapshot_xmax(txid_current_snapshot())";

/// One object to neutralise.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    kind: String,
    name: String,
    /// The role whose rights the change needs (the object's or the table's owner).
    owner: String,
    fix: String,
    undo: String,
}

/// What the check of one teardown found.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Neutralised, each with the command that undoes it.
    pub fixed: Vec<String>,
    /// Still running with an owner's rights, each with the reason.
    pub unresolved: Vec<String>,
    /// What could not be checked at all.
    pub unchecked: Vec<String>,
    /// Every finding failed or succeeded for a reason a retry may change.
    pub retryable: bool,
}

impl Outcome {
    /// The text of the loud `teardown_attention` event, if there is anything to say.
    pub fn attention(&self, owners: &[String]) -> Option<String> {
        let mut parts = Vec::new();
        if !self.fixed.is_empty() {
            parts.push(format!(
                "objects made or changed through {} while the grant was live ran with their owner's rights; \
                 jit neutralised them: {}. If one of them was legitimate, restore it with the command given",
                owners.join(", "),
                self.fixed.join("; ")
            ));
        }
        if !self.unchecked.is_empty() {
            parts.push(format!("not checked: {}", self.unchecked.join("; ")));
        }
        (!parts.is_empty()).then(|| truncate_to(&parts.join(". "), MAX_ATTENTION_CHARS))
    }

    /// One line for the teardown's detail.
    pub fn summary(&self) -> String {
        match self.fixed.len() {
            0 => "nothing made through the granted roles needed neutralising".to_owned(),
            1 => "1 object made through the granted roles neutralised".to_owned(),
            n => format!("{n} objects made through the granted roles neutralised"),
        }
    }
}

impl PostgresProvider {
    /// The next transaction ID of the server, as a baseline.
    pub(super) async fn next_xid(&self) -> Result<i64, ProviderError> {
        sqlx::query_scalar::<_, i64>(NEXT_XID)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("read the transaction counter", &e, &[]))
    }

    /// When the memberships of `member` began (the earliest transaction that wrote one of its
    /// rows), limited to `roles` when given. `None`: no membership left.
    pub(super) async fn membership_baseline(
        &self,
        member: &str,
        roles: Option<&[String]>,
    ) -> Result<Option<i64>, ProviderError> {
        let sql = format!(
            "WITH w AS ({NEXT_XID} AS now) \
             SELECT min({}) FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid, w \
             WHERE a.member = (SELECT oid FROM pg_roles WHERE rolname = $1) \
               AND ($2::text[] IS NULL OR g.rolname = ANY($2))",
            full_xid("a.xmin")
        );
        let found: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(member)
            .bind(roles)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("read when the memberships began", &e, &[]))?;
        Ok(found.filter(|x| *x > 0))
    }

    /// The roles whose objects teardown checks: `granted` and every role they are members of,
    /// minus the admin, minus every role `still_reaches` can still reach (standing access).
    pub(super) async fn owner_roles(
        &self,
        granted: &[String],
        still_reaches: Option<&str>,
    ) -> Result<Vec<String>, ProviderError> {
        sqlx::query_scalar(
            "SELECT DISTINCT r.rolname::text FROM pg_roles g JOIN pg_roles r ON pg_has_role(g.oid, r.oid, 'MEMBER') \
             WHERE g.rolname = ANY($1) AND r.rolname <> current_user \
               AND NOT EXISTS (SELECT 1 FROM pg_roles u WHERE u.rolname = $2 AND pg_has_role(u.oid, r.oid, 'MEMBER')) \
             ORDER BY 1",
        )
        .bind(granted)
        .bind(still_reaches)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("find the roles a holder could act as", &e, &[]))
    }

    /// Neutralises what `owners` own that was written at or after transaction `since`, in every
    /// database where they own objects. Errors only when nothing could be checked; per-object
    /// failures are in [`Outcome::unresolved`].
    pub(super) async fn neutralise(
        &self,
        owners: &[String],
        since: i64,
    ) -> Result<Outcome, ProviderError> {
        let mut outcome = Outcome {
            retryable: true,
            ..Outcome::default()
        };
        if owners.is_empty() {
            return Ok(outcome);
        }
        let superuser: bool =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| classify("check the admin role", &e, &[]))?;
        let databases = self.owner_databases(owners).await?;
        let mut acting_as = BTreeSet::new();
        for database in &databases {
            let connected = tokio::time::timeout(
                self.acquire_timeout,
                self.options.clone().database(database).connect(),
            )
            .await;
            let mut conn = match connected {
                Ok(Ok(conn)) => conn,
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => classify("connect", &e, &[]).to_string(),
                        _ => "timed out".to_owned(),
                    };
                    self.unreachable(database, owners, since, &why, &mut outcome)
                        .await?;
                    continue;
                }
            };
            let result = self
                .neutralise_in(
                    &mut conn,
                    database,
                    owners,
                    since,
                    superuser,
                    &mut acting_as,
                    &mut outcome,
                )
                .await;
            let _ = conn.close().await;
            if let Err(e) = result {
                outcome.retryable &= e.is_retryable();
                outcome
                    .unresolved
                    .push(format!("database `{database}`: cannot check it: {e}"));
            }
        }
        for role in acting_as {
            // Best effort: a membership the admin gave itself for the change goes again.
            let _ = self
                .execute(
                    "give up the owner's rights",
                    format!("REVOKE {} FROM CURRENT_USER", quote_ident(&role)?),
                    &[],
                )
                .await;
        }
        Ok(outcome)
    }

    /// The admin's database first, then every other database where `owners` own something.
    async fn owner_databases(&self, owners: &[String]) -> Result<Vec<String>, ProviderError> {
        let here = self.target_database_name().await?;
        let others: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT d.datname::text FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.deptype = 'o' AND s.refclassid = 'pg_authid'::regclass \
               AND s.refobjid IN (SELECT oid FROM pg_roles WHERE rolname = ANY($1)) \
               AND d.datname <> current_database() ORDER BY 1",
        )
        .bind(owners)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("find where the roles own objects", &e, &[]))?;
        let mut out = vec![here];
        out.extend(others);
        Ok(out)
    }

    /// A database jit cannot connect to: what the shared catalog tells about it.
    async fn unreachable(
        &self,
        database: &str,
        owners: &[String],
        since: i64,
        why: &str,
        outcome: &mut Outcome,
    ) -> Result<(), ProviderError> {
        let sql = format!(
            "WITH w AS ({NEXT_XID} AS now) \
             SELECT count(*) FROM pg_shdepend s, w \
             WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = $1) AND s.deptype = 'o' \
               AND s.refclassid = 'pg_authid'::regclass \
               AND s.refobjid IN (SELECT oid FROM pg_roles WHERE rolname = ANY($2)) \
               AND {} >= {since}",
            full_xid("s.xmin")
        );
        let new: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(database)
            .bind(owners)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("count the roles' new objects", &e, &[]))?;
        let why = why.trim_start_matches("postgres: cannot connect: ");
        if new > 0 {
            outcome.retryable = false;
            outcome.unresolved.push(format!(
                "database `{database}`: {new} object(s) owned by {} were created or given to them during the grant, \
                 and jit cannot connect there to check them ({why}); let the admin connect (GRANT CONNECT), \
                 or neutralise them by hand",
                owners.join(", ")
            ));
        } else {
            outcome.unchecked.push(format!(
                "database `{database}`, where {} own objects: jit cannot connect there ({why}), so objects \
                 there that were changed (not created) during the grant went unchecked",
                owners.join(", ")
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn neutralise_in(
        &self,
        conn: &mut PgConnection,
        database: &str,
        owners: &[String],
        since: i64,
        superuser: bool,
        acting_as: &mut BTreeSet<String>,
        outcome: &mut Outcome,
    ) -> Result<(), ProviderError> {
        // Names come out schema-qualified, and the fixes resolve them the same way.
        sqlx::raw_sql("SET search_path = pg_catalog, pg_temp")
            .execute(&mut *conn)
            .await
            .map_err(|e| classify("set the search path", &e, &[]))?;
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| classify("read the server version", &e, &[]))?;
        let findings: Vec<(String, String, String, String, String)> =
            sqlx::query_as(AssertSqlSafe(findings_sql(version, since)))
                .bind(owners)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| classify("find objects made through the granted roles", &e, &[]))?;
        for (kind, name, owner, fix, undo) in findings {
            let finding = Finding {
                kind,
                name,
                owner,
                fix,
                undo,
            };
            let label = format!(
                "{} {} (owner {}, database `{database}`)",
                finding.kind, finding.name, finding.owner
            );
            let done = match finding.kind.as_str() {
                "function" => "is SECURITY INVOKER now",
                "view" if version >= 150_000 => "has security_invoker now",
                "view" => "lost every privilege but its owner's",
                "rule" => "dropped",
                _ => "disabled",
            };
            if !superuser && let Err(e) = self.act_as_owner(conn, &finding.owner, acting_as).await {
                outcome.retryable &= e.is_retryable();
                outcome.unresolved.push(format!(
                    "{label}: the admin cannot act as {}: {}",
                    finding.owner,
                    e.to_string().trim_start_matches("postgres: ")
                ));
                continue;
            }
            match sqlx::raw_sql(AssertSqlSafe(finding.fix.clone()))
                .execute(&mut *conn)
                .await
            {
                Ok(_) => outcome.fixed.push(format!(
                    "{label} {done}{}",
                    match finding.kind.as_str() {
                        _ if finding.undo.is_empty() => String::new(),
                        "rule" => format!(
                            " (it was: {})",
                            truncate_to(
                                &finding
                                    .undo
                                    .split_whitespace()
                                    .collect::<Vec<_>>()
                                    .join(" "),
                                300
                            )
                        ),
                        _ => format!(" (undo: {})", finding.undo),
                    }
                )),
                Err(e) => {
                    let e = classify_with_detail(&format!("neutralise {}", finding.name), &e);
                    outcome.retryable &= e.is_retryable();
                    outcome.unresolved.push(format!(
                        "{label}: {}",
                        e.to_string().trim_start_matches("postgres: ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// Gives the admin the rights of `owner` (which altering its objects needs), once per
    /// teardown; [`neutralise`](Self::neutralise) takes them back.
    async fn act_as_owner(
        &self,
        conn: &mut PgConnection,
        owner: &str,
        acting_as: &mut BTreeSet<String>,
    ) -> Result<(), ProviderError> {
        if acting_as.contains(owner) {
            return Ok(());
        }
        let has: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1::text, 'USAGE')")
            .bind(owner)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| classify("check the admin's membership", &e, &[]))?;
        if has {
            return Ok(());
        }
        sqlx::raw_sql(AssertSqlSafe(format!(
            "GRANT {} TO CURRENT_USER",
            quote_ident(owner)?
        )))
        .execute(&mut *conn)
        .await
        .map_err(|e| classify(&format!("take the rights of {owner}"), &e, &[]))?;
        acting_as.insert(owner.to_owned());
        Ok(())
    }
}

/// Objects owned by the roles in `$1`, written at or after transaction `since`, that run with
/// their owner's rights: (kind, name, role to act as, fix, undo). Names are rendered under
/// `search_path = pg_catalog, pg_temp`, so they are schema-qualified.
fn findings_sql(version: i32, since: i64) -> String {
    let invoker = "EXISTS (SELECT 1 FROM unnest(c.reloptions) opt \
         WHERE split_part(opt, '=', 1) = 'security_invoker' \
           AND lower(split_part(opt, '=', 2)) IN ('t', 'tr', 'tru', 'true', 'y', 'ye', 'yes', 'on', '1'))";
    let (view_filter, view_fix, view_undo) = if version >= 150_000 {
        (
            format!("NOT {invoker}"),
            "format('ALTER VIEW %s SET (security_invoker = true)', c.oid::regclass)".to_owned(),
            "format('ALTER VIEW %s RESET (security_invoker)', c.oid::regclass)".to_owned(),
        )
    } else {
        // No security_invoker before 15: only its owner (and the owner's members) may use it.
        (
            "EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner)"
                .to_owned(),
            "format('REVOKE ALL ON TABLE %s FROM %s CASCADE', c.oid::regclass, \
               (SELECT string_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' \
                                  ELSE quote_ident(pg_get_userbyid(a.grantee)) END, ', ') \
                FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner))"
                .to_owned(),
            "''".to_owned(),
        )
    };
    format!(
        "WITH w AS ({NEXT_XID} AS now), \
              o AS (SELECT oid, rolname FROM pg_roles WHERE rolname = ANY($1)) \
         SELECT kind, name, owner, fix, undo FROM ( \
           SELECT 'function'::text AS kind, p.oid::regprocedure::text AS name, o.rolname::text AS owner, \
                  format('ALTER ROUTINE %s SECURITY INVOKER', p.oid::regprocedure) AS fix, \
                  format('ALTER ROUTINE %s SECURITY DEFINER', p.oid::regprocedure) AS undo, p.xmin AS x \
             FROM pg_proc p JOIN o ON o.oid = p.proowner WHERE p.prosecdef \
           UNION ALL \
           SELECT 'view', c.oid::regclass::text, o.rolname::text, {view_fix}, {view_undo}, c.xmin \
             FROM pg_class c JOIN o ON o.oid = c.relowner WHERE c.relkind = 'v' AND {view_filter} \
           UNION ALL \
           SELECT 'rule', format('%I on %s', r.rulename, c.oid::regclass), o.rolname::text, \
                  format('DROP RULE %I ON %s', r.rulename, c.oid::regclass), \
                  pg_get_ruledef(r.oid), r.xmin \
             FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN o ON o.oid = c.relowner \
            WHERE r.rulename <> '_RETURN' \
           UNION ALL \
           SELECT 'trigger', format('%I on %s', t.tgname, t.tgrelid::regclass), \
                  pg_get_userbyid(c.relowner)::text, \
                  format('ALTER TABLE %s DISABLE TRIGGER %I', t.tgrelid::regclass, t.tgname), \
                  format('ALTER TABLE %s ENABLE TRIGGER %I', t.tgrelid::regclass, t.tgname), t.xmin \
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_proc f ON f.oid = t.tgfoid \
            WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' \
              AND (c.relowner IN (SELECT oid FROM o) OR f.proowner IN (SELECT oid FROM o)) \
         ) found, w \
         WHERE {} >= {since} \
         ORDER BY kind, name",
        full_xid("found.x")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_round_trip_and_the_earliest_wins() {
        assert_eq!(
            parse_baseline(&encode_baseline(4_294_967_400)),
            Some(4_294_967_400)
        );
        for bad in ["", "pg-xid:", "pg-xid:x", "pg-xid:-5", "pg-xid:0", "xid:5"] {
            assert_eq!(parse_baseline(bad), None, "{bad}");
        }
        let texts = vec![encode_baseline(900), "junk".into(), encode_baseline(700)];
        assert_eq!(earliest(&texts, None), Some(700));
        assert_eq!(earliest(&texts, Some(650)), Some(650));
        assert_eq!(earliest(&[], Some(5)), Some(5));
        assert_eq!(earliest(&[], None), None);
    }

    #[test]
    fn the_window_is_spelled_with_the_baseline_only() {
        let sql = findings_sql(150_000, 1234);
        assert!(sql.contains(">= 1234"));
        assert!(sql.contains("security_invoker = true"));
        assert!(findings_sql(140_000, 1).contains("REVOKE ALL ON TABLE"));
    }
}
