//! Running a unit test alone in a child process, for tests that change process-wide state
//! (the open-descriptor limit) that would fail other tests running beside them. Only for
//! tests: this crate's own, and other crates' with the `test-support` feature.

/// Runs the test `test` of module `module_path` (the caller's `module_path!()`) again,
/// alone, in a child process of the same test binary; returns true in that child, false in
/// the parent once the child passed (it panics with the child's output otherwise).
pub fn alone_in_a_child(module_path: &str, test: &str) -> bool {
    if std::env::var_os("TAPIO_TEST_CHILD").is_some() {
        return true;
    }
    // Test names leave out the crate's name.
    let module = module_path.split_once("::").map_or("", |(_, rest)| rest);
    let name = format!("{module}::{test}");
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("the test binary: {e}"));
    let out = std::process::Command::new(exe)
        .args([&name, "--exact", "--test-threads=1"])
        .env("TAPIO_TEST_CHILD", "1")
        .output()
        .unwrap_or_else(|e| panic!("running {name} in a child: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    false
}

/// Sets the soft limit of open descriptors (at 0 every open fails with EMFILE); returns the
/// one it replaced.
pub fn set_nofile(soft: libc::rlim_t) -> libc::rlim_t {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write only this struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = std::mem::replace(&mut lim.rlim_cur, soft);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}
