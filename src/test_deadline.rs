//! A deadline for tests of loops that could spin (the parser's line loop, the
//! lean client's read loop): such a loop never yields, so neither libtest nor
//! a tokio timeout can stop it, and it would leave the suite hanging.

/// Runs `f` on another thread and ends the whole test process if it has not
/// finished within 10 s, saying that `what` did not finish.
pub(crate) fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    match finished.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(value) => value,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            eprintln!("{what} did not finish within 10 s (a loop?)");
            std::process::exit(101);
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{what} panicked (see above)")
        }
    }
}
