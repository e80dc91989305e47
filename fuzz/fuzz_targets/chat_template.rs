//! Chat templates, hostile ones included (deep recursion, huge loops): every
//! render must end quickly with text or an error. The first byte picks how
//! many messages; the rest is the template.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_models::tokenizer::{render_chat, ChatMessage};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Ok(template) = std::str::from_utf8(rest) else {
        return;
    };
    let roles = ["system", "user", "assistant", "user"];
    let messages: Vec<ChatMessage> = (0..(n % 5) as usize)
        .map(|i| ChatMessage::new(roles[i % roles.len()], format!("message {i} {{{{ x }}}}")))
        .collect();
    let _ = render_chat(template, &messages, n & 0x80 != 0, "<s>", "</s>");
});
