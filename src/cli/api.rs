//! The daemon's REST API from the command line: where it is (derived from the WebSocket
//! URL every tool takes) and one call that turns a refusal into the server's message.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::Value;

/// Where and as whom to call the API; global, so it may follow any subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// WebSocket endpoint of the daemon; the API is on the same host and port.
    #[arg(long, global = true, env = "SWITCHBOARD_URL", default_value = switchboard_client::DEFAULT_URL)]
    pub url: String,
    /// Credential: a client JWT, an API key or the admin token.
    #[arg(long, global = true, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM CA certificate to trust for `https://` besides the system roots.
    #[arg(long, global = true, env = "SWITCHBOARD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The REST API of the daemon the WebSocket URL points at.
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Api> {
        let mut url = reqwest::Url::parse(&args.url)
            .with_context(|| format!("`{}` is not a URL", args.url))?;
        let scheme = match url.scheme() {
            "ws" | "http" => "http",
            "wss" | "https" => "https",
            other => bail!("`--url` must be ws://, wss://, http:// or https://, not {other}://"),
        };
        url.set_scheme(scheme)
            .map_err(|()| anyhow::anyhow!("cannot use `{}`", args.url))?;
        url.set_path("/api/v1");
        url.set_query(None);
        let mut http = reqwest::Client::builder();
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?;
            http = http.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", path.display()))?,
            );
        }
        Ok(Api {
            base: url.as_str().trim_end_matches('/').to_owned(),
            token: args.token.clone(),
            http: http.build().context("cannot set up the HTTP client")?,
        })
    }

    /// Sends a request, its body declared as `content_type` (the API refuses a body that
    /// does not say it is JSON); a non-2xx answer becomes an error carrying the server's
    /// message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(reqwest::Body, &'static str)>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some((body, content_type)) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let why = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("{status}: {why}")
    }

    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body = body.map(|b| (reqwest::Body::from(b.to_string()), "application/json"));
        let response = self.call(method, path, body).await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        response.json().await.context("the answer is not JSON")
    }
}
