//! Ctrl-C in `chat` stops the current reply and returns to the prompt; the
//! next line gets its reply, and end of input ends the chat with exit 0.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn ctrl_c_stops_the_reply_and_the_chat_goes_on() {
    if let Err(e) = patchbay_models::catalog::resolve_model("smollm2-135m") {
        panic!("{e}");
    }
    // stories260K has no chat template: the smallest chat model is used.
    let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
        .args(["chat", "-m", "smollm2-135m", "-n", "400", "--temp", "0"])
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run patchbay chat");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin
        .write_all(b"Tell me a very long story about a dragon.\n")
        .unwrap();
    stdin.flush().unwrap();
    // Wait until the reply is streaming, then interrupt it.
    let mut first = Vec::new();
    let mut buf = [0u8; 256];
    let t0 = Instant::now();
    while first.len() < 10 {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "chat ended before replying");
        first.extend_from_slice(&buf[..n]);
        assert!(t0.elapsed() < Duration::from_secs(300), "no reply");
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    std::thread::sleep(Duration::from_millis(300));
    stdin.write_all(b"Say hi.\n").unwrap();
    drop(stdin); // end of input after the second turn
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert_eq!(status.code(), Some(0), "exit {status:?}; stderr:\n{err}");
    assert!(
        err.contains("[reply stopped by Ctrl-C"),
        "no note on stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // The first reply was cut short of its 400 tokens, and a second reply
    // followed on its own line.
    let lines: Vec<&str> = rest.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.is_empty(),
        "no second reply; stdout after the interrupt: {rest:?}\nstderr:\n{err}"
    );
}
