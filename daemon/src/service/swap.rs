//! Parts of the request path that a reload replaces while connections stay
//! up: requests already past the gate keep what they hold; every new request
//! sees the current value.

use std::sync::{Arc, RwLock};

use crate::{
    credentials::{CredentialFuture, CredentialSource},
    proxy::{GateFuture, GateRequest, RequestGate},
};

/// A value replaced whole on reload. Readers clone the Arc and let go of the
/// lock at once, so a reload never waits on a request.
pub struct Swap<T: ?Sized> {
    current: RwLock<Arc<T>>,
}

impl<T: ?Sized> Swap<T> {
    pub fn new(value: Arc<T>) -> Swap<T> {
        Swap {
            current: RwLock::new(value),
        }
    }

    pub fn get(&self) -> Arc<T> {
        // A poisoned lock still holds a complete Arc (it is replaced in one
        // assignment): keep serving with it.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set(&self, value: Arc<T>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

impl RequestGate for Swap<dyn RequestGate> {
    fn check<'a>(&'a self, request: GateRequest<'a>) -> GateFuture<'a> {
        let gate = self.get();
        Box::pin(async move { gate.check(request).await })
    }

    fn body_prefix_len(&self) -> usize {
        self.get().body_prefix_len()
    }
}

impl CredentialSource for Swap<dyn CredentialSource> {
    fn current(&self, name: &str) -> CredentialFuture<'_> {
        let source = self.get();
        let name = name.to_owned();
        Box::pin(async move { source.current(&name).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::StaticCredentials;

    #[tokio::test]
    async fn new_requests_see_the_new_credentials_at_once() {
        let old: Arc<dyn CredentialSource> =
            Arc::new(StaticCredentials::default().with("c", "old-value"));
        let swap = Swap::new(old);
        assert_eq!(swap.current("c").await.unwrap().expose(), "old-value");
        let held = swap.current("c").await.unwrap();
        swap.set(Arc::new(
            StaticCredentials::default().with("c", "new-value"),
        ));
        assert_eq!(swap.current("c").await.unwrap().expose(), "new-value");
        // What a request already took stays valid.
        assert_eq!(held.expose(), "old-value");
        assert!(swap.current("gone").await.is_err());
    }
}
