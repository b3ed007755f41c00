//! The end-to-end suite: one binary, one stack (Postgres, Redis, the origin, and
//! the edge under `wrangler dev`) shared by every test; see `drops_tests::Stack`.
//! One module per area of behaviour.

mod analytics;
mod async_buy;
mod audit;
mod buy_path;
mod coalescing;
mod contract;
mod dashboard;
mod edge_hardening;
mod fanout;
mod faults;
mod followers;
mod fuzz;
mod hardening;
mod inventory_migration;
mod kill;
mod limits;
mod lists_hardening;
mod live_socket;
mod media;
mod media_memory;
mod origin_down;
mod origin_hardening;
mod overload;
mod pages;
mod payments;
mod pools;
mod push_safety;
mod refunds;
mod soak;
