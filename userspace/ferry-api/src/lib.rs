//! ferryd's API as its clients see it: the HTTP/1.1 client over ferryd's
//! unix socket (`client`) and the types of the endpoint API (`endpoint`)
//! that the plugins (`ferry-cni`, the Docker plugin) speak.
//!
//! It is small on purpose: a plugin links this crate and nothing of the
//! agent (`ferry-net`) or the runtime (`ferry-runtime`).

use serde::{Deserialize, Serialize};

pub mod client;
pub mod endpoint;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}
