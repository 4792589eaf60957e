//! What the console may change, and who may ask: off unless the console is
//! started with actions; each action needs a signed-in user (a bearer token
//! the page sends, never a cookie, so another site cannot make a browser
//! act) and the console's own origin; each goes to the audit trail with
//! the user who asked.

use axum::http::{header, HeaderMap};

use crate::http::auth::Authenticator;

/// Who may act, when actions are on.
pub struct Actions {
    users: Authenticator,
}

/// Why an action is refused: an HTTP status and what to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub detail: String,
}

/// The most dead letters one request replays.
pub const MAX_REPLAY: usize = 1_000;

impl Actions {
    /// Actions for the users `users` accepts; refused when it accepts none.
    pub fn new(users: Authenticator) -> anyhow::Result<Self> {
        anyhow::ensure!(
            users.is_configured(),
            "actions need signed-in users: give a token file or a JWK set"
        );
        Ok(Self { users })
    }

    /// The signed-in user of a request from the console's own page, or why
    /// it may not act.
    pub async fn user(actions: Option<&Self>, headers: &HeaderMap) -> Result<String, Refusal> {
        let Some(actions) = actions else {
            return Err(Refusal {
                status: 403,
                detail: "this console is read-only: start it with --allow-actions".into(),
            });
        };
        same_origin(headers)?;
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        actions
            .users
            .authorize(authorization, crate::http::oidc::Role::Deployer)
            .await
            .map_err(|why| Refusal {
                status: 401,
                detail: format!("sign in first: {why}"),
            })
    }
}

/// A state-changing request must come from a page of this console: its
/// `Origin` names the host it was sent to.
fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (origin, host) = (text(header::ORIGIN), text(header::HOST));
    match (origin, host) {
        (Some(origin), Some(host)) if origin == format!("http://{host}") => Ok(()),
        _ => Err(Refusal {
            status: 403,
            detail: "actions are taken from the console's own pages only (Origin)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth::JwtRules;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    fn actions() -> Actions {
        let users = Authenticator::new(vec!["s3cret".into()], None, JwtRules::default()).unwrap();
        Actions::new(users).unwrap()
    }

    #[tokio::test]
    async fn a_signed_in_user_from_the_consoles_own_page_may_act() {
        let ok = headers(&[
            ("origin", "http://127.0.0.1:8090"),
            ("host", "127.0.0.1:8090"),
            ("authorization", "Bearer s3cret"),
        ]);
        assert_eq!(
            Actions::user(Some(&actions()), &ok).await,
            Ok("token 1".into())
        );
    }

    #[tokio::test]
    async fn read_only_other_origins_and_strangers_are_refused() {
        let from = |origin: &str, token: &str| {
            headers(&[
                ("origin", origin),
                ("host", "127.0.0.1:8090"),
                ("authorization", token),
            ])
        };
        async fn status(actions: Option<&Actions>, h: &HeaderMap) -> u16 {
            Actions::user(actions, h).await.unwrap_err().status
        }
        let mine = from("http://127.0.0.1:8090", "Bearer s3cret");
        assert_eq!(status(None, &mine).await, 403, "read-only");
        let elsewhere = from("http://evil.example", "Bearer s3cret");
        assert_eq!(
            status(Some(&actions()), &elsewhere).await,
            403,
            "another origin"
        );
        let no_origin = headers(&[
            ("host", "127.0.0.1:8090"),
            ("authorization", "Bearer s3cret"),
        ]);
        assert_eq!(status(Some(&actions()), &no_origin).await, 403, "no origin");
        let stranger = from("http://127.0.0.1:8090", "Bearer guess");
        assert_eq!(status(Some(&actions()), &stranger).await, 401);
        let none = Authenticator::new(Vec::new(), None, JwtRules::default()).unwrap();
        assert!(Actions::new(none).is_err(), "actions without users");
    }
}
