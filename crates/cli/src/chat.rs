//! `patchbay chat`: multi-turn chat with the model's own template.
//!
//! Interactive on a terminal; with piped stdin each line is one user turn, so
//! it is scriptable. Ctrl-D (end of input) ends it. Ctrl-C during a reply
//! stops that reply (what was generated stays in the history) and returns to
//! the prompt; Ctrl-C at the prompt ends the session. The KV cache persists
//! across turns: each turn only processes the new tokens.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use patchbay_combinators::{Layer, Step};
use patchbay_models::runners::session::{Session, SessionJob, StopReason};
use patchbay_models::tokenizer::{render_chat, ChatMessage, Tokenizer};

use crate::common::{self, ModelArgs, SamplingArgs};

/// Arguments of `patchbay chat`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Each line of input is one user turn; Ctrl-D (end of input) ends the chat.\n\
                  Ctrl-C during a reply stops it and returns to the prompt: the part already \
                  generated stays in the conversation history. Ctrl-C at the prompt ends the \
                  chat (exit 0)."
)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long, default_value_t = 512, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub n_predict: usize,
    /// A Jinja chat template to use instead of the model's own (HF
    /// `apply_chat_template` semantics, as `llama-cli --chat-template-file`).
    #[arg(long, value_name = "FILE")]
    pub chat_template_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Set while a reply is being generated: Ctrl-C then stops the reply
/// instead of ending the session.
static REPLYING: AtomicBool = AtomicBool::new(false);
/// Set by Ctrl-C during a reply; the token callback stops on it.
static STOP_REPLY: AtomicBool = AtomicBool::new(false);

/// Ctrl-C during a reply stops the reply; anywhere else (at the prompt, or
/// while the model loads) it ends the chat quietly with exit code 0.
fn on_ctrl_c() {
    if REPLYING.load(Ordering::SeqCst) {
        STOP_REPLY.store(true, Ordering::SeqCst);
    } else {
        eprintln!();
        std::process::exit(0);
    }
}

/// Runs `patchbay chat`.
pub fn run(args: &ChatArgs) -> Result<()> {
    ctrlc::set_handler(on_ctrl_c)
        .map_err(|e| anyhow::anyhow!("installing the Ctrl-C handler: {e}"))?;
    // Read before the model loads, so a wrong path fails at once.
    let template = match &args.chat_template_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            common::UsageError(format!("--chat-template-file {}: {e}", path.display()))
        })?),
        None => None,
    };
    common::with_session(
        &args.model,
        args.sampling.config()?,
        Chat { args, template },
    )
}

struct Chat<'a> {
    args: &'a ChatArgs,
    /// The template of --chat-template-file.
    template: Option<String>,
}

impl SessionJob for Chat<'_> {
    type Output = Result<()>;
    fn run<N: Layer>(self, mut session: Session<N>) -> Result<()> {
        let args = self.args;
        let interactive = std::io::stdin().is_terminal();
        let mut messages: Vec<ChatMessage> = Vec::new();
        if let Some(s) = &args.system {
            messages.push(ChatMessage::new("system", s));
        }
        // The rendered conversation already in the KV cache.
        let mut rendered_done = String::new();
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        let tok = session.tokenizer.clone();
        let template = match self.template {
            Some(t) => t,
            None => match tok.chat_template() {
                Some(t) => t.to_owned(),
                None => anyhow::bail!(
                    "this model has no chat template; use `patchbay generate`, \
                     or give one with --chat-template-file"
                ),
            },
        };
        loop {
            if interactive {
                eprint!("> ");
                let _ = std::io::stderr().flush();
            }
            let Some(line) = lines.next() else { break };
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            messages.push(ChatMessage::new("user", &line));
            let full = render(&tok, &template, &messages)?;
            // Only the text beyond what the cache holds is new.
            let new_text = full.strip_prefix(rendered_done.as_str()).map(str::to_owned);
            let tokens = match new_text {
                Some(t) => tok.encode_with(&t, rendered_done.is_empty(), true),
                None => {
                    // The template re-rendered history differently: start over.
                    session.reset();
                    tok.encode_with(&full, true, true)
                }
            };
            let mut reply_ids = Vec::new();
            let mut dec = tok.stream();
            let mut out = std::io::stdout().lock();
            let room = session
                .max_context()
                .saturating_sub(session.position() + tokens.len());
            if room == 0 {
                let hint = if session.max_context() >= args.model.max_context {
                    "start a new chat or raise --max-context"
                } else {
                    "it is the model's whole context: start a new chat"
                };
                anyhow::bail!(
                    "the conversation has filled the context ({} tokens); {hint}",
                    session.max_context()
                );
            }
            let mut lost: Option<std::io::Error> = None;
            STOP_REPLY.store(false, Ordering::SeqCst);
            REPLYING.store(true, Ordering::SeqCst);
            let stats = session.generate(&tokens, args.n_predict.min(room), |t| {
                reply_ids.push(t);
                if let Err(e) = write_flush(&mut out, &dec.push(t)) {
                    lost = Some(e);
                    return Step::Stop;
                }
                if STOP_REPLY.load(Ordering::SeqCst) {
                    return Step::Stop;
                }
                Step::Continue
            });
            REPLYING.store(false, Ordering::SeqCst);
            let stats = stats?;
            let interrupted = STOP_REPLY.swap(false, Ordering::SeqCst);
            if lost.is_none() {
                lost = write_flush(&mut out, &(dec.finish() + "\n")).err();
            }
            if let Some(e) = lost {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(()); // the reader left: a quiet end
                }
                return Err(anyhow::Error::new(e).context("writing the reply to stdout"));
            }
            match stats.stop {
                StopReason::Caller if interrupted => {
                    eprintln!("[reply stopped by Ctrl-C; Ctrl-C again at the prompt or Ctrl-D ends the chat]")
                }
                StopReason::MaxTokens if args.n_predict <= room => {
                    eprintln!("[reply cut at -n {} tokens]", args.n_predict)
                }
                StopReason::MaxTokens | StopReason::ContextFull => eprintln!(
                    "[reply cut: the context is full ({} tokens)]",
                    session.max_context()
                ),
                _ => {}
            }
            let reply = tok.decode(&reply_ids);
            messages.push(ChatMessage::new("assistant", reply.trim_end()));
            // What the cache holds now: the prompt so far plus the reply as generated.
            rendered_done = full + &reply;
        }
        Ok(())
    }
}

/// Writes `s` to `out` and flushes, so each piece shows as it comes.
fn write_flush(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(s.as_bytes())?;
    out.flush()
}

/// Renders the conversation with the model's template and its BOS/EOS texts.
fn render(tok: &Tokenizer, template: &str, messages: &[ChatMessage]) -> Result<String> {
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or_default();
    Ok(render_chat(
        template,
        messages,
        true,
        &text(tok.bos()),
        &text(tok.eos()),
    )?)
}
