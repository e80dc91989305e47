//! `BoundedAlloc` as this test binary's global allocator: scopes count what
//! their thread holds, and going past the bound ends the process with the
//! message (checked in a child process, since it exits).

use patchbay_primitives::alloc::{held_in_scope, with_memory_bound, BoundedAlloc};

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc::new();

/// Set in the child process that is meant to exceed its bound.
const CHILD: &str = "PATCHBAY_ALLOC_BOUND_CHILD";

#[test]
fn a_scope_counts_what_its_thread_holds() {
    assert_eq!(held_in_scope(), None);
    with_memory_bound(1 << 20, "counting", || {
        let before = held_in_scope().unwrap();
        let v = vec![0u8; 1000];
        let held = held_in_scope().unwrap();
        assert_eq!(held - before, 1000);
        let mut v = v;
        v.reserve_exact(3000);
        assert_eq!(held_in_scope().unwrap() - before, v.capacity() as isize);
        drop(v);
        assert_eq!(held_in_scope().unwrap(), before);
        // Another thread's memory is its own.
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(held_in_scope(), None);
                let big = vec![1u8; 8 << 20];
                assert_eq!(big.len(), 8 << 20);
            });
        });
    });
    assert_eq!(held_in_scope(), None);
    // Outside a scope nothing is bounded.
    let big = vec![1u8; 16 << 20];
    assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 16 << 20);
}

#[test]
fn memory_freed_in_the_scope_makes_room_again() {
    with_memory_bound(1 << 20, "churning", || {
        for i in 0..100 {
            let v = vec![i as u8; 900 << 10];
            assert_eq!(v[0], i as u8);
        }
    });
}

#[test]
fn going_past_the_bound_exits_with_the_message() {
    if std::env::var_os(CHILD).is_some() {
        with_memory_bound(1 << 20, "doubling a string", || {
            let mut s = String::from("ab");
            for _ in 0..40 {
                s = format!("{s}{s}");
            }
            println!("{}", s.len());
        });
        unreachable!("the bound did not stop the doubling");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "going_past_the_bound_exits_with_the_message",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("error: doubling a string needed more than 1 MB of memory and was stopped"),
        "stderr: {err}"
    );
}
