//! A value that a reload replaces whole while connections stay up.
//!
//! The request path reads the current generation once per request (the
//! gate, the credentials and the configuration they were built from, as
//! one `Arc`): a request never sees the new gate with the old credentials,
//! and keeps what it took until it ends; the next request sees the new one.

use std::sync::{Arc, RwLock};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_the_new_value_at_once_and_keep_what_they_took() {
        let swap = Swap::new(Arc::new(("gate-1", "credentials-1")));
        let held = swap.get();
        swap.set(Arc::new(("gate-2", "credentials-2")));
        // Both parts change together: never the new gate with old credentials.
        assert_eq!(*swap.get(), ("gate-2", "credentials-2"));
        assert_eq!(*held, ("gate-1", "credentials-1"));
    }
}
