//! Chat templates: HF-style Jinja rendered with minijinja.
//!
//! The environment mimics what HF `transformers` gives a template:
//! `trim_blocks` and `lstrip_blocks`, `raise_exception`, `strftime_now`,
//! a Python-like `tojson`, and Python string/dict methods (`.strip()`,
//! `.items()`, ...).
//!
//! A template comes from the model file, so it is untrusted: rendering is
//! bounded by [`TEMPLATE_FUEL`] instructions and [`TEMPLATE_RECURSION`] nested
//! calls, and a template that exceeds either gets an error, not a hang. Its
//! memory is bounded by [`TEMPLATE_MEMORY`] when the program's global
//! allocator is [`patchbay_primitives::alloc::BoundedAlloc`] (the `patchbay`
//! binary's is): a string doubled in a loop needs few instructions.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use super::TokenizerError;

/// The most template instructions one rendering may execute: Gemma 3's
/// template renders a 2,000-message conversation within it; a runaway loop is
/// stopped there with an error.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// The deepest nesting of frames (a macro call takes several) a template may
/// use: minijinja's own maximum, set here so that it is explicit.
pub const TEMPLATE_RECURSION: usize = 500;

/// The widest indentation `indent` and `tojson(indent=...)` accept. Both build
/// the indentation string up front, so a hostile width such as 10^12 would
/// otherwise ask for that much memory at once; real templates use 2 or 4.
pub const TEMPLATE_MAX_INDENT: usize = 1024;

/// The most memory (bytes allocated and not yet freed) one rendering may
/// hold: Gemma 3's template over 2,000 messages needs a few MB; past the bound
/// the [`BoundedAlloc`](patchbay_primitives::alloc::BoundedAlloc) ends the
/// process with a message, since minijinja has no way to fail an allocation.
pub const TEMPLATE_MEMORY: usize = 256 << 20;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    /// The text of the message.
    pub content: String,
}

impl ChatMessage {
    /// A message with a role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Gemma 3's chat template (HF `google/gemma-3-*-it`, text content only), for
/// GGUF files that carry none. It starts with `bos_token`.
pub const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

/// Renders a chat template for `messages` (HF `apply_chat_template` semantics).
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    patchbay_primitives::alloc::with_memory_bound(TEMPLATE_MEMORY, "the chat template", || {
        render_bounded(template, messages, add_generation_prompt, bos_token, eos_token)
    })
    .map_err(|e| {
        TokenizerError::Template(match e.kind() {
            ErrorKind::OutOfFuel => format!(
                "the chat template ran more than {TEMPLATE_FUEL} instructions and was stopped (a runaway loop?)"
            ),
            _ => format!("{e:#}"),
        })
    })
}

/// [`render_chat`] inside its memory bound.
fn render_bounded(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, Error> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> String {
        strftime_now(&fmt)
    });
    env.add_filter("tojson", tojson);
    env.add_filter("indent", indent);
    let tmpl = env.template_from_str(template)?;
    let ctx = minijinja::context! {
        messages => Value::from_serialize(messages),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    tmpl.render(ctx)
}

fn check_indent(filter: &str, width: usize) -> Result<(), Error> {
    if width > TEMPLATE_MAX_INDENT {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{filter}: an indentation of {width} is wider than {TEMPLATE_MAX_INDENT}"),
        ));
    }
    Ok(())
}

/// Jinja's `indent(width=4, first=false, blank=false)`, as minijinja's own
/// filter, with the width bounded by [`TEMPLATE_MAX_INDENT`].
fn indent(
    value: String,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let width = match width {
        Some(w) => w,
        None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
    };
    let first = match first {
        Some(f) => f,
        None => kwargs.get::<Option<bool>>("first")?.unwrap_or(false),
    };
    let blank = match blank {
        Some(b) => b,
        None => kwargs.get::<Option<bool>>("blank")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    check_indent("indent", width)?;
    let strip = |s: &str| -> usize {
        let s = s.strip_suffix('\n').unwrap_or(s);
        s.strip_suffix('\r').unwrap_or(s).len()
    };
    let input = &value[..strip(&value)];
    let pad = " ".repeat(width);
    let mut out = String::with_capacity(input.len());
    let mut lines = input.split('\n');
    if !first {
        out.push_str(lines.next().unwrap_or_default());
        out.push('\n');
    }
    for line in lines {
        if !line.is_empty() || blank {
            out.push_str(&pad);
        }
        out.push_str(line);
        out.push('\n');
    }
    out.truncate(strip(&out));
    Ok(out)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    if let Some(w) = indent {
        check_indent("tojson", w)?;
    }
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(out)
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * d));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push_str(
                &serde_json::to_string(s)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
            );
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(it, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let ks = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| k.to_string());
                out.push_str(
                    &serde_json::to_string(&ks)
                        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
                );
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("cannot serialise a {} to JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

/// `strftime` of the current UTC time for the common directives
/// (`%Y %y %m %d %e %B %b %A %a %H %M %S %j %%`).
pub fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(fmt, secs)
}

fn strftime(fmt: &str, unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix.div_euclid(86_400);
    let sod = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wd = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(wd),
            Some('a') => out.push_str(&wd[..3]),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime("%d %B %Y", 0), "01 January 1970");
        // 2024-02-29 12:34:56 UTC, a Thursday, day 60.
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %j %b", 1_709_210_096),
            "2024-02-29 12:34:56 Thu 060 Feb"
        );
    }

    #[test]
    fn tojson_is_pythonic_and_errors_surface() {
        let t = "{{ x | tojson }}|{{ x | tojson(indent=2) }}";
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        let out = env
            .render_str(
                t,
                minijinja::context! { x => minijinja::context!{ a => vec![1, 2], b => "é<\"" } },
            )
            .unwrap();
        assert_eq!(out, "{\"a\": [1, 2], \"b\": \"é<\\\"\"}|{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": \"é<\\\"\"\n}");
        let e = render_chat("{{ raise_exception('nope') }}", &[], false, "", "").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
