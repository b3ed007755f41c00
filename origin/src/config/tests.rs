//! How settings are read from the environment, and what is refused.

use super::*;

fn production() -> EnvSettings {
    let strong = "s".repeat(40);
    EnvSettings {
        environment: Environment::Production,
        jwt_secret: strong.clone().into(),
        edge_to_origin_secret: format!("{strong}e").into(),
        origin_to_edge_secret: format!("{strong}o").into(),
        push_callback_secret: format!("{strong}p").into(),
        webhook_secrets: "whsec_live_1, whsec_live_2".into(),
        audit_keys: format!("2026-12:{strong}a").into(),
        payment_provider: "stripe".into(),
        stripe_api_key: Some("sk_live_x".into()),
        ..EnvSettings::default()
    }
}

#[test]
fn audit_keys_are_named_rotatable_and_strong_in_production() {
    let keys = AuditSettings::parse(&" new:second-key , old:first-key ".to_owned().into()).unwrap();
    assert_eq!(keys.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["new", "old"]);
    assert_eq!(keys.current().id, "new", "the first listed seals");
    for bad in ["", "no-id-separator", ":secret", "id:", "a:x,a:y"] {
        assert!(AuditSettings::parse(&bad.to_owned().into()).is_err(), "{bad:?}");
    }
    assert!(production().into_settings().is_ok());
    for weak in [DEV_AUDIT_KEYS.to_owned(), format!("2026-12:{},k:short", "s".repeat(40))] {
        let refused = EnvSettings { audit_keys: weak.clone().into(), ..production() }.into_settings();
        assert!(refused.unwrap_err().to_string().contains("DROPS_AUDIT_KEYS"), "{weak}");
    }
}

#[test]
fn production_refuses_dev_secrets() {
    assert!(Settings::development().check().is_ok());
    let dev_in_prod = EnvSettings { environment: Environment::Production, ..EnvSettings::default() };
    assert!(dev_in_prod.into_settings().is_err());
    let prod = production().into_settings().unwrap();
    assert_eq!(prod.payments.webhook_secrets.len(), 2, "comma-separated, trimmed");
    let dev_webhook = EnvSettings { webhook_secrets: DEV_WEBHOOK_SECRET.into(), ..production() };
    assert!(dev_webhook.into_settings().is_err(), "webhook secret is still the dev one");
    let sandbox = EnvSettings { payment_provider: "sandbox".into(), ..production() };
    let refused = sandbox.into_settings().unwrap_err().to_string();
    assert!(refused.contains("sandbox"), "production takes no free payments: {refused}");
}

#[test]
fn providers_carry_their_secrets_and_are_checked_everywhere() {
    let stripe = EnvSettings { payment_provider: "stripe".into(), ..EnvSettings::default() };
    let err = stripe.clone().into_settings().unwrap_err().to_string();
    assert!(err.contains("DROPS_STRIPE_API_KEY"), "{err}");
    let with_key = EnvSettings { stripe_api_key: Some("sk_test_x".into()), ..stripe };
    assert!(matches!(with_key.into_settings().unwrap().payments.provider, PaymentProvider::Stripe { .. }));
    let cloudflare = EnvSettings { cache_purger: "cloudflare".into(), ..EnvSettings::default() };
    assert!(cloudflare.into_settings().unwrap_err().to_string().contains("DROPS_CLOUDFLARE_ZONE_ID"));
    let webpush = EnvSettings { push_provider: "webpush".into(), ..EnvSettings::default() };
    assert!(webpush.into_settings().unwrap_err().to_string().contains("DROPS_VAPID_PRIVATE_KEY"));
    let unknown = EnvSettings { payment_provider: "paypal".into(), ..EnvSettings::default() };
    assert!(unknown.into_settings().is_err());
}

#[test]
fn private_push_endpoints_are_for_development_only() {
    assert!(Settings::development().notifications.push_allow_private_endpoints, "the tests' receivers are local");
    let prod = production().into_settings().unwrap();
    assert!(!prod.notifications.push_allow_private_endpoints, "production defaults to public endpoints only");
    let opened = EnvSettings { push_allow_private_endpoints: Some(true), ..production() };
    let refused = opened.into_settings().unwrap_err().to_string();
    assert!(refused.contains("DROPS_PUSH_ALLOW_PRIVATE_ENDPOINTS"), "{refused}");
    let strict_dev = EnvSettings { push_allow_private_endpoints: Some(false), ..EnvSettings::default() };
    assert!(!strict_dev.into_settings().unwrap().notifications.push_allow_private_endpoints);
}

#[test]
fn sockets_per_user_default_to_five_and_at_least_one() {
    assert_eq!(Settings::development().notifications.max_sockets_per_user, 5);
    let none = EnvSettings { max_sockets_per_user: 0, ..EnvSettings::default() };
    assert!(none.into_settings().unwrap_err().to_string().contains("DROPS_MAX_SOCKETS_PER_USER"));
}

#[test]
fn limits_default_by_environment_and_are_at_least_one() {
    let dev = Settings::development();
    assert_eq!(dev.database.acquire_timeout_ms, 250, "a full pool answers 503 within a quarter second");
    assert!(dev.limits.direct.per_minute >= 100_000, "the suite sends everything from 127.0.0.1, unthrottled");
    let prod = production().into_settings().unwrap();
    assert_eq!(prod.limits.direct, Rate { per_minute: 600, burst: 60 });
    assert_eq!(prod.limits.forwarded, Rate { per_minute: 3_000, burst: 300 });
    assert!(prod.limits.forwarded.per_minute > prod.limits.direct.per_minute, "the edge limits first");
    assert_eq!((prod.limits.max_in_flight, prod.limits.max_queued, prod.limits.queue_wait_ms), (256, 256, 50));
    let set = EnvSettings { client_rate_per_minute: Some(5), max_queued: Some(0), ..production() };
    let set = set.into_settings().unwrap();
    assert_eq!(set.limits.direct, Rate { per_minute: 5, burst: 60 });
    assert_eq!(set.limits.max_queued, 0, "no queue: shed at once");
    let zero = EnvSettings { edge_client_burst: Some(0), ..EnvSettings::default() };
    assert!(zero.into_settings().unwrap_err().to_string().contains("DROPS_EDGE_CLIENT_BURST"));
    let zero = EnvSettings { max_in_flight: Some(0), ..EnvSettings::default() };
    assert!(zero.into_settings().unwrap_err().to_string().contains("DROPS_MAX_IN_FLIGHT"));
    let zero = EnvSettings { database_acquire_timeout_ms: 0, ..EnvSettings::default() };
    assert!(zero.into_settings().unwrap_err().to_string().contains("DROPS_DATABASE_ACQUIRE_TIMEOUT_MS"));
    assert_eq!(prod.limits.internal, Rate { per_minute: 120_000, burst: 5_000 });
    let zero = EnvSettings { internal_burst: Some(0), ..EnvSettings::default() };
    assert!(zero.into_settings().unwrap_err().to_string().contains("DROPS_INTERNAL_BURST"));
}

#[test]
fn slow_clients_are_bounded_and_metrics_stay_on_loopback_by_default() {
    let server = production().into_settings().unwrap().server;
    assert_eq!((server.header_read_timeout_ms, server.body_read_timeout_ms), (10_000, 10_000));
    assert_eq!(server.metrics_host, "127.0.0.1", "metrics are not on a public interface unless asked");
    assert_ne!(server.metrics_port, server.port, "metrics are not on the public port");
    let zero = EnvSettings { body_read_timeout_ms: 0, ..EnvSettings::default() };
    assert!(zero.into_settings().unwrap_err().to_string().contains("DROPS_BODY_READ_TIMEOUT_MS"));
    let zero = EnvSettings { header_read_timeout_ms: 0, ..EnvSettings::default() };
    assert!(zero.into_settings().unwrap_err().to_string().contains("DROPS_HEADER_READ_TIMEOUT_MS"));
}

#[test]
fn secrets_do_not_show_in_debug() {
    let printed = format!("{:?}", Settings::development());
    assert!(!printed.contains(DEV_JWT_SECRET));
    assert!(!printed.contains(DEV_WEBHOOK_SECRET));
}
