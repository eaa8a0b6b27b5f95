//! A stand-in for AWS's JSON APIs (IAM Identity Center, the identity store) in front of moto:
//! it passes every call to moto and, where a test asks, rewrites the operation status in one
//! answer (`IN_PROGRESS`, `FAILED`: moto reports `SUCCEEDED` at once) or answers HTTP 500 instead
//! of passing the call on. Shared by the provider tests and the integration tests.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// What the proxy does to the next answers of an operation (`X-Amz-Target`'s name).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Pass the call to moto, then set the operation status in its answer to this
    /// (`IN_PROGRESS`, or `FAILED` with a reason).
    Status(&'static str),
    /// Answer HTTP 500 `InternalServerException` without passing the call on.
    ServerError,
    /// Pass the call to moto, then empty every list in its answer: what a list of assignments
    /// shows while AWS is still carrying out a creation it accepted (moto carries it out at once).
    Empty,
}

/// A stand-in for AWS in front of moto (see the module doc).
#[derive(Clone)]
pub struct Proxy {
    pub url: String,
    faults: Arc<Mutex<HashMap<String, VecDeque<Fault>>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    pub async fn start(moto: &str) -> Proxy {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        let faults: Arc<Mutex<HashMap<String, VecDeque<Fault>>>> = Default::default();
        let calls: Arc<Mutex<Vec<String>>> = Default::default();
        let moto = moto.trim_end_matches('/').to_owned();
        let (f, c) = (faults.clone(), calls.clone());
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (faults, calls, moto) = (f.clone(), c.clone(), moto.clone());
            async move {
                let op = headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|t| t.rsplit('.').next())
                    .unwrap_or_default()
                    .to_owned();
                calls.lock().unwrap().push(op.clone());
                let fault = faults
                    .lock()
                    .unwrap()
                    .get_mut(&op)
                    .and_then(|q| q.pop_front());
                if let Some(Fault::ServerError) = fault {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "application/x-amz-json-1.1")],
                        r#"{"__type":"InternalServerException","Message":"injected by the test proxy"}"#
                            .to_owned(),
                    )
                        .into_response();
                }
                let target = format!(
                    "{moto}{}",
                    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                );
                let mut forward = reqwest::Client::new().request(method, target).body(body);
                for (name, value) in &headers {
                    if name != "host" && name != "content-length" {
                        forward = forward.header(name, value);
                    }
                }
                let answer = forward.send().await.expect("moto answers");
                let status = answer.status().as_u16();
                let content_type = answer
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/x-amz-json-1.1")
                    .to_owned();
                let mut text = answer.text().await.unwrap();
                if let Some(Fault::Empty) = fault {
                    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
                    if let Some(fields) = json.as_object_mut() {
                        for value in fields.values_mut() {
                            if value.is_array() {
                                *value = serde_json::Value::Array(Vec::new());
                            }
                        }
                    }
                    text = json.to_string();
                }
                if let Some(Fault::Status(new)) = fault {
                    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
                    for key in [
                        "AccountAssignmentCreationStatus",
                        "AccountAssignmentDeletionStatus",
                    ] {
                        if let Some(s) = json.get_mut(key) {
                            s["Status"] = new.into();
                            if new == "FAILED" {
                                s["FailureReason"] =
                                    "Received a 404 status error: No permission set found".into();
                            }
                        }
                    }
                    text = json.to_string();
                }
                (
                    StatusCode::from_u16(status).unwrap(),
                    [("content-type", content_type)],
                    text,
                )
                    .into_response()
            }
        };
        let router = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Proxy { url, faults, calls }
    }

    pub fn inject(&self, op: &str, faults: &[Fault]) {
        self.faults
            .lock()
            .unwrap()
            .entry(op.to_owned())
            .or_default()
            .extend(faults.iter().cloned());
    }

    pub fn count(&self, op: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| *c == op)
            .count()
    }
}
