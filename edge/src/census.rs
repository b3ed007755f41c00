//! What this isolate holds, for `/healthz` in development: the wasm heap's bytes
//! in use (next to the linear memory's size, which never shrinks), the inventory
//! objects alive in the isolate and the entries of every in-memory map.
//!
//! Linear memory alone cannot tell a leak from a high-water mark: a soak that
//! sees it grow needs to know whether the bytes are still held, and by whom.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes it has handed out and not taken back.
pub struct CountingAllocator;

static IN_USE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            IN_USE.fetch_add(new_size, Ordering::Relaxed);
        }
        new
    }
}

/// Bytes the Rust heap holds right now.
pub fn heap_in_use() -> usize {
    IN_USE.load(Ordering::Relaxed)
}

thread_local! {
    static OBJECTS_ALIVE: Cell<i64> = const { Cell::new(0) };
    static OBJECTS_STARTED: Cell<u64> = const { Cell::new(0) };
    static ANSWERS_HELD: Cell<i64> = const { Cell::new(0) };
}

/// An inventory object's instance came up in this isolate.
pub fn object_started() {
    OBJECTS_ALIVE.with(|n| n.set(n.get() + 1));
    OBJECTS_STARTED.with(|n| n.set(n.get() + 1));
}

/// An inventory object's instance was freed (its JavaScript wrapper collected).
pub fn object_freed() {
    OBJECTS_ALIVE.with(|n| n.set(n.get() - 1));
}

/// The idempotency answers inventory objects hold in memory changed by `delta`.
pub fn answers_held(delta: i64) {
    ANSWERS_HELD.with(|n| n.set(n.get() + delta));
}

/// The census as one header value: `key=value` pairs, comma-separated.
pub fn header_value() -> String {
    format!(
        "heap_in_use={},objects_alive={},objects_started={},answers_held={},sold_out_memos={},page_flights={},refusals_remembered={}",
        heap_in_use(),
        OBJECTS_ALIVE.with(Cell::get),
        OBJECTS_STARTED.with(Cell::get),
        ANSWERS_HELD.with(Cell::get),
        crate::orders::sold_out_memos_held(),
        crate::pages::flights_held(),
        crate::limits::refusals_remembered(),
    )
}
