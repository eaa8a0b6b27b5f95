//! A stateful fake of the part of Okta's management API jit uses, served over HTTP on
//! 127.0.0.1, so tests drive the provider's real client code. Included by the test binaries
//! that need it (`#[path]`).
//!
//! It keeps users (id, login, email), groups (id, name, type) and memberships; checks the
//! `Authorization: SSWS <token>` header; pages a user's groups (`limit`, `after`, `Link:
//! rel="next"`; two per page by default, so paging is always exercised); answers every call
//! with `X-Rate-Limit-*` headers of a configurable limit per window, and 429 past it. OAuth 2.0
//! client credentials: `/oauth2/v1/token` checks a `private_key_jwt` assertion (RS256 or ES256)
//! against the public key registered for the client, and the scopes, and issues access tokens
//! the API then accepts as `Bearer`. Faults:
//! the next N calls answer 500; the next PUT applies the membership and then never answers;
//! a DELETE is followed by an outside re-add of the member. Every call is recorded.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

pub const TOKEN: &str = "fake-okta-token-5ec2e7";

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub status: u16,
    pub at: SystemTime,
}

#[derive(Debug, Clone)]
struct User {
    id: String,
    login: String,
    email: String,
}

#[derive(Debug, Clone)]
struct Group {
    name: String,
    kind: String,
}

#[derive(Default)]
struct Window {
    started: u64,
    used: u32,
}

#[derive(Default)]
struct Inner {
    users: Vec<User>,
    groups: BTreeMap<String, Group>,
    /// (group id, user id)
    members: BTreeSet<(String, String)>,
    calls: Vec<Call>,
    page_size: usize,
    /// Calls per window of `window_secs`.
    limit: Option<(u32, u64)>,
    window: Window,
    fail_next: u32,
    throttle_next: u32,
    hang_next_put: bool,
    readd_after_delete: bool,
    /// client id → (public key, alg)
    clients: BTreeMap<String, (Vec<u8>, String)>,
    access_tokens: BTreeSet<String>,
    issued: u32,
}

#[derive(Clone)]
pub struct FakeOkta {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&segment[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn okta_error(status: StatusCode, code: &str, summary: &str) -> Response {
    json(
        status,
        serde_json::json!({"errorCode": code, "errorSummary": summary, "errorCauses": []}),
    )
}

fn empty(status: StatusCode) -> Response {
    Response::builder()
        .status(status)
        .body(Body::empty())
        .unwrap()
}

impl FakeOkta {
    pub async fn start() -> FakeOkta {
        let inner = Arc::new(Mutex::new(Inner {
            page_size: 2,
            ..Inner::default()
        }));
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeOkta {
            url: format!("http://{addr}"),
            inner,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    pub fn add_user(&self, id: &str, login: &str) {
        self.lock().users.push(User {
            id: id.into(),
            login: login.into(),
            email: login.into(),
        });
    }

    pub fn add_group(&self, id: &str, name: &str) {
        self.add_group_of_type(id, name, "OKTA_GROUP");
    }

    pub fn add_group_of_type(&self, id: &str, name: &str, kind: &str) {
        self.lock().groups.insert(
            id.into(),
            Group {
                name: name.into(),
                kind: kind.into(),
            },
        );
    }

    /// Membership made outside jit.
    pub fn add_member(&self, group: &str, user: &str) {
        self.lock().members.insert((group.into(), user.into()));
    }

    pub fn is_member(&self, group: &str, user: &str) -> bool {
        self.lock().members.contains(&(group.into(), user.into()))
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls with `method` whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method && c.path.starts_with(prefix))
            .count()
    }

    /// At most `calls` per window of `secs` seconds; beyond it, 429.
    pub fn rate_limit(&self, calls: u32, secs: u64) {
        let mut inner = self.lock();
        inner.limit = Some((calls, secs));
        inner.window = Window {
            started: now_secs(),
            used: 0,
        };
    }

    /// The next `n` calls answer 500.
    pub fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    /// The next `n` calls answer 429, with a reset one second ahead.
    pub fn throttle_next(&self, n: u32) {
        self.lock().throttle_next = n;
    }

    /// The next PUT adds the member and then never answers.
    pub fn hang_next_put(&self) {
        self.lock().hang_next_put = true;
    }

    /// An OAuth service app with this public key (`RS256`: the RSAPublicKey DER; `ES256`: the
    /// uncompressed P-256 point).
    pub fn add_client(&self, client_id: &str, public_key: &[u8], alg: &str) {
        self.lock()
            .clients
            .insert(client_id.into(), (public_key.to_vec(), alg.into()));
    }

    /// Every access token issued so far stops working (expired or revoked early).
    pub fn expire_access_tokens(&self) {
        self.lock().access_tokens.clear();
    }

    /// Something outside jit adds the member back after every DELETE.
    pub fn readd_after_delete(&self) {
        self.lock().readd_after_delete = true;
    }
}

/// The rate-limit headers of this call, or a 429.
fn rate(inner: &mut Inner) -> (Option<(u32, u32, u64)>, bool) {
    if inner.throttle_next > 0 {
        inner.throttle_next -= 1;
        return (Some((600, 0, now_secs() + 1)), true);
    }
    let Some((limit, secs)) = inner.limit else {
        return (Some((600, 599, now_secs() + 60)), false);
    };
    let now = now_secs();
    if now >= inner.window.started + secs {
        inner.window = Window {
            started: now,
            used: 0,
        };
    }
    let reset = inner.window.started + secs;
    if inner.window.used >= limit {
        return (Some((limit, 0, reset)), true);
    }
    inner.window.used += 1;
    (Some((limit, limit - inner.window.used, reset)), false)
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (mut response, hang) = {
        let mut state = inner.lock().unwrap();
        let (limits, throttled) = rate(&mut state);
        let (mut response, hang) = if throttled {
            (
                okta_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "E0000047",
                    "API call exceeded rate limit due to too many requests.",
                ),
                false,
            )
        } else {
            answer(&mut state, &method, &uri, &headers, &body)
        };
        if let Some((limit, remaining, reset)) = limits {
            let h = response.headers_mut();
            h.insert("x-rate-limit-limit", limit.into());
            h.insert("x-rate-limit-remaining", remaining.into());
            h.insert("x-rate-limit-reset", reset.into());
        }
        state.calls.push(Call {
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            status: response.status().as_u16(),
            at: SystemTime::now(),
        });
        (response, hang)
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    response
        .headers_mut()
        .insert("x-fake", "okta".parse().unwrap());
    response
}

fn user_json(u: &User) -> serde_json::Value {
    serde_json::json!({
        "id": u.id,
        "status": "ACTIVE",
        "profile": {"login": u.login, "email": u.email},
    })
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(&v.replace('+', " "))))
        .collect()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        serde_json::json!({"error": error, "error_description": description}),
    )
}

/// `/oauth2/v1/token`: a client credentials grant with a `private_key_jwt` assertion.
fn token(state: &mut Inner, headers: &HeaderMap, body: &[u8]) -> Response {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let form = form(body);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials"
        || field("client_assertion_type")
            != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "bad grant");
    }
    let scopes: Vec<&str> = field("scope").split(' ').collect();
    if !scopes.contains(&"okta.groups.manage") || !scopes.contains(&"okta.users.read") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope not granted",
        );
    }
    let parts: Vec<&str> = field("client_assertion").split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "not a JWT");
    };
    let decode_json = |part: &str| -> serde_json::Value {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    };
    let (header, claims) = (decode_json(h), decode_json(c));
    let client_id = claims["iss"].as_str().unwrap_or_default().to_owned();
    let Some((key, alg)) = state.clients.get(&client_id).cloned() else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    };
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let now = now_secs();
    if header["alg"] != alg.as_str()
        || claims["sub"] != client_id.as_str()
        || claims["aud"] != format!("http://{host}/oauth2/v1/token").as_str()
        || claims["exp"].as_u64().is_none_or(|exp| exp <= now)
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "bad claims");
    }
    let verifier: &dyn ring::signature::VerificationAlgorithm = match alg.as_str() {
        "RS256" => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        _ => &ring::signature::ECDSA_P256_SHA256_FIXED,
    };
    let signed = format!("{h}.{c}");
    let valid = URL_SAFE_NO_PAD.decode(sig).is_ok_and(|sig| {
        ring::signature::UnparsedPublicKey::new(verifier, &key)
            .verify(signed.as_bytes(), &sig)
            .is_ok()
    });
    if !valid {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The client_assertion signature is invalid.",
        );
    }
    state.issued += 1;
    let access = format!("fake-access-{}-{}", state.issued, now);
    state.access_tokens.insert(access.clone());
    json(
        StatusCode::OK,
        serde_json::json!({"token_type": "Bearer", "expires_in": 3600, "access_token": access, "scope": field("scope")}),
    )
}

fn answer(
    state: &mut Inner,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, bool) {
    if method == Method::POST && uri.path() == "/oauth2/v1/token" {
        return (token(state, headers, body), false);
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let bearer = auth
        .strip_prefix("Bearer ")
        .is_some_and(|t| state.access_tokens.contains(t));
    if auth != format!("SSWS {TOKEN}") && !bearer {
        return (
            okta_error(
                StatusCode::UNAUTHORIZED,
                "E0000011",
                "Invalid token provided",
            ),
            false,
        );
    }
    if state.fail_next > 0 {
        state.fail_next -= 1;
        return (
            okta_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "E0000009",
                "Internal Server Error",
            ),
            false,
        );
    }
    let segments: Vec<String> = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), decode(v)))
                .collect()
        })
        .unwrap_or_default();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let find_user = |state: &Inner, key: &str| {
        state
            .users
            .iter()
            .find(|u| u.id == key || u.login.eq_ignore_ascii_case(key))
            .cloned()
    };
    let not_found = || {
        okta_error(
            StatusCode::NOT_FOUND,
            "E0000007",
            "Not found: Resource not found",
        )
    };
    let response = match (method.as_str(), segs.as_slice()) {
        ("GET", ["api", "v1", "users"]) => {
            let users: Vec<_> = state.users.iter().take(1).map(user_json).collect();
            json(StatusCode::OK, serde_json::Value::Array(users))
        }
        ("GET", ["api", "v1", "users", key]) => match find_user(&*state, key) {
            Some(u) => json(StatusCode::OK, user_json(&u)),
            None => not_found(),
        },
        ("GET", ["api", "v1", "users", key, "groups"]) => {
            let Some(user) = find_user(&*state, key) else {
                return (not_found(), false);
            };
            let all: Vec<String> = state
                .groups
                .keys()
                .filter(|g| state.members.contains(&((*g).clone(), user.id.clone())))
                .cloned()
                .collect();
            let size = query
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(200)
                .min(state.page_size);
            let after = query.get("after").cloned();
            let start = after
                .and_then(|a| all.iter().position(|g| *g == a).map(|p| p + 1))
                .unwrap_or(0);
            let page: Vec<&String> = all.iter().skip(start).take(size).collect();
            let body: Vec<_> = page
                .iter()
                .map(|g| {
                    let group = &state.groups[*g];
                    serde_json::json!({"id": g, "type": group.kind, "profile": {"name": group.name}})
                })
                .collect();
            let mut response = json(StatusCode::OK, serde_json::Value::Array(body));
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let mut links = vec![format!(
                "<http://{host}{}>; rel=\"self\"",
                uri.path_and_query().unwrap()
            )];
            if start + size < all.len() {
                links.push(format!(
                    "<http://{host}{}?limit={size}&after={}>; rel=\"next\"",
                    uri.path(),
                    page.last().unwrap()
                ));
            }
            for link in links {
                response.headers_mut().append("link", link.parse().unwrap());
            }
            response
        }
        ("GET", ["api", "v1", "groups", id]) => match state.groups.get(*id) {
            Some(g) => json(
                StatusCode::OK,
                serde_json::json!({"id": id, "type": g.kind, "profile": {"name": g.name}}),
            ),
            None => not_found(),
        },
        (m @ ("PUT" | "DELETE"), ["api", "v1", "groups", group, "users", user]) => {
            if !state.groups.contains_key(*group) || !state.users.iter().any(|u| u.id == *user) {
                return (not_found(), false);
            }
            let key = ((*group).to_owned(), (*user).to_owned());
            if m == "PUT" {
                state.members.insert(key);
                if std::mem::take(&mut state.hang_next_put) {
                    return (empty(StatusCode::NO_CONTENT), true);
                }
            } else {
                state.members.remove(&key);
                if state.readd_after_delete {
                    state.members.insert(key);
                }
            }
            empty(StatusCode::NO_CONTENT)
        }
        _ => not_found(),
    };
    (response, false)
}
