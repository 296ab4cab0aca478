//! What identifies a cached read: its [`Kind`], the app's vendor identity, the user and the
//! extra parameters, hashed into 128-bit entry keys and group keys.
//!
//! Keys are built from the request's canonical (decoded) path segments and the app's vendor
//! identity (`app-id/{id}` or `{org}/{app}`), never from the raw path or the configured name:
//! `b%6Fb` and `bob` are one entry, a message to `bob` invalidates it, and a reload that points
//! a name at another vendor app cannot serve the old app's entries as the new one's.

use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::route::Endpoint;

/// The cacheable reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `offline_msg_count`.
    OfflineCount,
    /// `offline_msg_status`.
    OfflineStatus,
    /// `presence/sublist`.
    Sublist,
    /// Presence of one user.
    Presence,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::OfflineCount,
        Kind::OfflineStatus,
        Kind::Sublist,
        Kind::Presence,
    ];

    /// The cacheable kind of an endpoint (presence batch gets are split per user elsewhere).
    pub fn of(endpoint: Endpoint) -> Option<Kind> {
        match endpoint {
            Endpoint::OfflineMsgCount => Some(Kind::OfflineCount),
            Endpoint::OfflineMsgStatus => Some(Kind::OfflineStatus),
            Endpoint::PresenceSublist => Some(Kind::Sublist),
            _ => None,
        }
    }

    /// The kind whose entries an endpoint's reads use (presence batch gets: presence per user).
    pub fn cached_by(endpoint: Endpoint) -> Option<Kind> {
        match endpoint {
            Endpoint::PresenceBatchGet => Some(Kind::Presence),
            other => Kind::of(other),
        }
    }

    /// The `cache` label of `imgate_cache_entries`.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::OfflineCount => "offline_count",
            Kind::OfflineStatus => "offline_status",
            Kind::Sublist => "sublist",
            Kind::Presence => "presence",
        }
    }

    /// Whether one entry per user holds this kind (invalidated by removing it), rather than a
    /// group of entries (invalidated by a mark).
    pub(super) const fn is_exact(self) -> bool {
        matches!(self, Kind::OfflineCount | Kind::Presence)
    }

    pub(super) const fn tag(self) -> u8 {
        self as u8
    }
}

/// What identifies a cached read: its kind, app, user and extra parameters.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// The kind of read.
    pub kind: Kind,
    /// The app's vendor identity (`App::key`), not its configured name.
    pub app: &'a str,
    /// The user the read is about, decoded.
    pub user: &'a str,
    /// Message id (decoded) or query string; empty for counts and presence.
    pub extra: &'a str,
}

/// Cache key hashes: SipHash-1-3 with a 128-bit output under the process's random keys, so a
/// lookup allocates nothing and a collision is as likely as guessing those keys.
#[derive(Clone)]
pub(super) struct Hashes {
    k0: u64,
    k1: u64,
}

impl Hashes {
    pub(super) fn new() -> Hashes {
        Hashes {
            k0: rand::random(),
            k1: rand::random(),
        }
    }

    pub(super) fn hash(&self, fields: &[&[u8]]) -> u128 {
        // Length-prefixed, so ("ab","c") and ("a","bc") differ.
        const PREFIX: usize = std::mem::size_of::<u64>();
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        let mut key = [0u8; 256];
        if fields.iter().map(|f| PREFIX + f.len()).sum::<usize>() <= key.len() {
            // The usual key, gathered for one write: SipHash is streamed, so this is the hash
            // of the field-by-field writes below, without their per-call cost.
            let mut at = 0;
            for field in fields {
                key[at..at + PREFIX].copy_from_slice(&(field.len() as u64).to_le_bytes());
                key[at + PREFIX..at + PREFIX + field.len()].copy_from_slice(field);
                at += PREFIX + field.len();
            }
            h.write(&key[..at]);
            return h.finish128().as_u128();
        }
        for field in fields {
            h.write(&(field.len() as u64).to_le_bytes());
            h.write(field);
        }
        h.finish128().as_u128()
    }

    /// The entry key of a read.
    pub(super) fn entry(&self, key: &Key<'_>) -> u128 {
        self.hash(&[
            &[key.kind.tag()],
            key.app.as_bytes(),
            key.user.as_bytes(),
            key.extra.as_bytes(),
        ])
    }

    /// The hash of an app's identity that entries carry, for purges by app.
    pub(super) fn app(&self, app: &str) -> u64 {
        self.hash(&[app.as_bytes()]) as u64
    }

    /// The group key of a user's reads of one kind (what invalidation marks).
    pub(super) fn group(&self, kind: Kind, app: &str, user: &str) -> u128 {
        self.hash(&[&[kind.tag() | 0x80], app.as_bytes(), user.as_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gathered_key_hashes_as_its_fields_written_one_by_one() {
        let hashes = Hashes::new();
        let streamed = |fields: &[&[u8]]| {
            let mut h = SipHasher13::new_with_keys(hashes.k0, hashes.k1);
            for field in fields {
                h.write(&(field.len() as u64).to_le_bytes());
                h.write(field);
            }
            h.finish128().as_u128()
        };
        let long = vec![b'x'; 300];
        for fields in [
            &[b"a".as_slice(), b"bc"][..],
            &[b"ab", b"c"],
            &[
                &[0],
                b"agora:a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
                b"user-1",
                b"",
            ],
            &[b"prefix", &long],
        ] {
            assert_eq!(hashes.hash(fields), streamed(fields));
        }
        assert_ne!(hashes.hash(&[b"a", b"bc"]), hashes.hash(&[b"ab", b"c"]));
    }
}
