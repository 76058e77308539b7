//! The attack suite (issue #15): one named test per hole found by the security review, each
//! showing the server's refusal. Grouped by the subsystem that refuses; each file says what
//! an attacker tries and what must not happen.

mod limits;
mod metrics;
mod nodes;
mod secrets;
mod tenants;
mod webhooks;
