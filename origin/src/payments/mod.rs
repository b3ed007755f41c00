//! Payments: the provider trait and its two implementations (the [`sandbox`] that
//! stands in for a real provider on developer machines and in tests, and
//! [`stripe`]'s PaymentIntents API), the provider's [`webhook`], and the payment
//! rows and refunds in [`store`].
//!
//! Owns the tables `payments` and `webhook_events`. What a payment's outcome does
//! to its order belongs to the orders area, which sits above this one: it plugs in
//! as an [`OrderSettlement`] (see `startup`), so this area never imports it.

pub mod preparer;
pub mod reversals;
pub mod sandbox;
pub mod store;
pub mod stripe;
pub mod webhook;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::FromRef;
use axum::Router;
use drops_shared::api::{Money, PaymentHandle};
use secrecy::ExposeSecret;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::{PaymentProvider as ProviderSettings, Settings};
use crate::state::Core;

pub use store::PaymentStatus;

/// A payment provider, seen from the origin. Both calls must be idempotent on the
/// order id: the origin may repeat them after a crash or a timeout.
#[async_trait]
pub trait PaymentProvider: Send + Sync {
    fn name(&self) -> &'static str;
    /// Starts a payment for an order.
    async fn create_payment(&self, order_id: Uuid, amount: &Money) -> anyhow::Result<PaymentHandle>;
    /// Gives the whole amount back; returns the provider's refund reference.
    async fn refund(&self, order_id: Uuid, reference: &str, amount: &Money) -> anyhow::Result<String>;
    /// Calls off a payment not made yet, so that it can no longer be paid.
    async fn cancel(&self, order_id: Uuid, reference: &str) -> anyhow::Result<Cancellation>;
}

/// What the provider said to calling a payment off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// It can no longer be paid.
    Cancelled,
    /// Too late: it is paid (or being paid) already; its webhook will say how it ended.
    TooLate,
}

/// What a successful payment did to its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The order is confirmed (now, or it was already).
    Confirmed,
    /// The order ended without being paid for (cancelled by its buyer): the money goes back.
    CannotHonour,
}

/// What a payment's outcome does to its order, inside the webhook's transaction
/// (the payment row is locked already). Implemented by the orders area.
#[async_trait]
pub trait OrderSettlement: Send + Sync {
    /// The payment succeeded: the order is confirmed if it can be.
    async fn paid(&self, conn: &mut PgConnection, order_id: Uuid) -> anyhow::Result<Settled>;
    /// The payment failed: a reserved order fails.
    async fn payment_failed(&self, conn: &mut PgConnection, order_id: Uuid) -> anyhow::Result<()>;
}

/// The payments area's handle: its provider, what settles orders, and the bell
/// that wakes this instance's preparer when new requests are filed.
#[derive(Clone)]
pub struct Payments {
    pub provider: Arc<dyn PaymentProvider>,
    settlement: Arc<dyn OrderSettlement>,
    requested: Arc<tokio::sync::Notify>,
}

impl Payments {
    pub fn new(settings: &Settings, settlement: Arc<dyn OrderSettlement>) -> anyhow::Result<Self> {
        let public_url = &settings.server.public_url;
        let provider: Arc<dyn PaymentProvider> = match &settings.payments.provider {
            ProviderSettings::Sandbox => Arc::new(sandbox::SandboxProvider::new(public_url)),
            ProviderSettings::Stripe { api_key, api_base } => {
                Arc::new(stripe::StripeProvider::new(api_key.expose_secret(), api_base)?)
            }
        };
        Ok(Self { provider, settlement, requested: Arc::default() })
    }

    /// New payment requests are committed: prepare them now rather than at the next look.
    pub fn wake(&self) {
        self.requested.notify_one();
    }

    /// Resolves when [`Self::wake`] was called (or at once if it was since the last time).
    pub async fn woken(&self) {
        self.requested.notified().await
    }
}

/// The state of this area's routes.
#[derive(Clone)]
pub struct PaymentsState {
    pub core: Core,
    pub payments: Payments,
}

impl FromRef<PaymentsState> for Core {
    fn from_ref(state: &PaymentsState) -> Core {
        state.core.clone()
    }
}

pub fn router(state: PaymentsState) -> Router {
    Router::new().merge(webhook::router()).merge(sandbox::router()).with_state(state)
}
