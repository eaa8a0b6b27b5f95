use super::*;

const EXAMPLE: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"], groups = ["S0SECURITY"] }

[defaults]
reminder_before = "10m"
pending_timeout = "30m"

[[resource]]
id = "aws-prod-readonly"
description = "Read-only in the production AWS account"
provider = "aws_sts"
role_arn = "arn:aws:iam::123456789012:role/jit-prod-readonly"
role_max_session = "4h"
max_duration = "4h"
default_duration = "1h"
requesters = { groups = ["S0ENGINEERS"] }
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"], groups = ["S0SRE"] }
approvals_required = 1
auto_approve = { max_duration = "1h", groups = ["S0ONCALL"] }
breakglass = false

[[resource]]
id = "prod-db"
provider = "exec"
grant_command = ["./grant.sh"]
revoke_command = ["./revoke.sh", "--force"]
max_duration = "8h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0BOB"] }
approvals_required = 2
breakglass = true
parameters = { cluster = "main", port = 5432 }
"#;

fn no_files(path: &str) -> std::io::Result<String> {
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{path} not found"),
    ))
}

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text, &no_files)
}

struct Groups(Vec<(&'static str, &'static str)>);

impl Membership for Groups {
    fn is_member(&self, user: &SlackUserId, group: &SlackGroupId) -> bool {
        self.0
            .iter()
            .any(|(g, u)| *g == group.as_str() && *u == user.as_str())
    }
}

fn user(id: &str) -> Requester {
    Requester::User(SlackUserId::parse(id).unwrap())
}

fn d(text: &str) -> GrantDuration {
    GrantDuration::parse(text).unwrap()
}

#[test]
fn parses_the_design_example() {
    let policy = parse(EXAMPLE).unwrap();
    assert_eq!(policy.audit_channel.as_str(), "C0AUDIT");
    assert_eq!(policy.resources().len(), 2);
    let aws = policy.resource("aws-prod-readonly").unwrap();
    assert_eq!(aws.max_duration, d("4h"));
    assert_eq!(aws.default_duration, d("1h"));
    assert_eq!(aws.reminder_before, d("10m"));
    assert!(matches!(aws.provider, ProviderConfig::AwsSts(_)));
    let db = policy.resource("prod-db").unwrap();
    assert_eq!(db.approvals_required, 2);
    assert!(db.breakglass);
    let ProviderConfig::Exec(exec) = &db.provider else {
        panic!("exec expected")
    };
    assert_eq!(exec.revoke_command, vec!["./revoke.sh", "--force"]);
    assert_eq!(exec.timeout, d("30s"));
    assert_eq!(exec.parameters["port"], 5432);
    assert_eq!(db.default_duration, d("1h"), "defaults to min(max, 1h)");
}

fn error_of(text: &str) -> PolicyError {
    parse(text).expect_err("the policy should be refused")
}

#[test]
fn syntax_and_unknown_keys_report_line_and_column() {
    let err = error_of(
        "[slack]\naudit_channel = \"C0AUDIT\"\nadmins = { users = [\"U0A\"] }\ncolour = 1\n",
    );
    assert_eq!((err.line, err.column), (4, 1), "{err}");
    assert!(err.message.contains("unknown field `colour`"), "{err}");

    let err = error_of("[slack\n");
    assert_eq!(err.line, 1, "{err}");

    let bad_duration = EXAMPLE.replace("max_duration = \"8h\"", "max_duration = \"8 hours\"");
    let err = error_of(&bad_duration);
    assert!(err.message.contains("1h30m"), "{err}");
    let line = bad_duration
        .lines()
        .position(|l| l.contains("8 hours"))
        .unwrap()
        + 1;
    assert_eq!(err.line, line, "{err}");
}

#[test]
fn semantic_errors_point_at_their_resource() {
    let cases = [
        (
            EXAMPLE.replace("id = \"prod-db\"", "id = \"aws-prod-readonly\""),
            "declared twice",
        ),
        (
            EXAMPLE.replace("default_duration = \"1h\"", "default_duration = \"5h\""),
            "longer than max_duration",
        ),
        (
            EXAMPLE.replace("approvals_required = 2", "approvals_required = 3"),
            "only 2 approver(s)",
        ),
        (
            EXAMPLE.replace("approvals_required = 2", "approvals_required = 0"),
            "at least 1",
        ),
        (
            EXAMPLE.replace("grant_command = [\"./grant.sh\"]", "grant_command = []"),
            "needs grant_command",
        ),
        (
            EXAMPLE.replace(
                "breakglass = true",
                "breakglass = true\nrole_arn = \"arn:aws:iam::123456789012:role/x\"",
            ),
            "role_arn only apply to another provider",
        ),
        (
            EXAMPLE.replace("role_max_session = \"4h\"", "role_max_session = \"2h\""),
            "longer than the role's maximum session",
        ),
        (
            EXAMPLE.replace("role_max_session = \"4h\"", "role_max_session = \"13h\""),
            "between 15m and 12h",
        ),
        (
            EXAMPLE.replace(
                "role_arn = \"arn:aws:iam::123456789012:role/jit-prod-readonly\"",
                "role_arn = \"arn:aws:s3:::bucket\"",
            ),
            "not an IAM role ARN",
        ),
        (
            EXAMPLE.replace(
                "auto_approve = { max_duration = \"1h\"",
                "auto_approve = { max_duration = \"5h\"",
            ),
            "auto_approve.max_duration",
        ),
        (
            EXAMPLE.replace("users = [\"U0ALICE\", \"U0BOB\"] }", "users = [] }"),
            "approvers must name at least one",
        ),
        (
            EXAMPLE.replace(
                "requesters = { groups = [\"S0ENGINEERS\"] }",
                "requesters = { identities = [\"ci\"] }",
            ),
            "identity `ci`, which has no [[identity]]",
        ),
    ];
    for (text, expected) in cases {
        let err = error_of(&text);
        assert!(
            err.message.contains(expected),
            "expected {expected:?}, got {err}"
        );
        let resource_line = text.lines().position(|l| l == "[[resource]]").unwrap() + 1;
        assert!(
            err.line >= resource_line,
            "{err} should point into a resource"
        );
    }
}

#[test]
fn admins_and_slack_ids_are_checked() {
    let err = error_of(&EXAMPLE.replace(
        "admins = { users = [\"U0SECLEAD\"], groups = [\"S0SECURITY\"] }",
        "admins = {}",
    ));
    assert!(err.message.contains("slack.admins"), "{err}");
    let err = error_of(&EXAMPLE.replace("\"C0AUDIT\"", "\"#audit\""));
    assert!(err.message.contains("not a Slack channel ID"), "{err}");
    assert_eq!(err.line, 3, "{err}");
}

#[test]
fn session_policies_are_size_checked() {
    let small = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
    assert_eq!(validate_session_policy(small).unwrap(), small);
    let spaced = "{ \"Version\" : \"2012-10-17\" }";
    assert_eq!(
        validate_session_policy(spaced).unwrap(),
        "{\"Version\":\"2012-10-17\"}"
    );
    let big = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"s3:GetObject","Resource":"{}"}}]}}"#,
        "x".repeat(2100)
    );
    assert!(
        validate_session_policy(&big)
            .unwrap_err()
            .contains("at most 2048")
    );
    assert!(validate_session_policy("not json").is_err());

    let with_file = EXAMPLE.replace(
        "breakglass = false",
        "breakglass = false\nsession_policy_file = \"policy.json\"",
    );
    let big_clone = big.clone();
    let reader = move |path: &str| -> std::io::Result<String> {
        assert_eq!(path, "policy.json");
        Ok(big_clone.clone())
    };
    let err = Policy::parse(&with_file, &reader).unwrap_err();
    assert!(err.message.contains("at most 2048"), "{err}");
    let err = parse(&with_file).unwrap_err();
    assert!(
        err.message.contains("cannot read session_policy_file"),
        "{err}"
    );
}

#[test]
fn evaluation_routes_and_refuses() {
    let policy = parse(EXAMPLE).unwrap();
    let groups = Groups(vec![
        ("S0ENGINEERS", "U0DEV"),
        ("S0ENGINEERS", "U0ONCALL"),
        ("S0ONCALL", "U0ONCALL"),
    ]);

    let eval = policy
        .evaluate("aws-prod-readonly", &user("U0DEV"), Some(d("2h")), &groups)
        .unwrap();
    assert_eq!(eval.route, Route::Approval);
    assert_eq!(eval.duration, d("2h"));

    let eval = policy
        .evaluate("aws-prod-readonly", &user("U0ONCALL"), None, &groups)
        .unwrap();
    assert_eq!(
        eval.route,
        Route::Auto,
        "on-call within 1h is auto-approved"
    );
    assert_eq!(eval.duration, d("1h"));

    let eval = policy
        .evaluate(
            "aws-prod-readonly",
            &user("U0ONCALL"),
            Some(d("1h1m")),
            &groups,
        )
        .unwrap();
    assert_eq!(
        eval.route,
        Route::Approval,
        "longer than the auto-approve limit"
    );

    assert_eq!(
        policy
            .evaluate("aws-prod-readonly", &user("U0STRANGER"), None, &groups)
            .unwrap_err(),
        Refusal::NotAllowed {
            resource: ResourceId::parse("aws-prod-readonly").unwrap()
        }
    );

    let too_long = policy
        .evaluate("aws-prod-readonly", &user("U0DEV"), Some(d("5h")), &groups)
        .unwrap_err();
    assert_eq!(
        too_long.to_string(),
        "`aws-prod-readonly` can be granted for at most 4h (4 hours); you asked for 5h."
    );

    let unknown = policy
        .evaluate("aws-prod-readonly-x", &user("U0DEV"), None, &groups)
        .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "There is no resource `aws-prod-readonly-x`. Did you mean `aws-prod-readonly`?"
    );
    let unknown = policy
        .evaluate("zzz", &user("U0DEV"), None, &groups)
        .unwrap_err();
    assert!(
        unknown.to_string().contains("lists the resources"),
        "{unknown}"
    );

    // Anyone may request prod-db (no requesters), but identities must be named.
    assert!(
        policy
            .evaluate("prod-db", &user("U0STRANGER"), None, &groups)
            .is_ok()
    );
    assert!(matches!(
        policy.evaluate("prod-db", &Requester::Identity("ci".into()), None, &groups),
        Err(Refusal::NotAllowed { .. })
    ));
}

#[test]
fn suggestions_rank_close_ids() {
    let policy = parse(EXAMPLE).unwrap();
    assert_eq!(policy.suggest("prod-bd"), vec!["prod-db"]);
    assert_eq!(policy.suggest("aws"), vec!["aws-prod-readonly"]);
    assert!(policy.suggest("kubernetes").is_empty());
}

#[test]
fn deciding_needs_an_approver_who_is_not_the_requester() {
    let policy = parse(EXAMPLE).unwrap();
    let groups = Groups(vec![("S0SRE", "U0SRE")]);
    let aws = policy.resource("aws-prod-readonly").unwrap();
    let alice = SlackUserId::parse("U0ALICE").unwrap();
    let sre = SlackUserId::parse("U0SRE").unwrap();
    let mallory = SlackUserId::parse("U0MALLORY").unwrap();
    assert_eq!(
        policy.may_decide(aws, &user("U0DEV"), &alice, 0, &groups),
        Ok(())
    );
    assert_eq!(
        policy.may_decide(aws, &user("U0DEV"), &sre, 0, &groups),
        Ok(())
    );
    assert_eq!(
        policy.may_decide(aws, &user("U0ALICE"), &alice, 0, &groups),
        Err(DecisionRefusal::OwnRequest)
    );
    assert_eq!(
        policy.may_decide(aws, &user("U0DEV"), &mallory, 0, &groups),
        Err(DecisionRefusal::NotAnApprover)
    );
    // Admins are not approvers unless listed.
    let lead = SlackUserId::parse("U0SECLEAD").unwrap();
    assert!(policy.is_admin(&lead, &groups));
    assert_eq!(
        policy.may_decide(aws, &user("U0DEV"), &lead, 0, &groups),
        Err(DecisionRefusal::NotAnApprover)
    );
}

#[test]
fn identities_request_only_what_they_are_declared_for() {
    let text = format!(
        "{EXAMPLE}\n[[identity]]\nname = \"ci-deploy\"\nowner = {{ users = [\"U0OWNER\"] }}\nresources = [\"prod-db\"]\n"
    )
    .replace(
        "approvals_required = 2",
        "approvals_required = 2\nrequesters = { identities = [\"ci-deploy\"], users = [\"U0DEV\"] }",
    );
    let policy = parse(&text).unwrap();
    let ci = Requester::Identity("ci-deploy".into());
    assert!(policy.evaluate("prod-db", &ci, None, &NoGroups).is_ok());
    assert!(
        policy
            .evaluate("aws-prod-readonly", &ci, None, &NoGroups)
            .is_err()
    );
    let db = policy.resource("prod-db").unwrap();
    let owner = SlackUserId::parse("U0OWNER").unwrap();
    let alice = SlackUserId::parse("U0ALICE").unwrap();
    assert_eq!(
        policy.may_decide(db, &ci, &owner, 0, &NoGroups),
        Err(DecisionRefusal::OwnIdentity)
    );
    assert_eq!(policy.may_decide(db, &ci, &alice, 0, &NoGroups), Ok(()));

    let unknown_resource = text.replace("resources = [\"prod-db\"]", "resources = [\"nope\"]");
    assert!(error_of(&unknown_resource).message.contains("`nope`"));
}

#[test]
fn lifetimes_default_to_three_maximums_and_cap_extensions() {
    let policy = parse(EXAMPLE).unwrap();
    let aws = policy.resource("aws-prod-readonly").unwrap();
    assert_eq!(aws.max_lifetime, d("12h"), "3 × max_duration");
    let oncall = Groups(vec![("S0ONCALL", "U0ONCALL"), ("S0ENGINEERS", "U0ONCALL")]);
    let who = user("U0ONCALL");
    // Within the auto-approval rule's own 1h in all: approved by policy.
    let e = policy
        .evaluate_extension("aws-prod-readonly", &who, d("30m"), d("30m"), &oncall)
        .unwrap();
    assert_eq!(e.route, Route::Auto);
    // Past it: a person decides, however short the extension.
    let e = policy
        .evaluate_extension("aws-prod-readonly", &who, d("15m"), d("1h"), &oncall)
        .unwrap();
    assert_eq!(e.route, Route::Approval);
    // Up to the lifetime exactly, then refused with the cap named.
    assert!(
        policy
            .evaluate_extension("aws-prod-readonly", &who, d("4h"), d("8h"), &oncall)
            .is_ok()
    );
    let refusal = policy
        .evaluate_extension("aws-prod-readonly", &who, d("1s"), d("12h"), &oncall)
        .unwrap_err();
    assert!(matches!(refusal, Refusal::LifetimeExceeded { .. }));
    assert!(
        refusal.to_string().contains("at most 12h (12 hours)"),
        "{refusal}"
    );
    // The extension's own maximum still applies.
    assert!(matches!(
        policy.evaluate_extension("aws-prod-readonly", &who, d("5h"), d("1h"), &oncall),
        Err(Refusal::TooLong { .. })
    ));

    let set = EXAMPLE.replace(
        "max_duration = \"8h\"",
        "max_duration = \"8h\"\nmax_lifetime = \"10h\"",
    );
    assert_eq!(
        parse(&set)
            .unwrap()
            .resource("prod-db")
            .unwrap()
            .max_lifetime,
        d("10h")
    );
    let short = EXAMPLE.replace(
        "max_duration = \"8h\"",
        "max_duration = \"8h\"\nmax_lifetime = \"2h\"",
    );
    assert!(
        error_of(&short)
            .message
            .contains("max_lifetime 2h is shorter than max_duration 8h")
    );
}

#[test]
fn exec_env_passes_only_what_is_not_a_secret_of_jit() {
    let with = |env: &str| {
        EXAMPLE.replace(
            "parameters = { cluster = \"main\", port = 5432 }",
            &format!("parameters = {{ cluster = \"main\" }}\nenv = {env}"),
        )
    };
    let policy = parse(&with(r#"["KUBECONFIG", "GH_TOKEN_FILE"]"#)).unwrap();
    let ProviderConfig::Exec(exec) = &policy.resource("prod-db").unwrap().provider else {
        panic!("exec")
    };
    assert_eq!(exec.env, ["KUBECONFIG", "GH_TOKEN_FILE"]);
    for secret in [
        "SLACK_BOT_TOKEN",
        "JIT_ENCRYPTION_KEY_FILE",
        "AWS_SECRET_ACCESS_KEY",
        "SLACK_SIGNING_SECRET",
    ] {
        let err = error_of(&with(&format!("[\"{secret}\"]")));
        assert!(err.message.contains("one of jit's own secrets"), "{err}");
    }
    assert!(
        error_of(&with(r#"["not a name"]"#))
            .message
            .contains("is not one")
    );
    // The admin URL of a postgres resource, by name or file.
    let pg = format!(
        "{}\n[[resource]]\nid = \"pg\"\nprovider = \"postgres\"\ndatabase_url_env = \"PG_ADMIN_URL\"\nroles = [\"r\"]\napprovers = {{ channel = \"C0APPROVALS\", users = [\"U0ALICE\"] }}\n",
        with(r#"["PG_ADMIN_URL_FILE"]"#)
    );
    assert!(error_of(&pg).message.contains("holds the admin URL"));
    // env belongs to exec.
    let misplaced = EXAMPLE.replace("breakglass = false", "breakglass = false\nenv = [\"X\"]");
    assert!(error_of(&misplaced).message.contains("env"));
}

const POSTGRES: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "pg"
provider = "postgres"
database_url_env = "PG_ADMIN_URL"
roles = ["app_rw"]
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

fn postgres_of(text: &str) -> PostgresConfig {
    let policy = parse(text).unwrap_or_else(|e| panic!("{e}"));
    match &policy.resource("pg").unwrap().provider {
        ProviderConfig::Postgres(c) => c.clone(),
        other => panic!("postgres expected, got {other:?}"),
    }
}

fn elevation(extra: &str) -> String {
    format!("{POSTGRES}mode = \"elevation\"\ndb_users = {{ U0DEV = \"dev\" }}\n{extra}")
}

#[test]
fn postgres_defaults_drop_leftovers_refuse_superusers_and_end_sessions() {
    let c = postgres_of(POSTGRES);
    assert_eq!(
        c.mode,
        PostgresMode::Ephemeral {
            connection_limit: 5,
            objects_owner: None
        }
    );
    assert!(!c.allow_superuser_admin);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());

    let c = postgres_of(&elevation(""));
    let PostgresMode::Elevation {
        terminate_sessions, ..
    } = c.mode
    else {
        panic!("elevation expected")
    };
    assert!(terminate_sessions, "sessions are ended by default");
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn postgres_settings_that_weaken_teardown_are_warned_about() {
    let c = postgres_of(&elevation("terminate_sessions = false\n"));
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("terminate_sessions = false")
            && warnings[0].contains("SET ROLE")
            && warnings[0].contains("opened before the grant"),
        "{}",
        warnings[0]
    );

    let c = postgres_of(&format!("{POSTGRES}allow_superuser_admin = true\n"));
    assert!(c.allow_superuser_admin);
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("allow_superuser_admin = true")
            && warnings[0].contains("$PG_ADMIN_URL"),
        "{}",
        warnings[0]
    );
}

#[test]
fn objects_owner_names_a_role_of_its_own() {
    let c = postgres_of(&format!("{POSTGRES}objects_owner = \"jit_leftovers\"\n"));
    assert_eq!(
        c.mode,
        PostgresMode::Ephemeral {
            connection_limit: 5,
            objects_owner: Some("jit_leftovers".into())
        }
    );
    for (owner, expected) in [
        ("jit_42", "not jit_<number>"),
        ("JIT_7", "not jit_<number>"),
        ("pg_signal_backend", "pg_*"),
        ("public", "public"),
        ("None", "none"),
        ("", "cannot be used"),
        ("app_rw", "also a granted role"),
    ] {
        let err = error_of(&format!("{POSTGRES}objects_owner = \"{owner}\"\n"));
        assert!(
            err.message.contains(expected),
            "{owner}: expected {expected:?}, got {err}"
        );
    }
    let err = error_of(&elevation("objects_owner = \"jit_leftovers\"\n"));
    assert!(
        err.message
            .contains("objects_owner applies to mode = \"ephemeral\" only"),
        "{err}"
    );
    let err = error_of(&EXAMPLE.replace(
        "breakglass = true",
        "breakglass = true\nobjects_owner = \"x\"\nallow_superuser_admin = true",
    ));
    assert!(
        err.message
            .contains("objects_owner, allow_superuser_admin only apply to another provider"),
        "{err}"
    );
}

#[test]
fn a_single_admin_with_breakglass_is_warned_about() {
    let one = EXAMPLE.replace(
        r#"admins = { users = ["U0SECLEAD"], groups = ["S0SECURITY"] }"#,
        r#"admins = { users = ["U0SECLEAD"] }"#,
    );
    let warnings = parse(&one).unwrap().warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("prod-db") && warnings[0].contains("nobody can review it"));
    assert!(
        parse(EXAMPLE).unwrap().warnings().is_empty(),
        "an admin group"
    );
    let no_breakglass = one.replace("breakglass = true", "breakglass = false");
    assert!(parse(&no_breakglass).unwrap().warnings().is_empty());
}

/// Guests and people of other workspaces have only the rights the policy gives them by ID.
#[test]
fn outsiders_need_to_be_named() {
    struct Directory(Standing);
    impl Membership for Directory {
        fn is_member(&self, _: &SlackUserId, _: &SlackGroupId) -> bool {
            true
        }
        fn standing(&self, _: &SlackUserId) -> Standing {
            self.0
        }
    }
    let text = EXAMPLE.replace(
        "breakglass = true",
        "breakglass = true\nauto_approve = { max_duration = \"1h\" }",
    );
    let policy = parse(&text).unwrap();
    for standing in [Standing::Guest, Standing::External, Standing::Unknown] {
        let outsider = Directory(standing);
        // prod-db lets anyone request: not an outsider.
        let refusal = policy
            .evaluate("prod-db", &user("U0GUEST"), None, &outsider)
            .unwrap_err();
        assert!(matches!(refusal, Refusal::NotNamed { .. }), "{refusal:?}");
        assert!(refusal.to_string().contains(standing.describe()));
        // Groups give them nothing (aws-prod-readonly's requesters are a group).
        assert!(
            policy
                .evaluate("aws-prod-readonly", &user("U0GUEST"), None, &outsider)
                .is_err()
        );
        // Nor approver rights through a group.
        let aws = policy.resource("aws-prod-readonly").unwrap();
        assert!(!aws.approvers.includes(&user_id("U0SRE"), &outsider));
        assert!(aws.approvers.includes(&user_id("U0ALICE"), &outsider));
    }
    // Named by ID, a guest may request, but an open auto-approval rule does not cover them.
    let named = text.replace(
        "approvals_required = 2",
        "approvals_required = 2\nrequesters = { users = [\"U0GUEST\"] }",
    );
    let policy = parse(&named).unwrap();
    let e = policy
        .evaluate(
            "prod-db",
            &user("U0GUEST"),
            None,
            &Directory(Standing::Guest),
        )
        .unwrap();
    assert_eq!(e.route, Route::Approval);
    let member = policy
        .evaluate(
            "prod-db",
            &user("U0GUEST"),
            None,
            &Directory(Standing::Member),
        )
        .unwrap();
    assert_eq!(member.route, Route::Auto);
}

fn user_id(id: &str) -> SlackUserId {
    SlackUserId::parse(id).unwrap()
}

#[test]
fn pending_requests_per_requester_are_capped_by_default() {
    let policy = parse(EXAMPLE).unwrap();
    assert_eq!(
        policy.limits.max_pending_per_user,
        DEFAULT_MAX_PENDING_PER_USER
    );
    assert_eq!(DEFAULT_MAX_PENDING_PER_USER, 3);

    let set = format!("{EXAMPLE}\n[limits]\nmax_pending_per_user = 8\n");
    assert_eq!(parse(&set).unwrap().limits.max_pending_per_user, 8);

    let zero = format!("{EXAMPLE}\n[limits]\nmax_pending_per_user = 0\n");
    let err = error_of(&zero);
    let line = zero
        .lines()
        .position(|l| l.contains("max_pending_per_user = 0"))
        .unwrap()
        + 1;
    assert_eq!(err.line, line, "{err}");
    assert!(
        err.message
            .contains("limits.max_pending_per_user must be at least 1"),
        "{err}"
    );
}

const RULES: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[defaults]
justification = { min_length = 20, hint = "Say what you will change and why, with the incident." }
ticket = { required = true, pattern = "^(INC|CHG)-[0-9]+$", url = "https://tracker.example.com/browse/{ticket}" }

[[resource]]
id = "prod-db"
provider = "none"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }

[[resource]]
id = "staging"
provider = "none"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
justification = { pattern = "(?i)\\b(test|debug)\\b" }
ticket = { required = false }
"#;

#[test]
fn justification_and_ticket_rules_come_from_the_defaults_or_the_resource() {
    let policy = parse(RULES).unwrap();
    let prod = policy.resource("prod-db").unwrap();
    let id = &prod.id;
    assert_eq!(prod.justification.min_length, 20);
    assert!(prod.ticket.required);
    let short = prod.justification.check(id, "  fixing it  ").unwrap_err();
    assert_eq!(short.code, "justification_too_short");
    assert_eq!(
        short.message,
        "The justification for `prod-db` is too short: at least 20 characters, and it has 9. Say what you will change and why, with the incident."
    );
    prod.justification
        .check(id, "rotating the replica's certificate for INC-42")
        .unwrap();
    // A ticket is required: given, found in the text, or missing.
    let missing = prod.ticket.check(id, None).unwrap_err();
    assert_eq!(missing.code, "ticket_required");
    assert!(
        missing.message.contains("^(INC|CHG)-[0-9]+$"),
        "{}",
        missing.message
    );
    let wrong = prod.ticket.check(id, Some("JIRA-1")).unwrap_err();
    assert_eq!(wrong.code, "ticket_mismatch");
    prod.ticket.check(id, Some("CHG-7")).unwrap();
    assert_eq!(
        prod.ticket.find_in("rotating certs (INC-42), then CHG-7"),
        Some("INC-42".into()),
        "the first word that matches, without punctuation around it"
    );
    assert_eq!(prod.ticket.find_in("no ticket here INC-x"), None);
    assert_eq!(
        prod.ticket.link("INC-42").as_deref(),
        Some("https://tracker.example.com/browse/INC-42")
    );
    assert_eq!(
        prod.ticket.link("a b&c").as_deref(),
        Some("https://tracker.example.com/browse/a%20b%26c"),
        "the ticket is percent-encoded in the address"
    );
    // The resource's own rules replace the defaults.
    let staging = policy.resource("staging").unwrap();
    assert!(!staging.ticket.required && staging.ticket.url.is_none());
    assert_eq!(staging.justification.min_length, 0);
    let off = staging
        .justification
        .check(&staging.id, "just because")
        .unwrap_err();
    assert_eq!(off.code, "justification_mismatch");
    assert_eq!(
        off.message,
        "The justification for `staging` must match `(?i)\\b(test|debug)\\b`."
    );
    staging
        .justification
        .check(&staging.id, "Debug the cache")
        .unwrap();
    assert_eq!(staging.ticket.check(&staging.id, None), Ok(()));
    assert_eq!(
        prod.justification.describe().as_deref(),
        Some("at least 20 characters. Say what you will change and why, with the incident.")
    );
    assert_eq!(
        prod.ticket.describe().as_deref(),
        Some("required, matching `^(INC|CHG)-[0-9]+$`")
    );
    assert_eq!(staging.ticket.describe(), None);
}

#[test]
fn bad_rules_are_refused_with_their_place() {
    for (rule, expected) in [
        (
            r#"ticket = { pattern = "([a-z" }"#,
            "ticket.pattern: `([a-z` is not a valid regular expression",
        ),
        (
            r#"ticket = { url = "https://tracker.example.com/browse/" }"#,
            "must be an http(s) address with `{ticket}`",
        ),
        (
            r#"ticket = { url = "javascript:alert({ticket})" }"#,
            "must be an http(s) address",
        ),
        (
            r#"justification = { min_length = 5000 }"#,
            "justification.min_length 5000 is longer than a justification may be (2000)",
        ),
        (
            r#"justification = { minimum = 3 }"#,
            "unknown field `minimum`",
        ),
    ] {
        let text = format!(
            "[slack]\naudit_channel = \"C0AUDIT\"\nadmins = {{ users = [\"U0A\"] }}\n\n[[resource]]\nid = \"db\"\nprovider = \"none\"\napprovers = {{ channel = \"C0APPROVALS\", users = [\"U0ALICE\"] }}\n{rule}\n"
        );
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains(expected), "{rule}: {err}");
        assert!(
            err.line >= 5,
            "{rule}: the error names the resource's place: {err}"
        );
    }
}

#[test]
fn webhooks_are_validated_and_match_event_families() {
    let base = "[slack]\naudit_channel = \"C0AUDIT\"\nadmins = { users = [\"U0A\"] }\n";
    let policy = parse(&format!(
        "{base}\n[[webhook]]\nurl = \"https://siem.example.com/jit\"\nevents = [\"request.*\", \"grant.torn_down\"]\nsecret_env = \"SIEM_SECRET\"\n"
    ))
    .unwrap();
    let hook = &policy.webhooks()[0];
    assert!(hook.wants("request.approved") && hook.wants("grant.torn_down"));
    assert!(!hook.wants("grant.granted") && !hook.wants("requested.x"));
    for (webhook, expected) in [
        (
            "url = \"http://siem.example.com/jit\"\nevents = [\"*\"]\nsecret_env = \"S\"",
            "must be https://",
        ),
        (
            "url = \"http://127.0.0.1.evil.example/x\"\nevents = [\"*\"]\nsecret_env = \"S\"",
            "must be https://",
        ),
        (
            "url = \"https://a.example/x\"\nevents = []\nsecret_env = \"S\"",
            "events must name at least one",
        ),
        (
            "url = \"https://a.example/x\"\nevents = [\"grants.*\"]\nsecret_env = \"S\"",
            "`grants.*` is not `*`, `family.*` or `family.event`",
        ),
        (
            "url = \"https://a.example/x\"\nevents = [\"*\"]\nsecret_env = \"not a name\"",
            "must name an environment variable",
        ),
    ] {
        let err = parse(&format!("{base}\n[[webhook]]\n{webhook}\n")).unwrap_err();
        assert!(err.message.contains(expected), "{webhook}: {err}");
    }
    let loopback = parse(&format!(
        "{base}\n[[webhook]]\nurl = \"http://127.0.0.1:9000/hook\"\nevents = [\"*\"]\nsecret_env = \"S\"\n"
    ))
    .unwrap();
    assert!(loopback.webhooks()[0].wants("system.job_dead"));
}

#[test]
fn a_start_may_be_at_most_max_start_ahead_away_and_never_past() {
    let utc = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let now = utc("2026-11-23T14:00:00Z");
    // The default is 7 days; `[defaults]` and a resource may set their own.
    let policy = parse(EXAMPLE).unwrap();
    let aws = policy.resource("aws-prod-readonly").unwrap();
    assert_eq!(aws.max_start_ahead, d("7d"));
    assert!(
        policy
            .check_start(aws, now, utc("2026-11-30T14:00:00Z"))
            .is_ok()
    );
    let far = policy
        .check_start(aws, now, utc("2026-11-30T14:00:01Z"))
        .unwrap_err();
    assert!(matches!(far, Refusal::StartTooFar { .. }));
    assert_eq!(
        far.to_string(),
        "`aws-prod-readonly` may be scheduled at most 7d (7 days) ahead; the start you asked for (2026-11-30 14:00 UTC) is 7 days 1 minute from now."
    );
    for past in [
        "2026-11-23T14:00:00Z",
        "2026-11-23T13:59:59Z",
        "2025-01-01T00:00:00Z",
    ] {
        let refusal = policy.check_start(aws, now, utc(past)).unwrap_err();
        assert!(matches!(refusal, Refusal::StartPassed { .. }), "{past}");
        assert!(
            refusal.to_string().contains("has already passed"),
            "{refusal}"
        );
    }
    let set = EXAMPLE
        .replace(
            "pending_timeout = \"30m\"",
            "pending_timeout = \"30m\"\nmax_start_ahead = \"2d\"",
        )
        .replace(
            "max_duration = \"8h\"",
            "max_duration = \"8h\"\nmax_start_ahead = \"12h\"",
        );
    let policy = parse(&set).unwrap();
    assert_eq!(
        policy
            .resource("aws-prod-readonly")
            .unwrap()
            .max_start_ahead,
        d("2d")
    );
    let db = policy.resource("prod-db").unwrap();
    assert_eq!(db.max_start_ahead, d("12h"));
    assert!(
        policy
            .check_start(db, now, utc("2026-11-24T02:00:00Z"))
            .is_ok()
    );
    assert!(
        policy
            .check_start(db, now, utc("2026-11-24T02:01:00Z"))
            .is_err()
    );
    // `jit policy check` refuses a reach beyond a year, and a value that is not a duration.
    let too_far = EXAMPLE.replace(
        "max_duration = \"8h\"",
        "max_duration = \"8h\"\nmax_start_ahead = \"366d\"",
    );
    assert!(
        error_of(&too_far)
            .message
            .contains("max_start_ahead 366d is too far"),
        "{}",
        error_of(&too_far).message
    );
    let junk = EXAMPLE.replace(
        "max_duration = \"8h\"",
        "max_duration = \"8h\"\nmax_start_ahead = \"soon\"",
    );
    assert!(
        error_of(&junk).message.contains("`soon` is not a duration"),
        "{}",
        error_of(&junk).message
    );
}
/// The example with `prod-db`'s approvers table and escalation replaced.
fn with_escalation(prod_db: &str, defaults: &str) -> String {
    EXAMPLE
        .replace(
            "pending_timeout = \"30m\"",
            &format!("pending_timeout = \"30m\"\n{defaults}"),
        )
        .replace(
            "approvals_required = 2\nbreakglass = true",
            &format!("approvals_required = 2\nbreakglass = true\n{prod_db}"),
        )
}

#[test]
fn the_default_escalation_is_the_half_time_nudge() {
    let policy = parse(EXAMPLE).unwrap();
    let db = policy.resource("prod-db").unwrap();
    assert_eq!(
        db.escalate,
        [EscalationStep {
            after: GrantDuration::from_mins(15),
            to: None
        }]
    );
    assert!(db.escalate_is_default);
    assert_eq!(db.approvers.notify, Notify::Channel);
    // Deciders never grow with a plain reminder.
    assert_eq!(db.deciders(1), db.deciders(0));
}

#[test]
fn escalation_steps_parse_and_widen_who_may_decide_step_by_step() {
    let text = with_escalation(
        r#"escalate = [
  { after = "10m", to = { users = ["U0MGR"], groups = ["S0LEADS"] } },
  { after = "20m", to = { channel = "C0ONCALL", users = ["U0MGR", "U0CTO"] } },
  { after = "25m" },
]"#,
        "",
    );
    let policy = parse(&text).unwrap();
    let db = policy.resource("prod-db").unwrap();
    assert!(!db.escalate_is_default);
    assert_eq!(db.escalate.len(), 3);
    assert_eq!(db.escalate[0].after, GrantDuration::from_mins(10));
    let second = db.escalate[1].to.as_ref().unwrap();
    assert_eq!(second.channel.as_ref().unwrap().as_str(), "C0ONCALL");
    assert!(db.escalate[2].to.is_none());

    let ids = |v: Vec<SlackUserId>| v.iter().map(|u| u.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(db.deciders(0).0), ["U0ALICE", "U0BOB"]);
    assert_eq!(ids(db.deciders(1).0), ["U0ALICE", "U0BOB", "U0MGR"]);
    // Deduplicated across steps.
    assert_eq!(
        ids(db.deciders(2).0),
        ["U0ALICE", "U0BOB", "U0MGR", "U0CTO"]
    );
    assert_eq!(db.deciders(1).1.len(), 1);
    assert_eq!(db.all_decider_groups().len(), 1);

    // The manager may decide only once step 1 ran; a lead through the group likewise.
    let dev = user("U0DEV");
    let mgr = user_id("U0MGR");
    let lead = user_id("U0LEAD");
    let groups = Groups(vec![("S0LEADS", "U0LEAD")]);
    assert_eq!(
        policy.may_decide(db, &dev, &mgr, 0, &groups),
        Err(DecisionRefusal::NotAnApprover)
    );
    assert_eq!(policy.may_decide(db, &dev, &mgr, 1, &groups), Ok(()));
    assert_eq!(
        policy.may_decide(db, &dev, &lead, 0, &groups),
        Err(DecisionRefusal::NotAnApprover)
    );
    assert_eq!(policy.may_decide(db, &dev, &lead, 1, &groups), Ok(()));
    // A guest in the group gains nothing; the requester never decides, escalated or not.
    assert_eq!(
        policy.may_decide(db, &dev, &lead, 3, &GuestsToo(&groups)),
        Err(DecisionRefusal::NotAnApprover)
    );
    assert_eq!(
        policy.may_decide(db, &user("U0MGR"), &mgr, 3, &groups),
        Err(DecisionRefusal::OwnRequest)
    );
}

/// Everyone is a guest: group membership grants nothing.
struct GuestsToo<'a>(&'a Groups);

impl Membership for GuestsToo<'_> {
    fn is_member(&self, user: &SlackUserId, group: &SlackGroupId) -> bool {
        self.0.is_member(user, group)
    }
    fn standing(&self, _: &SlackUserId) -> Standing {
        Standing::Guest
    }
}

#[test]
fn escalation_and_notify_come_from_the_defaults_unless_the_resource_sets_its_own() {
    let text = with_escalation(
        "approvers_notify_placeholder",
        "escalate = [{ after = \"5m\", to = { users = [\"U0MGR\"] } }]\napprovers_notify = \"both\"",
    )
    .replace("approvers_notify_placeholder", "escalate = []")
    .replace(
        "approvers = { channel = \"C0APPROVALS\", users = [\"U0ALICE\", \"U0BOB\"] }",
        "approvers = { channel = \"C0APPROVALS\", users = [\"U0ALICE\", \"U0BOB\"], notify = \"dm\" }",
    );
    let policy = parse(&text).unwrap();
    let aws = policy.resource("aws-prod-readonly").unwrap();
    assert_eq!(aws.escalate.len(), 1);
    assert_eq!(aws.approvers.notify, Notify::Both);
    let db = policy.resource("prod-db").unwrap();
    assert!(db.escalate.is_empty(), "escalate = [] turns it off");
    assert!(!db.escalate_is_default);
    assert_eq!(db.approvers.notify, Notify::Dm);
    assert!(!db.approvers.notify.in_channel() && db.approvers.notify.by_dm());
}

#[test]
fn bad_escalation_and_notify_are_refused_with_clear_errors() {
    let cases = [
        (
            with_escalation(
                "escalate = [{ after = \"20m\" }, { after = \"10m\", to = { users = [\"U0MGR\"] } }]",
                "",
            ),
            "resource `prod-db`: escalate step 2 (after 10m) must come later than step 1 (after 20m)",
        ),
        (
            with_escalation("escalate = [{ after = \"10m\" }, { after = \"10m\" }]", ""),
            "escalate step 2 (after 10m) must come later than step 1 (after 10m)",
        ),
        (
            with_escalation("escalate = [{ after = \"30m\" }]", ""),
            "escalate step 1 (after 30m) comes at or after pending_timeout (30m)",
        ),
        (
            with_escalation("escalate = [{ after = \"0s\" }]", ""),
            "`0s` is zero; a duration must be positive",
        ),
        (
            with_escalation("escalate = [{ after = \"5m\", to = {} }]", ""),
            "escalate step 1: `to` names nobody",
        ),
        (
            with_escalation("escalate = [{ after = \"5m\", too = {} }]", ""),
            "unknown field `too`",
        ),
        (
            with_escalation(
                "escalate = [{ after = \"5m\", to = { user = [\"U0MGR\"] } }]",
                "",
            ),
            "unknown field `user`",
        ),
        (
            with_escalation(
                "escalate = [{ after = \"5m\", to = { users = [\"bob\"] } }]",
                "",
            ),
            "bob",
        ),
        (
            // A default that does not fit a resource's own, shorter pending timeout.
            with_escalation(
                "pending_timeout = \"10m\"",
                "escalate = [{ after = \"15m\", to = { users = [\"U0MGR\"] } }]",
            ),
            "resource `prod-db`: escalate (from [defaults]) step 1 (after 15m) comes at or after pending_timeout (10m)",
        ),
        (
            with_escalation(
                &format!(
                    "escalate = [{}]",
                    (1..=11)
                        .map(|m| format!("{{ after = \"{m}m\" }}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "",
            ),
            "escalate has 11 steps; at most 10 are allowed",
        ),
        (
            with_escalation("", "approvers_notify = \"email\""),
            "unknown variant `email`",
        ),
        (
            EXAMPLE.replace(
                "users = [\"U0ALICE\", \"U0BOB\"] }",
                "users = [\"U0ALICE\", \"U0BOB\"], notify = \"sms\" }",
            ),
            "unknown variant `sms`, expected one of `channel`, `dm`, `both`",
        ),
    ];
    for (text, expected) in cases {
        let err = parse(&text).expect_err(expected).to_string();
        assert!(err.contains(expected), "{err} should contain {expected}");
    }
}

#[test]
fn the_channel_may_be_left_out_only_when_approvers_are_asked_by_dm() {
    let dm_only = EXAMPLE.replace(
        "approvers = { channel = \"C0APPROVALS\", users = [\"U0ALICE\", \"U0BOB\"] }",
        "approvers = { users = [\"U0ALICE\", \"U0BOB\"], notify = \"dm\" }",
    );
    let policy = parse(&dm_only).unwrap();
    let db = policy.resource("prod-db").unwrap();
    assert_eq!(db.approvers.channel, None);
    assert_eq!(db.approvers.notify, Notify::Dm);

    // By the default too.
    let by_default = EXAMPLE
        .replace(
            "approvers = { channel = \"C0APPROVALS\", users = [\"U0ALICE\", \"U0BOB\"] }",
            "approvers = { users = [\"U0ALICE\", \"U0BOB\"] }",
        )
        .replace(
            "pending_timeout = \"30m\"",
            "pending_timeout = \"30m\"\napprovers_notify = \"dm\"",
        );
    assert_eq!(
        parse(&by_default)
            .unwrap()
            .resource("prod-db")
            .unwrap()
            .approvers
            .channel,
        None
    );

    for notify in ["", ", notify = \"channel\"", ", notify = \"both\""] {
        let text = EXAMPLE.replace(
            "approvers = { channel = \"C0APPROVALS\", users = [\"U0ALICE\", \"U0BOB\"] }",
            &format!("approvers = {{ users = [\"U0ALICE\", \"U0BOB\"]{notify} }}"),
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains(
                "resource `prod-db`: approvers needs a channel, where the request is posted"
            ),
            "{err}"
        );
    }
}

/// On call in the given schedules, or unable to tell.
struct Rota {
    on_call: Vec<(&'static str, &'static str)>,
    unknown: Option<&'static str>,
    groups: Vec<(&'static str, &'static str)>,
}

impl Membership for Rota {
    fn is_member(&self, user: &SlackUserId, group: &SlackGroupId) -> bool {
        self.groups
            .iter()
            .any(|(g, u)| *g == group.as_str() && *u == user.as_str())
    }

    fn on_call(&self, user: &SlackUserId, schedules: &[String]) -> OnCall {
        if let Some(why) = self.unknown {
            return OnCall::Unknown { why: why.into() };
        }
        match self
            .on_call
            .iter()
            .find(|(s, u)| *u == user.as_str() && schedules.iter().any(|x| x == s))
        {
            Some((s, _)) => OnCall::Yes {
                schedule: (*s).into(),
            },
            None => OnCall::No,
        }
    }
}

fn oncall_policy(rule: &str) -> Result<Policy, PolicyError> {
    parse(&format!(
        r#"
[slack]
audit_channel = "C0AUDIT"
admins = {{ users = ["U0SECLEAD", "U0OTHER"] }}

[[resource]]
id = "prod"
provider = "none"
max_duration = "4h"
approvers = {{ channel = "C0APPROVALS", users = ["U0ALICE"] }}
auto_approve = {rule}
"#
    ))
}

#[test]
fn oncall_rules_are_validated() {
    let policy = oncall_policy(
        r#"{ max_duration = "2h", oncall = { pagerduty_schedules = ["PABC123", "P123"] } }"#,
    )
    .unwrap();
    let rule = policy
        .resource("prod")
        .unwrap()
        .auto_approve
        .clone()
        .unwrap();
    assert_eq!(
        rule.oncall,
        Some(OnCallRule {
            pagerduty_schedules: vec!["PABC123".into(), "P123".into()]
        })
    );
    assert_eq!(policy.oncall_schedules(), vec!["P123", "PABC123"]);

    let empty = oncall_policy(r#"{ max_duration = "2h", oncall = { pagerduty_schedules = [] } }"#)
        .unwrap_err();
    assert!(
        empty.message.contains("at least one PagerDuty schedule ID"),
        "{empty}"
    );
    for bad in [
        "primary-oncall",
        "pabc123",
        "https://x.pagerduty.com/schedules/PABC123",
        "XABC123",
    ] {
        let err = oncall_policy(&format!(
            r#"{{ max_duration = "2h", oncall = {{ pagerduty_schedules = ["{bad}"] }} }}"#
        ))
        .unwrap_err();
        assert!(
            err.message.contains("is not a PagerDuty schedule ID") && err.message.contains(bad),
            "{bad}: {err}"
        );
    }
    let twice = oncall_policy(
        r#"{ max_duration = "2h", oncall = { pagerduty_schedules = ["PA1", "PA1"] } }"#,
    )
    .unwrap_err();
    assert!(twice.message.contains("`PA1` twice"), "{twice}");
    let missing = oncall_policy(r#"{ max_duration = "2h", oncall = { } }"#).unwrap_err();
    assert!(missing.message.contains("pagerduty_schedules"), "{missing}");
    let unknown = oncall_policy(
        r#"{ max_duration = "2h", oncall = { pagerduty_schedules = ["PA1"], opsgenie = ["x"] } }"#,
    )
    .unwrap_err();
    assert!(unknown.message.contains("opsgenie"), "{unknown}");
}

#[test]
fn oncall_people_alone_are_approved_by_policy() {
    let policy = oncall_policy(
        r#"{ max_duration = "2h", oncall = { pagerduty_schedules = ["PDAY", "PNIGHT"] } }"#,
    )
    .unwrap();
    let rota = Rota {
        on_call: vec![("PNIGHT", "U0BOB")],
        unknown: None,
        groups: vec![],
    };
    let bob = policy
        .evaluate("prod", &user("U0BOB"), Some(d("1h")), &rota)
        .unwrap();
    assert_eq!(bob.route, Route::Auto);
    assert_eq!(bob.on_call_schedule(), Some("PNIGHT"));
    assert_eq!(bob.on_call_note(), None);

    // Not on call: with `oncall` and nobody else named, not everyone qualifies.
    let carol = policy
        .evaluate("prod", &user("U0CAROL"), Some(d("1h")), &rota)
        .unwrap();
    assert_eq!(carol.route, Route::Approval);
    assert_eq!(carol.on_call, Some(OnCall::No));
    assert_eq!(carol.on_call_note(), None);

    // On call, but longer than the rule allows.
    let long = policy
        .evaluate("prod", &user("U0BOB"), Some(d("3h")), &rota)
        .unwrap();
    assert_eq!(long.route, Route::Approval);
    assert_eq!(long.on_call, None);

    // Cannot tell: fails closed, with a note for the approvers.
    let down = Rota {
        on_call: vec![("PNIGHT", "U0BOB")],
        unknown: Some("PagerDuty could not be reached"),
        groups: vec![],
    };
    let blind = policy
        .evaluate("prod", &user("U0BOB"), Some(d("1h")), &down)
        .unwrap();
    assert_eq!(blind.route, Route::Approval);
    assert_eq!(blind.on_call_schedule(), None);
    let note = blind.on_call_note().unwrap();
    assert!(note.contains("PagerDuty could not be reached"), "{note}");

    // The default Membership knows no on-call source: fails closed too.
    let none = policy
        .evaluate("prod", &user("U0BOB"), Some(d("1h")), &NoGroups)
        .unwrap();
    assert_eq!(none.route, Route::Approval);
    assert!(matches!(none.on_call, Some(OnCall::Unknown { .. })));
}

#[test]
fn oncall_adds_to_the_people_a_rule_names() {
    let policy = oncall_policy(
        r#"{ max_duration = "2h", groups = ["S0SRE"], oncall = { pagerduty_schedules = ["PDAY"] } }"#,
    )
    .unwrap();
    let rota = Rota {
        on_call: vec![("PDAY", "U0BOB")],
        unknown: None,
        groups: vec![("S0SRE", "U0SRE")],
    };
    let sre = policy
        .evaluate("prod", &user("U0SRE"), Some(d("1h")), &rota)
        .unwrap();
    assert_eq!(sre.route, Route::Auto);
    assert_eq!(sre.on_call, None, "the group qualifies without asking");
    let bob = policy
        .evaluate("prod", &user("U0BOB"), Some(d("1h")), &rota)
        .unwrap();
    assert_eq!(bob.route, Route::Auto);
    assert_eq!(bob.on_call_schedule(), Some("PDAY"));
    let carol = policy
        .evaluate("prod", &user("U0CAROL"), Some(d("1h")), &rota)
        .unwrap();
    assert_eq!(carol.route, Route::Approval);
}

#[test]
fn pagerduty_ids_have_their_shape() {
    for good in ["P123", "PABC123", "P0Z9"] {
        assert!(is_pagerduty_id(good), "{good}");
    }
    for bad in [
        "",
        "P",
        "ABC123",
        "Pabc",
        "P-1",
        "P 1",
        "PAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert!(!is_pagerduty_id(bad), "{bad}");
    }
}

#[test]
fn oncall_extensions_count_the_whole_grant() {
    let policy =
        oncall_policy(r#"{ max_duration = "2h", oncall = { pagerduty_schedules = ["PDAY"] } }"#)
            .unwrap();
    let rota = Rota {
        on_call: vec![("PDAY", "U0BOB")],
        unknown: None,
        groups: vec![],
    };
    let within = policy
        .evaluate_extension("prod", &user("U0BOB"), d("30m"), d("1h"), &rota)
        .unwrap();
    assert_eq!(within.route, Route::Auto);
    assert_eq!(within.on_call_schedule(), Some("PDAY"));
    let beyond = policy
        .evaluate_extension("prod", &user("U0BOB"), d("90m"), d("1h"), &rota)
        .unwrap();
    assert_eq!(beyond.route, Route::Approval);
    assert_eq!(beyond.on_call, None);
    let down = Rota {
        on_call: vec![],
        unknown: Some("PagerDuty could not be reached"),
        groups: vec![],
    };
    let beyond_blind = policy
        .evaluate_extension("prod", &user("U0BOB"), d("90m"), d("1h"), &down)
        .unwrap();
    assert_eq!(
        beyond_blind.on_call_note(),
        None,
        "no note when the rule could not have applied anyway"
    );
}

const IDENTITY_CENTER: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "aws-admin"
description = "Admin"
provider = "aws_identity_center"
instance_arn = "arn:aws:sso:::instance/ssoins-1234567890abcdef"
identity_store_id = "d-1234567890"
portal_url = "https://d-1234567890.awsapps.com/start"
permission_set_arn = "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-1234567890abcdef"
account_id = ["111111111111", "222222222222"]
principals = { U0ALICE = "alice@corp.example" }
session_duration = "1h"
region = "eu-west-1"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }

[[identity]]
name = "ci"
owner = { users = ["U0ALICE"] }
resources = ["aws-admin.222222222222"]
"#;

#[test]
fn identity_center_accounts_become_one_resource_each() {
    let policy = parse(IDENTITY_CENTER).unwrap();
    let ids: Vec<&str> = policy.resources().iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["aws-admin.111111111111", "aws-admin.222222222222"]);
    let second = policy.resource("aws-admin.222222222222").unwrap();
    assert_eq!(second.description, "Admin (account 222222222222)");
    assert_eq!(second.approvers.users.len(), 1, "the rules are inherited");
    let ProviderConfig::AwsIdentityCenter(c) = &second.provider else {
        panic!("{:?}", second.provider)
    };
    assert_eq!(
        c.target,
        IdentityCenterTarget::Account {
            account_id: "222222222222".into(),
            permission_set_arn:
                "arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-1234567890abcdef".into(),
        }
    );
    assert_eq!(c.region.as_deref(), Some("eu-west-1"));
    assert_eq!(c.session_duration, Some(d("1h")));
    assert!(c.warnings().is_empty());
    // The base id is no resource any more.
    assert!(policy.resource("aws-admin").is_none());
    let err = error_of(&IDENTITY_CENTER.replace(
        "resources = [\"aws-admin.222222222222\"]",
        "resources = [\"aws-admin\"]",
    ));
    assert!(err.message.contains("not declared"), "{err}");

    // One account: the resource as written.
    let one = IDENTITY_CENTER.replace(
        "account_id = [\"111111111111\", \"222222222222\"]",
        "account_id = \"111111111111\"",
    );
    let one = one.replace("aws-admin.222222222222", "aws-admin");
    let policy = parse(&one).unwrap();
    assert_eq!(policy.resources().len(), 1);
    assert_eq!(policy.resources()[0].id.as_str(), "aws-admin");
}

#[test]
fn identity_center_keys_are_checked() {
    let cases = [
        (
            "account_id = [\"111111111111\", \"222222222222\"]",
            "account_id = \"1234\"",
            "12 digits",
        ),
        (
            "account_id = [\"111111111111\", \"222222222222\"]",
            "account_id = [\"111111111111\", \"111111111111\"]",
            "twice",
        ),
        (
            "account_id = [\"111111111111\", \"222222222222\"]",
            "account_id = []",
            "needs account_id",
        ),
        (
            "portal_url = \"https://d-1234567890.awsapps.com/start\"\n",
            "",
            "needs portal_url",
        ),
        (
            "instance_arn = \"arn:aws:sso:::instance/ssoins-1234567890abcdef\"",
            "instance_arn = \"ssoins-1\"",
            "instance ARN",
        ),
        (
            "session_duration = \"1h\"",
            "session_duration = \"13h\"",
            "between 1h and 12h",
        ),
        (
            "U0ALICE = \"alice@corp.example\"",
            "alice = \"alice@corp.example\"",
            "Slack user ID",
        ),
        (
            "region = \"eu-west-1\"",
            "region = \"eu-west-1\"\ngroup_id = \"g-1\"",
            "not both",
        ),
        (
            "provider = \"aws_identity_center\"",
            "provider = \"aws_sts\"\nrole_arn = \"arn:aws:iam::123456789012:role/r\"",
            "only apply to another provider",
        ),
    ];
    for (from, to, expected) in cases {
        let text = IDENTITY_CENTER.replace(from, to);
        assert_ne!(text, IDENTITY_CENTER, "{from}");
        let err = error_of(&text);
        assert!(err.message.contains(expected), "{to}: {err}");
    }
    // Group mode.
    let group = IDENTITY_CENTER
        .replace("account_id = [\"111111111111\", \"222222222222\"]\n", "group_id = \"g-1\"\n")
        .replace("permission_set_arn = \"arn:aws:sso:::permissionSet/ssoins-1234567890abcdef/ps-1234567890abcdef\"\n", "")
        .replace("session_duration = \"1h\"\n", "")
        .replace("aws-admin.222222222222", "aws-admin");
    let policy = parse(&group).unwrap();
    let ProviderConfig::AwsIdentityCenter(c) = &policy.resources()[0].provider else {
        panic!()
    };
    assert_eq!(
        c.target,
        IdentityCenterTarget::Group {
            group_id: "g-1".into()
        }
    );
    assert_eq!(c.warnings().len(), 1);
}

const OKTA: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "okta-admins"
provider = "okta_group"
group_id = "00g1a2b3c4d5e6f7g8h9"
api_token_env = "OKTA_API_TOKEN"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

fn okta(extra: &str) -> Result<Policy, PolicyError> {
    parse(&format!("{OKTA}{extra}"))
}

#[test]
fn okta_group_takes_an_https_org_a_group_id_and_a_token_variable() {
    let policy = okta(
        "org_url = \"https://example.okta.com/\"\nprincipals = { U0BOB = \"robert@example.com\" }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ProviderConfig::OktaGroup(c) = &policy.resource("okta-admins").unwrap().provider else {
        panic!("okta_group expected");
    };
    assert_eq!(c.org_url, "https://example.okta.com");
    assert_eq!(c.group_id, "00g1a2b3c4d5e6f7g8h9");
    assert_eq!(
        c.auth,
        OktaAuth::ApiToken {
            env: "OKTA_API_TOKEN".into()
        }
    );
    assert_eq!(c.principals["U0BOB"], "robert@example.com");
    // A test double on this machine may be plain http.
    assert!(okta("org_url = \"http://127.0.0.1:8080\"\n").is_ok());

    for (extra, expected) in [
        ("", "needs org_url"),
        (
            "org_url = \"http://example.okta.com\"\n",
            "must be an https:// URL",
        ),
        (
            "org_url = \"https://example.okta.com/api/v1\"\n",
            "the org's address only",
        ),
        (
            "org_url = \"https://example.okta.com\"\nprincipals = { alice = \"a@example.com\" }\n",
            "neither a Slack user ID",
        ),
        (
            "org_url = \"https://example.okta.com\"\nroles = [\"x\"]\n",
            "roles only apply to another provider",
        ),
    ] {
        let err = okta(extra).unwrap_err().to_string();
        assert!(err.contains(expected), "{extra:?}: {err}");
    }
    let bad_group = OKTA.replace("00g1a2b3c4d5e6f7g8h9", "00g/../users");
    let err = parse(&format!(
        "{bad_group}org_url = \"https://example.okta.com\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("not an Okta group ID"), "{err}");
    let oauth = OKTA.replace(
        "api_token_env = \"OKTA_API_TOKEN\"",
        "client_id = \"0oa1b2c3\"\nprivate_key_env = \"OKTA_PRIVATE_KEY\"\nkey_id = \"k1\"",
    );
    let policy = parse(&format!("{oauth}org_url = \"https://example.okta.com\"\n")).unwrap();
    let ProviderConfig::OktaGroup(c) = &policy.resource("okta-admins").unwrap().provider else {
        panic!("okta_group expected");
    };
    assert_eq!(c.secret_env(), "OKTA_PRIVATE_KEY");
    assert!(
        matches!(&c.auth, OktaAuth::PrivateKey { client_id, key_id: Some(k), .. } if client_id == "0oa1b2c3" && k == "k1")
    );
    let err = parse(&format!(
        "{OKTA}org_url = \"https://example.okta.com\"\nclient_id = \"0oa1\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("not a mix"), "{err}");
    let reserved = OKTA.replace("OKTA_API_TOKEN", "SLACK_BOT_TOKEN");
    let err = parse(&format!(
        "{reserved}org_url = \"https://example.okta.com\"\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("api_token_env"), "{err}");
}

#[test]
fn exec_commands_may_not_see_an_okta_token() {
    let text = format!(
        "{OKTA}org_url = \"https://example.okta.com\"\n\n[[resource]]\nid = \"script\"\nprovider = \"exec\"\ngrant_command = [\"./g\"]\nrevoke_command = [\"./r\"]\nenv = [\"OKTA_API_TOKEN_FILE\"]\napprovers = {{ channel = \"C0APPROVALS\", users = [\"U0ALICE\"] }}\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("Okta API token"), "{err}");
}
