//! Bearer-token authentication, off by default. A tokens file maps each token to
//! the namespaces it may use:
//!
//! ```text
//! # token                namespaces (comma-separated, or * for all)
//! s3cr3t-team-a          team-a,team-a-dev
//! s3cr3t-ops             *
//! ```
//!
//! The interceptor checks the `authorization: Bearer <token>` header
//! (UNAUTHENTICATED when missing or unknown) and attaches a [`Caller`] to the
//! request; handlers ask the caller for each namespace they touch
//! (PERMISSION_DENIED for another). Tokens are never logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::{Error, Result};
use crate::validate;

/// What a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespaces(BTreeSet<String>),
}

/// The parsed tokens file.
#[derive(Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, Arc<Scope>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        write!(f, "Tokens({} entries)", self.by_token.len())
    }
}

impl Tokens {
    /// Parses the tokens file; errors name the line, never the token.
    pub fn parse(text: &str) -> Result<Tokens> {
        let mut by_token = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(token), Some(list), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::invalid(format!(
                    "tokens file line {}: expected `TOKEN NAMESPACE[,NAMESPACE...]` or `TOKEN *`",
                    n + 1
                )));
            };
            let scope = if list == "*" {
                Scope::All
            } else {
                let set = list
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(validate::namespace)
                    .collect::<Result<BTreeSet<_>>>()
                    .map_err(|e| Error::invalid(format!("tokens file line {}: {e}", n + 1)))?;
                Scope::Namespaces(set)
            };
            if by_token
                .insert(token.to_string(), Arc::new(scope))
                .is_some()
            {
                return Err(Error::invalid(format!(
                    "tokens file line {}: this token appears twice",
                    n + 1
                )));
            }
        }
        if by_token.is_empty() {
            return Err(Error::invalid("the tokens file has no tokens"));
        }
        Ok(Tokens { by_token })
    }

    fn scope(&self, token: &str) -> Option<Arc<Scope>> {
        self.by_token.get(token).cloned()
    }
}

/// Who is calling, attached to each request when auth is on.
#[derive(Debug, Clone)]
pub struct Caller(Option<Arc<Scope>>);

impl Caller {
    /// The caller of a request: unrestricted when auth is off.
    pub fn of<T>(req: &Request<T>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller(None))
    }

    /// Validates a request's namespace (empty = default) and checks that the
    /// caller may use it.
    pub fn namespace(&self, ns: &str) -> Result<String> {
        let ns = validate::namespace(ns)?;
        self.allow(&ns)?;
        Ok(ns)
    }

    /// PERMISSION_DENIED unless the caller may use every namespace.
    pub fn allow_all(&self) -> Result<()> {
        match self.0.as_deref() {
            None | Some(Scope::All) => Ok(()),
            Some(Scope::Namespaces(_)) => Err(Error::PermissionDenied(
                "this token may not act on every namespace".into(),
            )),
        }
    }

    /// NOT_FOUND, worded as for an ID that does not exist, unless the caller
    /// may use `ns`, the namespace of the record (`kind` `id`) it asked for
    /// by ID.
    pub fn visible(&self, ns: &str, kind: &str, id: i64) -> Result<()> {
        self.allow(ns)
            .map_err(|_| Error::not_found(format!("{kind} {id} does not exist")))
    }

    /// PERMISSION_DENIED unless the caller may use `ns`.
    pub fn allow(&self, ns: &str) -> Result<()> {
        match self.0.as_deref() {
            None | Some(Scope::All) => Ok(()),
            Some(Scope::Namespaces(set)) if set.contains(ns) => Ok(()),
            Some(Scope::Namespaces(_)) => Err(Error::PermissionDenied(format!(
                "this token may not use namespace {ns:?}"
            ))),
        }
    }
}

/// The tonic interceptor: UNAUTHENTICATED without a known bearer token.
/// Without tokens (auth off) every request passes.
#[derive(Clone)]
pub struct Authenticate(pub Option<Arc<Tokens>>);

impl Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        let Some(tokens) = &self.0 else {
            return Ok(req);
        };
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        let Some(token) = token else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata (auth is on)",
            ));
        };
        let Some(scope) = tokens.scope(token.trim()) else {
            return Err(Status::unauthenticated("unknown bearer token"));
        };
        req.extensions_mut().insert(Caller(Some(scope)));
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_scope() {
        let t = Tokens::parse("# comment\n\nabc team-a,team-b\nroot *\n").unwrap();
        assert_eq!(
            t.scope("abc").as_deref(),
            Some(&Scope::Namespaces(
                ["team-a".to_string(), "team-b".to_string()].into()
            ))
        );
        assert_eq!(t.scope("root").as_deref(), Some(&Scope::All));
        assert!(t.scope("nope").is_none());
        assert!(!format!("{t:?}").contains("abc"), "tokens never printed");
    }

    #[test]
    fn bad_files_name_the_line_not_the_token() {
        for bad in ["secret", "secret a b", "secret bad ns", "", "x a\nx b"] {
            let err = Tokens::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn interceptor_outcomes() {
        let tokens = Arc::new(Tokens::parse("abc team-a").unwrap());
        let mut i = Authenticate(Some(tokens));
        let code =
            |r: std::result::Result<Request<()>, Status>| r.map(|_| ()).map_err(|s| s.code());
        assert_eq!(
            code(i.call(Request::new(()))),
            Err(tonic::Code::Unauthenticated)
        );
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(code(i.call(req)), Err(tonic::Code::Unauthenticated));
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", "Bearer abc".parse().unwrap());
        let req = i.call(req).unwrap();
        let caller = Caller::of(&req);
        assert_eq!(caller.namespace("team-a").unwrap(), "team-a");
        assert!(matches!(
            caller.namespace("team-b"),
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            caller.namespace(""),
            Err(Error::PermissionDenied(_))
        ));
        assert!(
            Caller::of(&Request::new(())).namespace("any").is_ok(),
            "auth off"
        );
    }
}
