//! The render budget with the allocator installed, as the runtime installs it: a render that
//! would hold more than its budget, or allocate past its deadline, stops its thread before
//! the memory is taken, and the process goes on.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use genrt_functions::{stopped_render_threads, within_budget, BudgetAllocator, PreparedFunction};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: BudgetAllocator = BudgetAllocator;

fn render_on_a_thread(prompt: &'static str, budget: usize) -> Option<usize> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let spec = serde_json::from_value(json!({"model": "m", "prompt": prompt})).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Compiling is inside the budget too: minijinja folds constant expressions then.
        let result = within_budget(budget, deadline, || {
            PreparedFunction::new(spec).unwrap().render(&json!({}))
        });
        let _ = tx.send(result.map(|p| p.user.len()).unwrap_or(0));
    });
    rx.recv_timeout(Duration::from_secs(2)).ok()
}

#[test]
fn a_render_past_its_budget_or_deadline_stops_its_thread_and_nothing_else() {
    let before = stopped_render_threads();
    // 100 MB in one value: minijinja allows it, the budget does not.
    assert_eq!(
        render_on_a_thread("{{ \"x\" * 100000000 }}", 16 * 1024 * 1024),
        None
    );
    assert_eq!(stopped_render_threads(), before + 1);
    // Doubling a string never reaches the budget either.
    let doubling = "{% set s = \"x\" * 1000000 %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s ~ s %}{% set s = s ~ s %}{{ s|length }}";
    assert_eq!(render_on_a_thread(doubling, 16 * 1024 * 1024), None);
    assert_eq!(stopped_render_threads(), before + 2);
    // A template within its budget renders, on this and other threads alike.
    assert_eq!(
        render_on_a_thread("{{ \"x\" * 1000 }}", 16 * 1024 * 1024),
        Some(1000)
    );
    assert_eq!(vec![0u8; 200 * 1024 * 1024].len(), 200 * 1024 * 1024);

    // Allocating after the deadline stops the thread too (one test: the counter is global).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now();
        within_budget(usize::MAX - 1, deadline, || {
            let v: Vec<u8> = Vec::with_capacity(1024);
            let _ = tx.send(v.capacity());
        });
    });
    assert!(rx.recv_timeout(Duration::from_secs(2)).is_err());
    assert_eq!(stopped_render_threads(), before + 3);
}
