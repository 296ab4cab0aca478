//! App tokens: how imgate obtains the vendor credential it injects into every forwarded call.

pub mod agora;
