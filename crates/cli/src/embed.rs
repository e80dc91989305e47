//! `patchbay embed`: sentence embeddings from an encoder (all-MiniLM-L6-v2),
//! as JSON lines or as a cosine-similarity matrix.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use patchbay_models::catalog;
use patchbay_models::runners::embed::{cosine_matrix, Embedder, EmbedderOptions};

use crate::common;

/// Arguments of `patchbay embed`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Output: one JSON object a line, \
{\"index\": i, \"text\": \"...\", \"embedding\": [...]}, each embedding L2-normalised; \
with --similarity, the cosine matrix instead, one row a line. \
With -f, every non-blank line of the file is one text (blank and whitespace-only \
lines are skipped; `index` counts the texts embedded, not the file's lines).")]
pub struct EmbedArgs {
    /// Encoder short name or path.
    #[arg(short, long, default_value = "minilm-l6-v2")]
    pub model: String,
    /// The texts to embed.
    #[arg(value_name = "TEXT")]
    pub texts: Vec<String>,
    /// Read the texts from FILE, one a line (`-` for stdin); blank lines are skipped.
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print the cosine-similarity matrix of the texts instead of the embeddings.
    #[arg(long)]
    pub similarity: bool,
    /// Texts per forward group.
    #[arg(long, default_value_t = 32, value_parser = crate::common::positive, allow_negative_numbers = true)]
    pub batch: usize,
    /// Worker threads (0 = one per core).
    #[arg(short = 't', long, default_value_t = 0, value_parser = crate::common::count, allow_negative_numbers = true)]
    pub threads: usize,
}

/// The texts of a file: its non-blank lines, without line endings.
fn file_texts(file: &std::path::Path) -> Result<Vec<String>> {
    let bytes = if file.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("reading texts from stdin")?;
        b
    } else {
        common::read_file(file).with_context(|| format!("reading {}", file.display()))?
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (first bad byte at offset {})",
            file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let texts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if texts.is_empty() {
        bail!("{} has no non-blank line to embed", file.display());
    }
    Ok(texts)
}

/// One JSON line: `{"index": i, "text": "...", "embedding": [...]}`.
fn json_line(index: usize, text: &str, embedding: &[f32]) -> Result<String> {
    Ok(format!(
        "{{\"index\": {index}, \"text\": {}, \"embedding\": {}}}\n",
        serde_json::to_string(text)?,
        serde_json::to_string(embedding)?
    ))
}

/// The cosine matrix, one row a line, columns aligned.
fn matrix_text(m: &[Vec<f32>]) -> String {
    let mut out = String::new();
    for row in m {
        let cells: Vec<String> = row.iter().map(|c| format!("{c:>9.6}")).collect();
        out.push_str(&cells.join(" "));
        out.push('\n');
    }
    out
}

/// Runs `patchbay embed`.
pub fn run(args: &EmbedArgs) -> Result<()> {
    let texts = match (&args.file, args.texts.is_empty()) {
        (Some(_), false) => bail!("give the texts as arguments or with -f FILE, not both"),
        (Some(f), true) => file_texts(f)?,
        (None, false) => args.texts.clone(),
        (None, true) => bail!("no text to embed: give TEXT... or -f FILE"),
    };
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let path = catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    common::warn_if_capped(args.threads);
    let opts = EmbedderOptions {
        threads: args.threads,
        batch: args.batch,
        ..EmbedderOptions::default()
    };
    let mut embedder = Embedder::open(&path, &opts)?;
    let bar = if texts.len() > args.batch && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(texts.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} texts [{elapsed_precise} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut all = Vec::with_capacity(if args.similarity { texts.len() } else { 0 });
    let mut index = 0;
    for group in texts.chunks(args.batch) {
        let vectors = embedder.embed(group)?;
        if args.similarity {
            all.extend(vectors);
        } else {
            let mut out = String::new();
            for (text, v) in group.iter().zip(&vectors) {
                out.push_str(&json_line(index, text, v)?);
                index += 1;
            }
            match &bar {
                Some(b) => b.suspend(|| common::write_stdout(out.as_bytes()))?,
                None => common::write_stdout(out.as_bytes())?,
            }
        }
        if let Some(b) = &bar {
            b.inc(group.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.similarity {
        common::write_stdout(matrix_text(&cosine_matrix(&all)).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_and_matrix_are_shaped_as_documented() {
        let l = json_line(3, "a \"q\"", &[0.5, -1.0]).unwrap();
        assert_eq!(
            l,
            "{\"index\": 3, \"text\": \"a \\\"q\\\"\", \"embedding\": [0.5,-1.0]}\n"
        );
        let m = matrix_text(&[vec![1.0, -0.104959], vec![-0.104959, 1.0]]);
        assert_eq!(m, " 1.000000 -0.104959\n-0.104959  1.000000\n");
    }
}
