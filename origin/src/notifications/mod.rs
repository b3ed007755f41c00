//! Notifications: the stored inbox ([`inbox`]), live delivery over WebSockets with
//! presence in Redis ([`live`]), and push to users who are offline ([`push`]).
//!
//! Owns the tables `notifications`, `push_subscriptions`, `push_messages` and
//! `push_batches`, and the Redis online sets and live channels. Stands on the
//! payments area (a payment ready to pay is told to its buyer); other areas
//! deliver through [`live::send`] and [`push::enqueue`].

pub mod inbox;
pub mod live;
pub mod push;

use std::sync::Arc;

use axum::extract::FromRef;
use axum::Router;

use crate::state::Core;

/// The state of this area's routes and workers.
#[derive(Clone)]
pub struct NotificationsState {
    pub core: Core,
    /// The sockets this instance holds.
    pub live: Arc<live::Live>,
    pub push: Arc<push::Pusher>,
}

impl NotificationsState {
    pub fn new(core: Core) -> anyhow::Result<Self> {
        let push = Arc::new(push::pusher(&core.settings)?);
        Ok(Self { core, live: Arc::new(live::Live::default()), push })
    }
}

impl FromRef<NotificationsState> for Core {
    fn from_ref(state: &NotificationsState) -> Core {
        state.core.clone()
    }
}

pub fn router(state: NotificationsState) -> Router {
    Router::new().merge(inbox::router()).merge(live::router()).merge(push::router()).with_state(state)
}
