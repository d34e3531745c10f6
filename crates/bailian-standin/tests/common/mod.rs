//! What the test files that came after http.rs share: one request over loopback and the
//! error triple of either error shape.

// Each test file uses its own part of this.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const KEY: &str = "sk-test";

pub struct Reply {
    pub status: u16,
    /// The Retry-After header, if any.
    pub retry_after: Option<String>,
    /// The body, or the error that cut it short.
    pub body: Result<Bytes, String>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(self.body.as_ref().expect("whole body")).expect("JSON body")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.body.as_ref().expect("whole body")).into_owned()
    }

    /// The JSON `data:` events of a server-sent event body, `[DONE]` left out.
    pub fn events(&self) -> Vec<Value> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).expect("JSON event"))
            .collect()
    }
}

pub async fn send(root_url: &str, method: &str, path: &str, key: &str, body: &str) -> Reply {
    send_bytes(root_url, method, path, key, "application/json", Bytes::from(body.to_string())).await
}

/// `send` with any content type and body (a multipart upload).
pub async fn send_bytes(
    root_url: &str,
    method: &str,
    path: &str,
    key: &str,
    content_type: &str,
    body: Bytes,
) -> Reply {
    let addr = root_url.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry_after =
        resp.headers().get("retry-after").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).map_err(|e| e.to_string());
    Reply { status, retry_after, body }
}

pub async fn post(root_url: &str, path: &str, body: &Value) -> Reply {
    send(root_url, "POST", path, KEY, &body.to_string()).await
}

/// (status, code, message) of a compatible-mode or native error body.
pub fn error_of(r: &Reply) -> (u16, String, String) {
    let v = r.json();
    let code = v.pointer("/error/code").or_else(|| v.get("code")).and_then(Value::as_str).unwrap_or_default();
    let msg =
        v.pointer("/error/message").or_else(|| v.get("message")).and_then(Value::as_str).unwrap_or_default();
    (r.status, code.to_string(), msg.to_string())
}
