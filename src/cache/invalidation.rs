//! Invalidations as values, so that the ones made here can be sent to other replicas and the
//! ones received from them applied by the same function ([`Cache::apply`]).

use std::sync::Arc;

use super::{Cache, Kind};

/// What a write or a purge makes stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation<'a> {
    /// Every cached read of `kind` about `user` of `app`.
    User {
        /// The kind of read.
        kind: Kind,
        /// The app's cache key: its vendor identity ([`crate::gateway::App::key`]), the same on every replica.
        app: &'a str,
        /// The user.
        user: &'a str,
    },
    /// Every entry of `kind` of `app`.
    App {
        /// The kind of read.
        kind: Kind,
        /// The app's cache key: its vendor identity ([`crate::gateway::App::key`]), the same on every replica.
        app: &'a str,
    },
    /// Every entry.
    All,
}

/// Where the invalidations made on this replica go on to (the cluster's invalidation bus).
pub trait InvalidationSink: Send + Sync {
    /// Sends `changes` on; never waits for the network.
    fn send(&self, changes: &[Invalidation<'_>]);
}

impl Cache {
    /// Connects the cache to the other replicas: from now on every invalidation made here is
    /// also sent to `sink`. Set once, at start.
    pub fn connect(&self, sink: Arc<dyn InvalidationSink>) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("the cache is already connected to an invalidation sink");
        }
    }

    /// Applies invalidations made on this replica, here and on every other one.
    pub async fn invalidate_everywhere(&self, changes: &[Invalidation<'_>]) {
        for change in changes {
            self.apply(*change).await;
        }
        self.tell_others(changes);
    }

    /// Sends invalidations to the other replicas only (this one refreshed its entries instead).
    pub fn tell_others(&self, changes: &[Invalidation<'_>]) {
        if let Some(sink) = self.sink.get() {
            if !changes.is_empty() {
                sink.send(changes);
            }
        }
    }

    /// Applies one invalidation to this replica's entries, whichever replica made it.
    pub async fn apply(&self, change: Invalidation<'_>) {
        match change {
            Invalidation::User { kind, app, user } => self.invalidate(kind, app, user).await,
            Invalidation::App { kind, app } => self.purge_apps(kind, &[app]).await,
            Invalidation::All => self.purge_all(),
        }
    }

    /// Drops every entry that only invalidations keep true: after this replica may have missed
    /// some (a lost subscription), it can no longer trust them. Final answers (a `delivered`
    /// status) stay.
    pub async fn drop_invalidatable(&self) {
        for store in &self.stores {
            store.remove_if(|entry| entry.invalidatable).await;
        }
    }
}
