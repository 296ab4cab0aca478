//! The invalidation bus: what one replica's writes make stale, every other replica drops, through
//! one Redis pub/sub channel.
//!
//! - Sending never waits for Redis: the cache hands its invalidations to [`Bus::send`], which
//!   queues them (bounded) for a background publisher. A message that cannot be queued or
//!   published is replaced by "drop everything" as soon as Redis takes a publish again, so a
//!   lost message costs cache hits, never a stale answer.
//! - Receiving: a background subscriber applies each message with [`Cache::apply`], the
//!   function that applies this replica's own invalidations. When the subscription is lost (the
//!   stream ends or a ping goes unanswered) the replica drops every entry that only
//!   invalidations keep true, resubscribes with a backoff, and drops them again once
//!   subscribed (anything cached meanwhile may have missed a message).
//! - The same channel carries notices of new shared app tokens ([`Bus::token_renewed`]).
//! - Bounded: a user name longer than [`MAX_USER`] is sent as its app's whole kind; at most
//!   [`MAX_CHANGES`] changes per message; received messages beyond [`MAX_MESSAGE`] bytes are
//!   ignored.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Cluster, Op};
use crate::cache::{Cache, Invalidation, InvalidationSink, Kind};

/// Longest user name sent as such.
pub const MAX_USER: usize = 256;
/// Most changes in one message.
pub const MAX_CHANGES: usize = 64;
/// Largest message applied.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Messages queued for the publisher before new ones are replaced by "drop everything".
const OUTBOX: usize = 4096;
/// How often the subscription is pinged (a dead connection is noticed within two periods).
const PING: Duration = Duration::from_secs(1);
/// Longest wait for a subscription to be made.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The first and the longest wait between attempts to subscribe.
const RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// One change, as sent.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Change<'a> {
    /// Kind, app, user.
    #[serde(rename = "u")]
    User(Cow<'a, str>, Cow<'a, str>, Cow<'a, str>),
    /// Kind, app.
    #[serde(rename = "a")]
    App(Cow<'a, str>, Cow<'a, str>),
    /// Drop everything.
    #[serde(rename = "*")]
    All,
    /// A new shared app token: app, generation.
    #[serde(rename = "t")]
    Token(Cow<'a, str>, u64),
}

/// One message on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Message<'a> {
    /// The sending replica (its own messages are skipped).
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    changes: Vec<Change<'a>>,
}

/// Called with (app, generation) when another replica stored a new app token.
pub type TokenNotice = Box<dyn Fn(&str, u64) + Send + Sync>;

/// This replica's end of the bus.
pub struct Bus {
    cluster: Arc<Cluster>,
    channel: String,
    outbox: mpsc::Sender<Vec<u8>>,
    /// Some message was lost: "drop everything" goes out with the next publish.
    lost: AtomicBool,
}

impl Bus {
    /// Starts publishing what `cache` invalidates and applying what the other replicas send;
    /// `tokens` hears of their new app tokens. The tasks end with the cache.
    pub fn start(cluster: &Arc<Cluster>, cache: &Arc<Cache>, tokens: TokenNotice) -> Arc<Bus> {
        let (outbox, queued) = mpsc::channel(OUTBOX);
        let bus = Arc::new(Bus {
            cluster: cluster.clone(),
            channel: cluster.key("bus", &["invalidations"]),
            outbox,
            lost: AtomicBool::new(false),
        });
        cache.connect(bus.clone());
        tokio::spawn(publish(Arc::downgrade(&bus), queued));
        tokio::spawn(subscribe(bus.clone(), Arc::downgrade(cache), tokens));
        bus
    }

    /// Tells the other replicas that `app`'s shared token is now at `generation`.
    pub fn token_renewed(&self, app: &str, generation: u64) {
        self.queue(&[Change::Token(Cow::Borrowed(app), generation)]);
    }

    fn queue(&self, changes: &[Change<'_>]) {
        for chunk in changes.chunks(MAX_CHANGES) {
            let message = Message {
                from: Cow::Borrowed(self.cluster.id()),
                changes: chunk.iter().map(borrowed).collect(),
            };
            let queued = serde_json::to_vec(&message)
                .ok()
                .is_some_and(|bytes| self.outbox.try_send(bytes).is_ok());
            if !queued {
                self.lost.store(true, Ordering::Release);
            }
        }
    }

    /// Publishes one message; `false` when Redis did not take it.
    async fn publish(&self, message: &[u8]) -> bool {
        let channel = self.channel.as_str();
        let result = self
            .cluster
            .call(Op::Invalidation, |mut connection| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(message)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await;
        if result.is_err() {
            self.cluster.fallback(Op::Invalidation);
        }
        result.is_ok()
    }

    /// Sends "drop everything" if a message was lost; `false` while Redis still does not take it.
    async fn resync(&self) -> bool {
        if !self.lost.swap(false, Ordering::AcqRel) {
            return true;
        }
        let message = Message {
            from: Cow::Borrowed(self.cluster.id()),
            changes: vec![Change::All],
        };
        let sent = match serde_json::to_vec(&message) {
            Ok(bytes) => self.publish(&bytes).await,
            Err(_) => false,
        };
        if !sent {
            self.lost.store(true, Ordering::Release);
        }
        sent
    }
}

impl InvalidationSink for Bus {
    fn send(&self, invalidations: &[Invalidation<'_>]) {
        let changes: Vec<Change<'_>> = invalidations.iter().map(|i| change(*i)).collect();
        self.queue(&changes);
    }
}

/// The change sent for an invalidation (a user name beyond [`MAX_USER`]: the app's whole kind).
fn change<'a>(invalidation: Invalidation<'a>) -> Change<'a> {
    match invalidation {
        Invalidation::User { kind, app, user } if user.len() <= MAX_USER => {
            Change::User(kind.name().into(), app.into(), user.into())
        }
        Invalidation::User { kind, app, .. } | Invalidation::App { kind, app } => {
            Change::App(kind.name().into(), app.into())
        }
        Invalidation::All => Change::All,
    }
}

fn borrowed<'a>(change: &'a Change<'_>) -> Change<'a> {
    let b = |s: &'a Cow<'_, str>| Cow::Borrowed(s.as_ref());
    match change {
        Change::User(kind, app, user) => Change::User(b(kind), b(app), b(user)),
        Change::App(kind, app) => Change::App(b(kind), b(app)),
        Change::All => Change::All,
        Change::Token(app, generation) => Change::Token(b(app), *generation),
    }
}

/// The invalidation a received change stands for (`None` for tokens and unknown kinds).
fn invalidation<'a>(change: &'a Change<'_>) -> Option<Invalidation<'a>> {
    let kind = |name: &str| Kind::ALL.into_iter().find(|k| k.name() == name);
    Some(match change {
        Change::User(k, app, user) => Invalidation::User {
            kind: kind(k)?,
            app,
            user,
        },
        Change::App(k, app) => Invalidation::App {
            kind: kind(k)?,
            app,
        },
        Change::All => Invalidation::All,
        Change::Token(..) => return None,
    })
}

/// Publishes queued messages in order, and "drop everything" after any loss.
async fn publish(bus: Weak<Bus>, mut queued: mpsc::Receiver<Vec<u8>>) {
    let mut retry = tokio::time::interval(RETRY.1);
    loop {
        let message = tokio::select! {
            message = queued.recv() => match message {
                Some(message) => Some(message),
                None => return,
            },
            _ = retry.tick() => None,
        };
        let Some(bus) = bus.upgrade() else {
            return;
        };
        // While "drop everything" is not out yet, it covers this message too.
        if bus.resync().await {
            if let Some(message) = message {
                if !bus.publish(&message).await {
                    bus.lost.store(true, Ordering::Release);
                }
            }
        }
    }
}

/// Keeps a subscription to the channel and applies what arrives, until the cache is gone.
async fn subscribe(bus: Arc<Bus>, cache: Weak<Cache>, tokens: TokenNotice) {
    let mut wait = RETRY.0;
    loop {
        let subscribed = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
            let mut pubsub = bus.cluster.client().get_async_pubsub().await?;
            pubsub.subscribe(&bus.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let Some(held) = cache.upgrade() else {
            return;
        };
        match subscribed {
            Ok(Ok(pubsub)) => {
                // Whatever was cached while no subscription was held may have missed a message.
                held.drop_invalidatable().await;
                drop(held);
                wait = RETRY.0;
                tracing::info!("cluster: invalidation bus subscribed");
                listen(&bus, pubsub, &cache, &tokens).await;
                let Some(held) = cache.upgrade() else {
                    return;
                };
                tracing::warn!("cluster: invalidation bus subscription lost; cached reads dropped");
                held.drop_invalidatable().await;
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "cluster: cannot subscribe"),
            Err(_) => tracing::debug!("cluster: subscribing timed out"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY.1);
    }
}

/// Applies messages until the subscription ends or stops answering pings.
async fn listen(bus: &Bus, pubsub: redis::aio::PubSub, cache: &Weak<Cache>, tokens: &TokenNotice) {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return };
                let Some(cache) = cache.upgrade() else { return };
                receive(bus, message.get_payload_bytes(), &cache, tokens).await;
            }
            _ = ping.tick() => {
                if cache.strong_count() == 0 {
                    return;
                }
                let answered = tokio::time::timeout(PING, sink.ping::<redis::Value>()).await;
                if !matches!(answered, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// Applies one message from another replica.
async fn receive(bus: &Bus, payload: &[u8], cache: &Cache, tokens: &TokenNotice) {
    if payload.len() > MAX_MESSAGE {
        return;
    }
    let Ok(message) = serde_json::from_slice::<Message<'_>>(payload) else {
        tracing::debug!("cluster: unreadable bus message ignored");
        return;
    };
    if message.from == bus.cluster.id() {
        return;
    }
    for change in &message.changes {
        match (change, invalidation(change)) {
            (_, Some(invalidation)) => cache.apply(invalidation).await,
            (Change::Token(app, generation), None) => tokens(app, *generation),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_long_users_become_their_apps_kind() {
        let long = "u".repeat(MAX_USER + 1);
        let invalidations = [
            Invalidation::User {
                kind: Kind::Presence,
                app: "a",
                user: "bob",
            },
            Invalidation::User {
                kind: Kind::OfflineCount,
                app: "a",
                user: &long,
            },
            Invalidation::App {
                kind: Kind::Sublist,
                app: "b",
            },
            Invalidation::All,
        ];
        let changes: Vec<Change<'_>> = invalidations.iter().map(|i| change(*i)).collect();
        let message = Message {
            from: "r1".into(),
            changes,
        };
        let bytes = serde_json::to_vec(&message).unwrap();
        assert!(bytes.len() < 200, "{}", String::from_utf8_lossy(&bytes));
        let back: Message<'_> = serde_json::from_slice(&bytes).unwrap();
        let applied: Vec<_> = back.changes.iter().map(invalidation).collect();
        assert_eq!(
            applied,
            [
                Some(invalidations[0]),
                Some(Invalidation::App {
                    kind: Kind::OfflineCount,
                    app: "a"
                }),
                Some(invalidations[2]),
                Some(Invalidation::All),
            ]
        );
    }

    #[test]
    fn unknown_kinds_and_token_notices_are_no_invalidation() {
        let token = Change::Token("a".into(), 3);
        assert_eq!(invalidation(&token), None);
        let odd = Change::App("nope".into(), "a".into());
        assert_eq!(invalidation(&odd), None);
        let bytes = serde_json::to_vec(&token).unwrap();
        assert_eq!(serde_json::from_slice::<Change<'_>>(&bytes).unwrap(), token);
    }
}
