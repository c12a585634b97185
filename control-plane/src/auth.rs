//! Who may open a discovery stream for which pod (DESIGN §7).
//!
//! In Kubernetes mode every stream's first request carries the pod's projected
//! service-account token (audience [`AUDIENCE`]); [`TokenReviewer`] asks the API server
//! (TokenReview) whether it is valid for that audience, and accepts the stream only when the
//! token is bound to the pod and namespace the stream claims to be. Verdicts are cached until
//! the token expires, at most [`MAX_CACHE_TTL`], so a reconnect storm does not become a
//! TokenReview storm while a token whose pod was deleted stops opening streams within a
//! minute. Local mode
//! ([`AllowAll`]) trusts the claim: it has no API server to ask and serves only loopback or
//! a network the operator controls.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use lanemesh_api::proto::Node;

/// The audience injected sidecars' tokens are issued for.
pub const AUDIENCE: &str = "lanemesh";
/// The TokenReview `extra` key naming the pod a token is bound to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// Cached verdicts at most; beyond it expired entries are dropped, then the cache is cleared.
const CACHE_ENTRIES: usize = 16_384;
/// The longest a verdict is cached (and how long when the token's expiry cannot be read).
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(60);

/// Why a stream is refused (`PERMISSION_DENIED` / `UNAUTHENTICATED` to the sidecar).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: the first request must carry the pod's projected service-account token")]
    NoToken,
    #[error("the token is not valid for audience {AUDIENCE}: {0}")]
    NotAuthenticated(String),
    #[error("the token belongs to {token}, not to the claimed {claimed}")]
    WrongIdentity { token: String, claimed: String },
    #[error("the token is not bound to a pod (a projected token from the pod is required)")]
    NotBoundToPod,
    #[error("TokenReview failed: {0}")]
    Review(String),
}

impl AuthError {
    /// A short, bounded label for the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::NotAuthenticated(_) => "not_authenticated",
            Self::WrongIdentity { .. } => "wrong_identity",
            Self::NotBoundToPod => "not_bound_to_pod",
            Self::Review(_) => "review_failed",
        }
    }

    /// Whether the sidecar is at fault (`PERMISSION_DENIED`) or the check could not be made
    /// (`UNAVAILABLE`, retried).
    pub fn is_denial(&self) -> bool {
        !matches!(self, Self::Review(_))
    }
}

/// Decides whether a stream may speak for the node it names.
pub trait Authenticator: fmt::Debug + Send + Sync {
    fn authenticate<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), AuthError>>;
}

/// Local mode: every claim is believed.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate<'a>(&'a self, _node: &'a Node) -> BoxFuture<'a, Result<(), AuthError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The verdict on one TokenReview answer for a stream claiming `node`: `Ok` with how long it
/// holds.
pub fn judge(
    node: &Node,
    status: &TokenReviewStatus,
    token: &str,
    now: SystemTime,
) -> Result<Duration, AuthError> {
    if status.authenticated != Some(true) {
        return Err(AuthError::NotAuthenticated(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".to_owned()),
        ));
    }
    // A TokenReview with audiences answers with those the token is valid for.
    if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
        return Err(AuthError::NotAuthenticated(format!(
            "audiences {:?}",
            status.audiences.clone().unwrap_or_default()
        )));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let claimed = format!("{}/{}", node.namespace, node.pod_name);
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_owned());
    let pod = user
        .extra
        .as_ref()
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|names| names.first())
        .cloned();
    let (Some(namespace), Some(pod)) = (namespace, pod) else {
        return Err(AuthError::NotBoundToPod);
    };
    if namespace != node.namespace || pod != node.pod_name {
        return Err(AuthError::WrongIdentity {
            token: format!("{namespace}/{pod}"),
            claimed,
        });
    }
    Ok(token_expiry(token)
        .and_then(|exp| exp.duration_since(now).ok())
        .map_or(MAX_CACHE_TTL, |left| left.min(MAX_CACHE_TTL)))
}

/// The `exp` claim of a JWT (already verified by the API server; only read here).
fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// Kubernetes mode: TokenReview with a cache of verdicts.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    /// (token, claimed namespace/pod) -> when the verdict stops holding.
    cache: Mutex<HashMap<(String, String), SystemTime>>,
}

impl fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the cached tokens.
        let entries = self.cache.lock().map(|c| c.len()).unwrap_or_default();
        f.debug_struct("TokenReviewer")
            .field("cached", &entries)
            .finish()
    }
}

impl TokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self {
            api: Api::all(client),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &(String, String), now: SystemTime) -> bool {
        self.cache
            .lock()
            .map(|cache| cache.get(key).is_some_and(|until| *until > now))
            .unwrap_or(false)
    }

    fn remember(&self, key: (String, String), until: SystemTime) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                let now = SystemTime::now();
                cache.retain(|_, until| *until > now);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, until);
        }
    }

    async fn review(&self, node: &Node) -> Result<(), AuthError> {
        if node.token.is_empty() {
            return Err(AuthError::NoToken);
        }
        let now = SystemTime::now();
        let key = (
            node.token.clone(),
            format!("{}/{}", node.namespace, node.pod_name),
        );
        if self.cached(&key, now) {
            return Ok(());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(node.token.clone()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Review(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        let ttl = judge(node, &status, &node.token, now)?;
        self.remember(key, now + ttl);
        Ok(())
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, node: &'a Node) -> BoxFuture<'a, Result<(), AuthError>> {
        Box::pin(self.review(node))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn node(namespace: &str, pod: &str) -> Node {
        Node {
            namespace: namespace.into(),
            pod_name: pod.into(),
            token: "t".into(),
            ..Default::default()
        }
    }

    fn status(username: &str, pod: Option<&str>, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: pod
                    .map(|p| BTreeMap::from([(POD_NAME_EXTRA.to_owned(), vec![p.to_owned()])])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn jwt(exp: u64) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"aud":["lanemesh"],"exp":{exp}}}"#))
        )
    }

    #[test]
    fn a_token_bound_to_the_claimed_pod_is_accepted_until_it_expires_at_most_a_minute() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ok = status(
            "system:serviceaccount:shop:default",
            Some("a-1"),
            &["lanemesh"],
        );
        let a1 = node("shop", "a-1");
        assert_eq!(
            judge(&a1, &ok, &jwt(1_000_030), now).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            judge(&a1, &ok, &jwt(1_000_600), now).unwrap(),
            MAX_CACHE_TTL
        );
        assert_eq!(judge(&a1, &ok, "opaque", now).unwrap(), MAX_CACHE_TTL);
    }

    #[test]
    fn another_pod_namespace_audience_or_an_unbound_token_is_refused() {
        let now = UNIX_EPOCH;
        let ok = status(
            "system:serviceaccount:shop:default",
            Some("a-1"),
            &["lanemesh"],
        );
        let cases = [
            (node("shop", "b-1"), ok.clone(), "wrong_identity"),
            (node("other", "a-1"), ok.clone(), "wrong_identity"),
            (
                node("shop", "a-1"),
                status("system:serviceaccount:shop:default", Some("a-1"), &[]),
                "not_authenticated",
            ),
            (
                node("shop", "a-1"),
                status("system:serviceaccount:shop:default", None, &["lanemesh"]),
                "not_bound_to_pod",
            ),
            (
                node("shop", "a-1"),
                status("admin", Some("a-1"), &["lanemesh"]),
                "not_bound_to_pod",
            ),
            (
                node("shop", "a-1"),
                TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some("token has expired".into()),
                    ..Default::default()
                },
                "not_authenticated",
            ),
        ];
        for (node, status, reason) in cases {
            let error = judge(&node, &status, "t", now).unwrap_err();
            assert_eq!(error.reason(), reason, "{error}");
            assert!(error.is_denial());
        }
    }

    #[test]
    fn the_expiry_is_read_from_the_jwt() {
        assert_eq!(
            token_expiry(&jwt(42)),
            Some(UNIX_EPOCH + Duration::from_secs(42))
        );
        assert_eq!(token_expiry("not a jwt"), None);
        assert_eq!(token_expiry("a.!!!.c"), None);
    }
}
